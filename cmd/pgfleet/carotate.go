package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/pki"
)

func newCARotateCmd(cf *clientFlags) *cobra.Command {
	var exclude []string
	var status, noWait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rotate [--exclude HOST]... | --status",
		Short: "Replace the fleet's CA, in steps, without stopping any cluster",
		Long: `Replace the fleet's certificate authority, in phases every running host
goes through before the next begins: every host trusts the old CA and the new
one (the store's voters restart their etcd member, one at a time, since etcd
reads its CAs only at start); every host gets a certificate from the new CA;
every host trusts only the new CA (the voters restart once more); the members'
certificate gets a fresh key. Postgres never restarts, and clients of the
proxies keep working throughout. It takes about a minute.

--exclude HOST leaves a host behind: it gets no certificate from the new CA,
and once the old CA is retired the fleet refuses it. Use it for a host that
was stolen or lost; a host that is down during the rotation is left behind
the same way and joins again with a new join token.

The CLI waits for the end and trusts the new CA as soon as the rotation names
it. Other CLIs run ` + "`pgfleet login`" + ` again; clients of Postgres that verify the
server need the new CA (` + "`pgfleet ca`" + ` prints it). Join tokens made before the
rotation stop working.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if status && (len(exclude) > 0 || noWait) {
				return usageError{errors.New("--status only reports: it takes no other flag")}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if status {
				v, err := c.CARotation(cmd.Context())
				if api.IsNotFound(err) {
					fmt.Fprintln(out, "no CA rotation is under way")
					return nil
				}
				if err != nil {
					return err
				}
				if cf.json {
					return printJSON(out, v)
				}
				printRotation(out, v)
				return nil
			}
			v, err := c.RotateCA(cmd.Context(), exclude)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "CA rotation %s started\n", v.ID)
			if noWait {
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return waitRotation(ctx, c, v.ID, out, firstNonEmpty(cf.ca, os.Getenv("PGFLEET_CA")) == "")
		},
	}
	cmd.Flags().StringSliceVar(&exclude, "exclude", nil, "a host to leave behind (stolen or lost); repeat for more")
	cmd.Flags().BoolVar(&status, "status", false, "report the rotation under way and return")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "start the rotation and return")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for the rotation to end")
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON (with --status)")
	return cmd
}

func printRotation(w io.Writer, v api.RotationView) {
	fmt.Fprintf(w, "CA rotation %s: phase %s, started %s\n", v.ID, v.Phase, v.Started.Local().Format(time.DateTime))
	if v.Coordinator != "" {
		fmt.Fprintf(w, "  coordinated by %s\n", v.Coordinator)
	}
	switch {
	case v.Phase == pki.PhaseRequested:
		fmt.Fprintln(w, "  waiting for a store voter to make the new CA")
	case len(v.Waiting) > 0:
		fmt.Fprintf(w, "  waiting for: %s\n", strings.Join(v.Waiting, ", "))
	}
	if len(v.Exclude) > 0 {
		fmt.Fprintf(w, "  left behind: %s\n", strings.Join(v.Exclude, ", "))
	}
}

// waitRotation follows rotation id to its end, printing each phase and
// whom it waits for, and then makes the CLI trust the new CA: first beside
// the old one (the hosts present both), then alone.
func waitRotation(ctx context.Context, c *api.Client, id string, out io.Writer, useConfig bool) error {
	var last api.RotationView
	var newCA []byte
	for {
		v, err := c.CARotation(ctx)
		switch {
		case api.IsNotFound(err):
			if newCA == nil {
				return fmt.Errorf("CA rotation %s ended before the CLI saw its new CA: run `pgfleet login` to learn it", id)
			}
			saved, err := trustCLI(newCA, false, useConfig)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "CA rotation %s finished: the fleet trusts only CA %s\n", id, caPin(newCA))
			if saved {
				fmt.Fprintf(out, "this CLI now trusts it (%s); other CLIs: `pgfleet login`; Postgres clients: `pgfleet ca > ca.crt`\n", configPath())
			} else {
				fmt.Fprintln(out, "the CA file this CLI was given (--ca, PGFLEET_CA) holds the old CA: replace it with a host's <data-dir>/tls/ca.crt, or run `pgfleet login`")
			}
			return nil
		case err != nil:
			var ae *api.APIError
			if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 {
				return err // no retry makes a refused request right
			}
			if ctx.Err() != nil {
				return fmt.Errorf("CA rotation %s is still under way (phase %s, waiting for %s): follow it with `pgfleet ca rotate --status`", id, last.Phase, strings.Join(last.Waiting, ", "))
			}
			// An agent restarting its etcd member answers 503 for a moment.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		case v.ID != id:
			return fmt.Errorf("CA rotation %s is under way, not %s", v.ID, id)
		}
		if v.NewCA != "" && newCA == nil {
			newCA = []byte(v.NewCA)
			// Hosts start presenting certificates from the new CA: this
			// client's next connections trust it too (the pool is the
			// transport's own), and so does the saved config.
			if pool := c.CA(); pool == nil || !pool.AppendCertsFromPEM(newCA) {
				return fmt.Errorf("CA rotation %s: the new CA is not a PEM certificate", id)
			}
			if _, err := trustCLI(newCA, true, useConfig); err != nil {
				return err
			}
		}
		if v.Phase != last.Phase || !slices.Equal(v.Waiting, last.Waiting) {
			printRotation(out, v)
			last = v
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// trustCLI records the new CA in the CLI's config: beside the one it has
// while the rotation runs (keepOld), alone once it ended. It reports
// whether the config holds the CA the CLI uses.
func trustCLI(newCA []byte, keepOld, useConfig bool) (bool, error) {
	if !useConfig {
		return false, nil // the CA comes from --ca or PGFLEET_CA, which the user keeps
	}
	cfg, err := loadConfig()
	if err != nil {
		return false, err
	}
	if cfg.CA == "" {
		return false, nil
	}
	if keepOld {
		cfg.CA = string(pki.Bundle(newCA, []byte(cfg.CA)))
	} else {
		cfg.CA = string(newCA)
	}
	if err := saveConfig(cfg); err != nil {
		return false, fmt.Errorf("save the new CA in %s: %w", configPath(), err)
	}
	return true, nil
}

func caPin(b []byte) string {
	c, err := pki.ParseCert(b)
	if err != nil {
		return "?"
	}
	return pki.Pin(c)
}
