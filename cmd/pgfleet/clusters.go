package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func newHostsCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hosts",
		Short: "List the fleet's live hosts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			hs, err := c.Hosts(cmd.Context())
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), hs)
			}
			t := table(cmd.OutOrStdout())
			fmt.Fprintln(t, "HOST\tREGION\tADDRESS\tAPI\tMEMBERS\tUP SINCE")
			for _, h := range hs {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%d\t%s\n", h.Name, h.Region, h.Addr, h.APIAddr, h.Members, h.Started.Local().Format(time.DateTime))
			}
			return t.Flush()
		},
	}
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	return cmd
}

func newCreateCmd(cf *clientFlags) *cobra.Command {
	var req api.CreateRequest
	var ha int
	var replicas string
	var wait bool
	var timeout, leaseTTL, backupEvery time.Duration
	var diskGuard string
	var imp createImport
	cmd := &cobra.Command{
		Use:   "create NAME --primary-region REGION [--ha N] [--replicas R1,R2] [--lease-ttl 3s] [--max-replica-lag BYTES] [--disk-guard 10] [--wait] [--import-from URL [--online]]",
		Short: "Create a cluster: a primary and standbys in one region, read replicas in others",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			req.HA = &ha
			if leaseTTL%time.Second != 0 || leaseTTL < fleet.MinLeaseTTL*time.Second || leaseTTL > fleet.MaxLeaseTTL*time.Second {
				return usageError{fmt.Errorf("--lease-ttl %s: give whole seconds from %ds to %ds", leaseTTL, fleet.MinLeaseTTL, fleet.MaxLeaseTTL)}
			}
			req.LeaseTTL = int(leaseTTL / time.Second)
			if backupEvery != 0 && (backupEvery < time.Minute || backupEvery%time.Second != 0) {
				return usageError{fmt.Errorf("--backup-every %s: give whole seconds, a minute or more (e.g. 6h)", backupEvery)}
			}
			req.BackupEvery = int64(backupEvery / time.Second)
			if cmd.Flags().Changed("disk-guard") {
				g, err := fleet.ParseDiskGuard(diskGuard)
				if err != nil {
					return usageError{fmt.Errorf("--disk-guard: %w", err)}
				}
				req.DiskGuard = g
			}
			if req.MaxReplicaLag < 0 {
				return usageError{fmt.Errorf("--max-replica-lag %d: give how many bytes of replay lag a member may have and still get reads, 0 or more (0 means %d)", req.MaxReplicaLag, fleet.DefaultMaxReplicaLag)}
			}
			for _, r := range strings.Split(replicas, ",") {
				if r = strings.TrimSpace(r); r != "" {
					req.Replicas = append(req.Replicas, r)
				}
			}
			spec := fleet.ClusterSpec{Name: req.Name, PrimaryRegion: req.PrimaryRegion, HA: ha, Replicas: req.Replicas, LeaseTTL: req.LeaseTTL, MaxLagOnFailover: req.MaxLagOnFailover, Sync: req.Sync, MaxReplicaLag: req.MaxReplicaLag, DiskGuard: req.DiskGuard, PoolSize: req.PoolSize}
			if req.PrimaryRegion == "" {
				return usageError{fmt.Errorf("--primary-region is required: the region where the primary and its standbys run")}
			}
			if err := spec.Validate(); err != nil {
				return usageError{err}
			}
			if timeout <= 0 {
				return usageError{fmt.Errorf("--timeout must be positive")}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if err := imp.check(cmd, req.Name); err != nil {
				return err
			}
			start := time.Now()
			v, err := c.Create(cmd.Context(), req)
			if err != nil {
				return err
			}
			if imp.From != "" {
				return imp.run(cmd, c, v, timeout, start)
			}
			headline := fmt.Sprintf("cluster %s created on port %d", v.Name, v.Port)
			return followNewCluster(cmd, c, v, headline, "ready", wait, timeout, start)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.PrimaryRegion, "primary-region", "", "region of the primary and its standbys (required)")
	f.IntVar(&ha, "ha", 1, "members in the primary region, the primary included (2 or more for automatic failover)")
	f.StringVar(&replicas, "replicas", "", "comma-separated regions that get a read replica")
	f.DurationVar(&leaseTTL, "lease-ttl", fleet.DefaultLeaseTTL*time.Second, "leader lease: a failed primary is replaced in about this long (1s to 60s)")
	f.Int64Var(&req.MaxLagOnFailover, "max-lag-on-failover", fleet.DefaultMaxLag, "bytes of WAL a standby may miss and still be promoted")
	f.Int64Var(&req.MaxReplicaLag, "max-replica-lag", fleet.DefaultMaxReplicaLag, "bytes of WAL replay a member may be behind the primary and still get reads from the proxies' replica port")
	f.StringVar(&req.Sync, "sync", fleet.SyncOff, "replication mode: off (asynchronous), on (every commit on a standby too; alone, the primary goes on) or strict (commits wait while no standby can acknowledge)")
	f.BoolVar(&wait, "wait", false, "wait until every member runs and streams, showing progress")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "how long --wait waits")
	f.StringVar(&req.BackupStore, "backup-store", "", "object store for continuous backups: file:///PATH or s3://BUCKET/PREFIX?endpoint=HOST:PORT; none to turn backups off (default: the fleet's, set by the agents' --backup-store)")
	f.BoolVar(&req.BackupEncrypt, "backup-encrypt", false, "encrypt every backup object (AES-256-GCM) with a key generated for the cluster")
	f.DurationVar(&backupEvery, "backup-every", 0, "base backup interval (default 24h)")
	f.StringVar(&diskGuard, "disk-guard", strconv.Itoa(fleet.DefaultDiskGuard), "stop taking writes while a member's data disk has less than this percentage free (1 to 50), before postgres stops on a full disk; off to turn the guard off")
	f.IntVar(&req.PoolSize, "pool-size", fleet.DefaultPoolSize, "server connections the pooled port (pgfleet url --pooled) opens per user and database on each host (1 to 1000)")
	imp.flags(f)
	return cmd
}

