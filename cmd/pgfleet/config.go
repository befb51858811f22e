package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
)

func newConfigCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Show and change a cluster's PostgreSQL settings"}
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show the settings the cluster sets, as its primary runs with them",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.Config(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printConfig(cmd.OutOrStdout(), cf, args[0], v)
		},
	}
	show.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	var reset []string
	var restart bool
	set := &cobra.Command{
		Use:   "set NAME KEY=VALUE... [--reset KEY]...",
		Short: "Change settings on every member: checked against the server's pg_settings, applied by a reload",
		Long: `Change PostgreSQL settings of every member of a cluster. Each name and value
is checked against the primary's own pg_settings (type, unit, range, allowed
values) before anything changes; settings pgfleet owns (replication,
archiving, ports, TLS, synchronous_standby_names, ...) are refused with the
reason. The settings live in the cluster's spec, so new and rejoining members
get them, and every member applies them with a reload. A setting that needs a
restart (shared_buffers, max_connections...) takes --restart, which applies
it with ` + "`pgfleet restart`" + `: one member at a time, the primary last after a
switchover. --reset returns a setting to pgfleet's default.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.ConfigRequest{Set: map[string]string{}, Reset: reset, Restart: restart}
			for _, a := range args[1:] {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return usageError{fmt.Errorf("%q: give settings as KEY=VALUE, e.g. work_mem=64MB", a)}
				}
				req.Set[strings.TrimSpace(k)] = v
			}
			if len(req.Set) == 0 && len(req.Reset) == 0 {
				return usageError{fmt.Errorf("nothing to change: give settings as KEY=VALUE or --reset KEY")}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.SetConfig(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "saved in the spec of %s; every member reloads within a few seconds\n", args[0])
			if err := printConfig(cmd.OutOrStdout(), cf, args[0], v); err != nil || !restart {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			return c.RollingRestart(ctx, args[0], cmd.OutOrStdout())
		},
	}
	set.Flags().StringSliceVar(&reset, "reset", nil, "return a setting to pgfleet's default; repeat for more")
	set.Flags().BoolVar(&restart, "restart", false, "apply settings that need a restart with a rolling restart")
	set.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	cmd.AddCommand(show, set)
	return cmd
}

func printConfig(w io.Writer, cf *clientFlags, name string, v api.ConfigView) error {
	if cf.json {
		return printJSON(w, v)
	}
	if len(v.Settings) == 0 {
		fmt.Fprintf(w, "cluster %s sets no PostgreSQL setting of its own: pgfleet's defaults apply (`pgfleet config set %s KEY=VALUE` changes one)\n", name, name)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SETTING\tVALUE\tON THE PRIMARY\tCONTEXT")
	for _, s := range v.Settings {
		cur := s.Current
		if s.Unit != "" {
			cur += " (" + s.Unit + ")"
		}
		if s.PendingRestart {
			cur += ", pending restart"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Value, cur, s.Context)
	}
	return tw.Flush()
}
