package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

func newBackupCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Base backups of a cluster: take one now, list them, verify them",
	}
	cmd.AddCommand(newBackupCreateCmd(cf), newBackupListCmd(cf), newBackupVerifyCmd(cf), newBackupScheduleCmd(cf))
	return cmd
}

func newBackupCreateCmd(cf *clientFlags) *cobra.Command {
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "create NAME [--wait]",
		Short: "Take a base backup now, from a standby when one streams",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.CreateBackup(cmd.Context(), args[0])
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			out := cmd.OutOrStdout()
			if v.Running {
				fmt.Fprintf(out, "backup %s of %s is already being taken on %s; that one counts\n", v.ID, args[0], v.Member)
			} else {
				fmt.Fprintf(out, "backup %s of %s is being taken on %s\n", v.ID, args[0], v.Member)
			}
			if !wait {
				fmt.Fprintf(out, "see it with `pgfleet backup list %s`\n", args[0])
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			m, err := waitBackup(ctx, c, args[0], v.ID)
			if err != nil {
				return err
			}
			// The backup's own duration, as `backup list` shows it; the
			// wait around it is the CLI's polling.
			fmt.Fprintf(out, "backup %s done in %s: %s, %s stored\n", m.ID, backupTook(m), fleet.FormatBytes(m.RawBytes), fleet.FormatBytes(m.StoredBytes))
			return nil
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the backup is complete in the store")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Hour, "how long --wait waits")
	return cmd
}

// waitBackup waits until backup id is listed (complete) or no longer
// running (failed: the events say why).
func waitBackup(ctx context.Context, c *api.Client, name, id string) (backup.Manifest, error) {
	for {
		v, err := c.Backups(ctx, name)
		if err == nil {
			for _, m := range v.Backups {
				if m.ID == id {
					return m, nil
				}
			}
			if v.Running == nil || v.Running.ID != id {
				return backup.Manifest{}, fmt.Errorf("backup %s of %s did not complete; see `pgfleet events %s`", id, name, name)
			}
		}
		select {
		case <-ctx.Done():
			return backup.Manifest{}, fmt.Errorf("backup %s of %s: not complete in time; it may still finish (see `pgfleet backup list %s`)", id, name, name)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// backupTook is how long backup m took, as create and list both show it.
func backupTook(m backup.Manifest) time.Duration {
	return m.StopTime.Sub(m.StartTime).Round(100 * time.Millisecond)
}

// sourceShape is the shape (primary region, HA, replicas) of the cluster a
// restore reads: the live cluster's, or the one a destroyed cluster left
// with its backups.
func sourceShape(ctx context.Context, c *api.Client, name string) (api.RetiredView, error) {
	src, err := c.Cluster(ctx, name)
	if err == nil {
		return api.RetiredView{Name: name, PrimaryRegion: src.PrimaryRegion, HA: src.HA, Replicas: src.Replicas}, nil
	}
	if !api.IsNotFound(err) {
		return api.RetiredView{}, err
	}
	r, err := c.Retired(ctx, name)
	if api.IsNotFound(err) {
		return r, clusterGone(ctx, c, name, err)
	}
	return r, err
}

func newBackupListCmd(cf *clientFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list NAME [--json]",
		Short: "List a cluster's complete base backups (also of a destroyed cluster)",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.Backups(cmd.Context(), args[0])
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, v)
			}
			fmt.Fprintf(out, "backups of %s in %s\n\n", args[0], v.Store)
			tw := table(out)
			fmt.Fprintln(tw, "ID\tMEMBER\tTL\tSTART LSN\tSTOP LSN\tFINISHED\tTOOK\tSIZE\tSTORED")
			for _, m := range v.Backups {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Member, m.Timeline, m.StartLSN, m.StopLSN,
					m.StopTime.Local().Format("2006-01-02 15:04:05"), backupTook(m),
					fleet.FormatBytes(m.RawBytes), fleet.FormatBytes(m.StoredBytes))
			}
			tw.Flush()
			if len(v.Backups) == 0 {
				fmt.Fprintf(out, "(none yet: `pgfleet backup create %s` takes one now)\n", args[0])
			}
			if v.Running != nil {
				fmt.Fprintf(out, "\nrunning: %s on %s, since %s\n", v.Running.ID, v.Running.Member, v.Running.Requested.Local().Format("15:04:05"))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newBackupVerifyCmd(cf *clientFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify NAME [BACKUP] [--json]",
		Short: "Read back every backup (or one) and check it and the WAL it needs: checksums, and no missing segment",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usageError{errors.New("backup verify needs a cluster NAME and, optionally, a BACKUP id")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			id := ""
			if len(args) == 2 {
				id = args[1]
			}
			rep, err := c.VerifyBackups(cmd.Context(), args[0], id)
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if err := printJSON(out, rep); err != nil {
					return err
				}
			} else {
				for _, b := range rep.Backups {
					state := "ok"
					if !b.OK() {
						state = "PROBLEM"
					}
					fmt.Fprintf(out, "backup %s: %s (data %s, WAL from %s)\n", b.Manifest.ID, state, fleet.FormatBytes(b.Manifest.RawBytes), b.Manifest.StartWAL)
				}
			}
			if !rep.OK() {
				return fmt.Errorf("verification of %s found problems:\n  %s", args[0], strings.Join(rep.Summary(), "\n  "))
			}
			if !asJSON {
				fmt.Fprintf(out, "%d backups verified: every one is intact and its WAL has no gap\n", len(rep.Backups))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func newRestoreCmd(cf *clientFlags) *cobra.Command {
	var into, at, lsn, replicas, primaryRegion string
	var latest, wait bool
	var ha int
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restore NAME --into NEW (--time RFC3339 | --lsn X/Y | --latest) [--primary-region R] [--ha N] [--replicas R1,R2] [--wait]",
		Short: "Make a new cluster from a cluster's backups, at a point in time (the source may be destroyed)",
		Args:  exactArgs("the NAME of the cluster whose backups to restore"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if into == "" {
				return usageError{errors.New("--into NEW is required: restore always makes a new cluster, the source stays as it is")}
			}
			rr := api.RestoreRequest{From: args[0], LSN: lsn, Latest: latest}
			if at != "" {
				t, err := time.Parse(time.RFC3339Nano, at)
				if err != nil {
					// Go's own message quotes its layout, which says
					// nothing to a person.
					return usageError{fmt.Errorf("--time %q is not a time: give an RFC 3339 time with its zone, such as %s or 2026-11-25T10:30:00+01:00", at, time.Now().UTC().Add(-time.Hour).Format("2006-01-02T15:04:05Z"))}
				}
				rr.Time = &t
			}
			n := 0
			for _, set := range []bool{at != "", lsn != "", latest} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usageError{errors.New("give exactly one of --time, --lsn and --latest")}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			req := api.CreateRequest{Name: into, PrimaryRegion: primaryRegion, Restore: &rr}
			if cmd.Flags().Changed("ha") {
				req.HA = &ha
			}
			// By default the new cluster has the source's shape, live or
			// as it was when it was destroyed.
			shape, err := sourceShape(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			if req.PrimaryRegion == "" {
				req.PrimaryRegion = shape.PrimaryRegion
			}
			if req.HA == nil {
				req.HA = &shape.HA
			}
			if !cmd.Flags().Changed("replicas") {
				req.Replicas = shape.Replicas
			}
			for _, r := range strings.Split(replicas, ",") {
				if r = strings.TrimSpace(r); r != "" {
					req.Replicas = append(req.Replicas, r)
				}
			}
			start := time.Now()
			v, err := c.Create(cmd.Context(), req)
			if err != nil {
				return err
			}
			headline := fmt.Sprintf("restoring %s into %s on port %d", args[0], v.Name, v.Port)
			return followNewCluster(cmd, c, v, headline, "restored and ready", wait, timeout, start)
		},
	}
	f := cmd.Flags()
	f.StringVar(&into, "into", "", "name of the new cluster (required)")
	f.StringVar(&at, "time", "", "restore every transaction committed before this time (RFC 3339)")
	f.StringVar(&lsn, "lsn", "", "restore the WAL up to this LSN")
	f.BoolVar(&latest, "latest", false, "restore everything archived")
	f.StringVar(&primaryRegion, "primary-region", "", "region of the new primary (default: the source's)")
	// 0, which pflag does not print as a default: the source's is.
	f.IntVar(&ha, "ha", 0, "members in the primary region (default: the source's)")
	f.StringVar(&replicas, "replicas", "", "regions that get a read replica (default: the source's)")
	f.BoolVar(&wait, "wait", false, "wait until the restored cluster runs, showing progress")
	f.DurationVar(&timeout, "timeout", time.Hour, "how long --wait waits")
	return cmd
}

func newBackupScheduleCmd(cf *clientFlags) *cobra.Command {
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "schedule NAME --every DURATION",
		Short: "Change how often a base backup is taken (WAL is archived continuously either way)",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if every < time.Minute || every%time.Second != 0 {
				return usageError{fmt.Errorf("--every %s: give whole seconds, a minute or more (e.g. 6h)", every)}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			secs := int64(every / time.Second)
			if _, err := c.Update(cmd.Context(), args[0], api.UpdateRequest{BackupEvery: &secs}); err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster %s: a base backup every %s\n", args[0], every)
			return nil
		},
	}
	cmd.Flags().DurationVar(&every, "every", 0, "base backup interval, e.g. 6h (required)")
	return cmd
}