// followNewCluster shows where a new cluster's members were placed and,
// with wait, its members' progress until every one runs.
func followNewCluster(cmd *cobra.Command, c *api.Client, v api.ClusterView, headline, readyWord string, wait bool, timeout time.Duration, start time.Time) error {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "%s:\n", headline)
	w := memberWidths(v.Members)
	for _, m := range v.Members {
		fmt.Fprintf(out, "  %-*s %-*s on %s (%s)\n", w.id, m.ID, w.role, m.Role, m.Host, m.Region)
	}
	if !wait {
		fmt.Fprintf(out, "members are starting; watch them with `pgfleet status %s` and `pgfleet events %s`\n", v.Name, v.Name)
		return nil
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	if _, err := waitReady(ctx, c, v.Name, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "cluster %s is %s in %s\n", v.Name, readyWord, time.Since(start).Round(100*time.Millisecond))
	fmt.Fprintf(out, "connect: pgfleet connect %s    url: pgfleet url %s\n", v.Name, v.Name)
	return nil
}

// clusterGone turns the API's "not found" of cluster name, when the cluster
// is indeed unknown, into what became of it, in one wording whichever command asked: destroyed with its backups
// kept (whose events went with it), or never there. Other errors pass.
func clusterGone(ctx context.Context, c *api.Client, name string, err error) error {
	if !api.IsNotFound(err) {
		return err
	}
	if _, cerr := c.Cluster(ctx, name); cerr == nil || !api.IsNotFound(cerr) {
		return err // the cluster is there: what was not found is something of it (a member, a region)
	}
	r, rerr := c.Retired(ctx, name)
	if rerr == nil {
		return fmt.Errorf("cluster %s was destroyed on %s; its backups are kept: `pgfleet backup list %s` lists them, `pgfleet restore %s --into NEW --latest` makes a cluster of them",
			name, r.Deleted.Local().Format(time.DateTime), name, name)
	}
	if !api.IsNotFound(rerr) {
		return err
	}
	return fmt.Errorf("cluster %s does not exist: `pgfleet list` shows the clusters", name)
}

// widths are the columns of a cluster's progress lines: as wide as the
// longest member id, role and host, so that a long cluster name (a
// restore's "shop-before-1") does not push a line out of its column.
type widths struct{ id, role, host int }

func memberWidths(ms []api.MemberView) widths {
	w := widths{id: 1, role: len(fleet.RolePrimary), host: 1}
	for _, m := range ms {
		w.id, w.role, w.host = max(w.id, len(m.ID)), max(w.role, len(m.Role)), max(w.host, len(m.Host))
	}
	return w
}

// formatProgress is one line of a member's progress, in w's columns.
func formatProgress(w widths, m api.MemberView, progress string) string {
	return fmt.Sprintf("  %-*s %-*s %-*s %s\n", w.id, m.ID, w.role, m.Role, w.host, m.Host, strings.TrimSpace(progress))
}

// ready reports whether every member runs (the primary) or streams with no lag.
func ready(v api.ClusterView) bool {
	if v.Primary == "" {
		return false
	}
	for _, m := range v.Members {
		if !m.Healthy || (m.Role != fleet.RolePrimary && m.LagBytes != 0) {
			return false
		}
	}
	return true
}

// waitReady polls the cluster and prints each member's progress as it
// changes, until every member is ready.
func waitReady(ctx context.Context, c *api.Client, name string, out io.Writer) (api.ClusterView, error) {
	shown := map[string]string{}
	var last api.ClusterView
	for {
		v, err := c.Cluster(ctx, name)
		var ae *api.APIError
		if errors.As(err, &ae) && ae.Status < 500 {
			return v, err
		}
		if err == nil {
			last = v
			for _, m := range v.Members {
				line := fmt.Sprintf("%s %s", m.State, m.Progress)
				if m.State == fleet.StateFailed || m.State == fleet.StateWaiting {
					line += " " + m.Message
				}
				if shown[m.ID] != line {
					shown[m.ID] = line
					fmt.Fprint(out, formatProgress(memberWidths(v.Members), m, line))
				}
			}
			if ready(v) {
				return v, nil
			}
		}
		select {
		case <-ctx.Done():
			var states []string
			for _, m := range last.Members {
				states = append(states, fmt.Sprintf("%s %s", m.ID, m.State))
			}
			if err == nil {
				err = ctx.Err()
			}
			return last, fmt.Errorf("cluster %s not ready: %v (last seen: %s); see `pgfleet events %s`", name, err, strings.Join(states, ", "), name)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func newStatusCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a cluster's members: role, state, timeline and lag",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.Cluster(cmd.Context(), args[0])
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			out := cmd.OutOrStdout()
			primary := v.Primary
			if primary == "" {
				primary = "(none)"
			}
			guard := "off"
			if v.DiskGuard > 0 {
				guard = fmt.Sprintf("%d%% free", v.DiskGuard)
			}
			// A server from before the pooled port answers none.
			pooled := ""
			if v.PooledProxyPort > 0 {
				pooled = fmt.Sprintf(", pooled %d", v.PooledProxyPort)
			}
			fmt.Fprintf(out, "cluster %s  primary %s  region %s  port %d (proxy: primary %d, replicas %d within %s lag%s)  sync %s  disk guard %s\n\n",
				v.Name, primary, v.PrimaryRegion, v.Port, v.PrimaryProxyPort, v.ReplicaProxyPort, fleet.FormatBytes(v.MaxReplicaLag), pooled, v.Sync, guard)
			if v.ReadOnly != "" {
				fmt.Fprintf(out, "READ-ONLY: %s\n\n", v.ReadOnly)
			}
			if mv := v.Move; mv != nil {
				fmt.Fprintf(out, "MOVING from %s to %s since %s: resume with `pgfleet move %s --primary-region %s`, undo with `pgfleet move %s --reverse`\n\n",
					mv.From, mv.To, mv.Started.Format(time.RFC3339), v.Name, mv.To, v.Name)
			}
			t := table(out)
			fmt.Fprintln(t, "MEMBER\tHOST\tREGION\tROLE\tSTATE\tADDRESS\tTL\tLAG\tDISK FREE\tNOTE")
			for _, m := range v.Members {
				lag := "-"
				if m.LagBytes >= 0 && m.Role != fleet.RolePrimary {
					lag = fleet.FormatBytes(m.LagBytes)
				}
				tl := "-"
				if m.Timeline > 0 {
					tl = fmt.Sprint(m.Timeline)
				}
				disk := "-"
				if m.DiskSize > 0 {
					disk = fmt.Sprintf("%s (%d%%)", fleet.FormatBytes(m.DiskFree), 100*m.DiskFree/m.DiskSize)
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Host, m.Region, m.Role, m.State, m.Addr, tl, lag, disk, strings.TrimSpace(m.Progress+" "+m.Message))
			}
			return t.Flush()
		},
	}
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	return cmd
}

func newListCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List clusters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			cs, err := c.Clusters(cmd.Context())
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), cs)
			}
			t := table(cmd.OutOrStdout())
			fmt.Fprintln(t, "CLUSTER\tPRIMARY REGION\tREPLICAS\tPORT\tPRIMARY\tHEALTHY")
			for _, v := range cs {
				fmt.Fprintf(t, "%s\t%s\t%s\t%d\t%s\t%d/%d\n", v.Name, v.PrimaryRegion, strings.Join(v.Replicas, ","), v.Port, v.Primary, healthyMembers(v), len(v.Members))
			}
			return t.Flush()
		},
	}
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	return cmd
}

// urlFlags are the flags that choose a cluster URL, shared by url and connect.
type urlFlags struct {
	api.URLOptions
	db string // the database the URL names; "" keeps the server's (postgres)
}

func (uf *urlFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&uf.Member, "member", "", "connect straight to this member's postgres (default: the primary, through the routing proxy)")
	f.StringVar(&uf.Region, "region", "", "list the proxies of this region's hosts (default: the cluster's primary region)")
	f.BoolVar(&uf.Replica, "replica", false, "route to the nearest member fit for reads instead of the primary")
	f.BoolVar(&uf.Direct, "direct", false, "bypass the proxies: list every member's postgres, the primary first")
	f.BoolVar(&uf.Pooled, "pooled", false, "the pooled port: each transaction runs on a pooled server connection to the primary")
	f.StringVar(&uf.db, "db", "", "the database to connect to (default: postgres), e.g. one made with `pgfleet db create`")
}

// database makes the cluster's URL name the database --db asks for.
func (uf *urlFlags) database(raw string) (string, error) {
	if uf.db == "" {
		return raw, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("parse the cluster's URL: %w", err)
	}
	u.Path = "/" + uf.db
	return u.String(), nil
}

// options checks the flags before anything is sent, naming them as flags.
func (uf *urlFlags) options() (api.URLOptions, error) {
	if err := uf.Check(); err != nil {
		return uf.URLOptions, usageError{err}
	}
	return uf.URLOptions, nil
}

func newURLCmd(cf *clientFlags) *cobra.Command {
	var uf urlFlags
	cmd := &cobra.Command{
		Use:   "url NAME [--replica] [--region R] [--direct] [--member ID] [--db DB]",
		Short: "Print a libpq URL, with credentials: through the routing proxy to the primary, or to readers, or direct",
		Long: `Print a libpq URL with credentials.

By default the URL lists every host of the cluster's primary region at the
proxy's primary port: each agent routes it to the current primary, wherever
it runs, so the URL survives failovers. --replica uses the replica port,
which routes to the nearest member whose lag is within the cluster's
--max-replica-lag; --region lists another region's hosts, for apps there.
--direct lists the members' own postgres (target_session_attrs picks the
primary, or with --replica a standby); --member gives one member's.`,
		Args: exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := uf.options()
			if err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			u, err := c.ClusterURL(cmd.Context(), args[0], o)
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			if u.URL, err = uf.database(u.URL); err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), u)
			}
			fmt.Fprintln(cmd.OutOrStdout(), u.URL)
			return nil
		},
	}
	uf.add(cmd)
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	return cmd
}

func newConnectCmd(cf *clientFlags) *cobra.Command {
	var uf urlFlags
	cmd := &cobra.Command{
		Use:   "connect NAME [--replica] [--region R] [--direct] [--member ID] [--db DB] [-- PSQL-ARGS...]",
		Short: "Open psql on the primary (through the routing proxy), on a reader, or on a member",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := uf.options()
			if err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			u, err := c.ClusterURL(cmd.Context(), args[0], o)
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			psql, err := findPsql()
			if err != nil {
				return err
			}
			if u.URL, err = uf.database(u.URL); err != nil {
				return err
			}
			// The password goes through the environment: any local user can
			// read a process's arguments with ps.
			parsed, err := url.Parse(u.URL)
			if err != nil {
				return fmt.Errorf("parse the cluster's URL: %w", err)
			}
			env := os.Environ()
			if pw, ok := parsed.User.Password(); ok {
				env = append(env, "PGPASSWORD="+pw)
				parsed.User = url.User(parsed.User.Username())
			}
			argv := append([]string{"psql", parsed.String()}, args[1:]...)
			return syscall.Exec(psql, argv, env)
		},
	}
	uf.add(cmd)
	return cmd
}

func findPsql() (string, error) {
	if p, err := exec.LookPath("psql"); err == nil {
		return p, nil
	}
	if b, err := postgres.FindBin(""); err == nil {
		p := filepath.Join(b.Dir, "psql")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("psql not found: install it with `sudo apt-get install -y postgresql-client-15`")
}

func newDestroyCmd(cf *clientFlags) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "destroy NAME --yes",
		Short: "Delete a cluster and all of its data",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return usageError{fmt.Errorf("destroy deletes cluster %s and all of its data: add --yes to confirm", args[0])}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if err := c.Destroy(cmd.Context(), args[0]); err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster %s destroyed; its hosts are removing its data\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm the deletion")
	return cmd
}

func newEventsCmd(cf *clientFlags) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "events NAME",
		Short: "Show what happened to a cluster",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			evs, err := c.Events(cmd.Context(), args[0], limit)
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), evs)
			}
			t := table(cmd.OutOrStdout())
			fmt.Fprintln(t, "TIME\tMEMBER\tKIND\tMESSAGE")
			for _, e := range evs {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Member, e.Kind, e.Message)
			}
			return t.Flush()
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "how many of the newest events to show")
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	return cmd
}

func newSetCmd(cf *clientFlags) *cobra.Command {
	var sync, diskGuard string
	var poolSize int
	cmd := &cobra.Command{
		Use:   "set NAME [--sync off|on|strict] [--disk-guard PERCENT|off] [--pool-size N]",
		Short: "Change a live cluster's replication mode or disk guard",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req api.UpdateRequest
			if cmd.Flags().Changed("sync") {
				if err := fleet.ValidateSync(sync); err != nil {
					return usageError{err}
				}
				req.Sync = &sync
			}
			if cmd.Flags().Changed("disk-guard") {
				g, err := fleet.ParseDiskGuard(diskGuard)
				if err != nil {
					return usageError{fmt.Errorf("--disk-guard: %w", err)}
				}
				req.DiskGuard = &g
			}
			if cmd.Flags().Changed("pool-size") {
				if poolSize < 1 || poolSize > fleet.MaxPoolSize {
					return usageError{fmt.Errorf("--pool-size %d: give 1 to %d server connections per user and database", poolSize, fleet.MaxPoolSize)}
				}
				req.PoolSize = &poolSize
			}
			if req.Sync == nil && req.DiskGuard == nil && req.PoolSize == nil {
				return usageError{fmt.Errorf("nothing to change: give --sync off, on or strict, --disk-guard PERCENT or off, or --pool-size N")}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.Update(cmd.Context(), args[0], req)
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			guard := "disk guard off"
			if v.DiskGuard > 0 {
				guard = fmt.Sprintf("writes stop below %d%% free disk", v.DiskGuard)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster %s: sync mode %s, %s, pool size %d\n", v.Name, v.Sync, guard, v.PoolSize)
			return nil
		},
	}
	cmd.Flags().StringVar(&sync, "sync", "", "replication mode: off, on or strict")
	cmd.Flags().StringVar(&diskGuard, "disk-guard", "", "stop taking writes while a member's data disk has less than this percentage free (1 to 50); off to turn the guard off")
	cmd.Flags().IntVar(&poolSize, "pool-size", 0, "server connections the pooled port opens per user and database on each host (1 to 1000)")
	return cmd
}

func newSwitchoverCmd(cf *clientFlags) *cobra.Command {
	var to string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "switchover NAME [--to MEMBER]",
		Short: "Move the primary to a standby, without losing a committed transaction",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			start := time.Now()
			v, err := c.Switchover(cmd.Context(), args[0], to)
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "switching over %s from %s to %s\n", args[0], v.From, v.To)
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := c.WaitPrimary(ctx, args[0], func(cv api.ClusterView) bool { return cv.Primary == v.To }); err != nil {
				return err
			}
			fmt.Fprintf(out, "%s is the primary of %s (%s)\n", v.To, args[0], time.Since(start).Round(10*time.Millisecond))
			// Until the old primary streams from the new one the cluster
			// has a standby less, and a failover or another switchover has
			// nowhere to go: the command returns once it does.
			wctx, wcancel := context.WithTimeout(ctx, rejoinWait)
			defer wcancel()
			if state, err := waitStreaming(wctx, c, args[0], v.From); err != nil {
				fmt.Fprintf(out, "%s does not stream from %s yet (%s); follow it with `pgfleet status %s`\n", v.From, v.To, state, args[0])
				return nil
			}
			fmt.Fprintf(out, "%s streams from %s as a standby (%s)\n", v.From, v.To, time.Since(start).Round(10*time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "member to promote (default: the most caught-up standby)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the new primary")
	return cmd
}

// rejoinWait is how long `switchover` waits for the old primary to stream
// from the new one: it rejoins within a second or two, or a rewind takes
// longer and the command says so rather than wait for it.
const rejoinWait = 30 * time.Second

// waitStreaming waits until member id of cluster name streams from its
// primary, and returns the state it was last seen in.
func waitStreaming(ctx context.Context, c *api.Client, name, id string) (fleet.State, error) {
	state := fleet.StateUnknown
	for {
		if v, err := c.Cluster(ctx, name); err == nil {
			for _, m := range v.Members {
				if m.ID == id {
					state = m.State
				}
			}
			if state == fleet.StateStreaming {
				return state, nil
			}
		}
		select {
		case <-ctx.Done():
			return state, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func newFailoverCmd(cf *clientFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "failover NAME",
		Short: "Make the primary step down at once and elect a new one (for tests and emergencies)",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			before, err := c.Cluster(cmd.Context(), args[0])
			if err != nil {
				return clusterGone(cmd.Context(), c, args[0], err)
			}
			start := time.Now()
			if err := c.Failover(cmd.Context(), args[0]); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var now string
			// A new term, not a new member: the election may keep the
			// primary where it was, and the CLI must see that too.
			if err := c.WaitPrimary(ctx, args[0], func(cv api.ClusterView) bool {
				now = cv.Primary
				return cv.Primary != "" && cv.PrimaryTerm != before.PrimaryTerm
			}); err != nil {
				return err
			}
			took := time.Since(start).Round(10 * time.Millisecond)
			if now == before.Primary {
				fmt.Fprintf(cmd.OutOrStdout(), "%s is the primary of %s again: no other member won the election (%s); see `pgfleet events %s`\n", now, args[0], took, args[0])
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is the primary of %s (was %s; %s)\n", now, args[0], before.Primary, took)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the new primary")
	return cmd
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print pgfleet's version and commit, the Go release that built it, and the PostgreSQL it runs",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			printVersions(cmd.OutOrStdout())
		},
	}
}
