package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

func newLogsCmd(cf *clientFlags) *cobra.Command {
	var o api.LogOptions
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Show a member's postgres log and the agent's lines about it",
		Long: `Show the log of one member of cluster NAME: what its postgres wrote and
what the agent of its host logged about it, oldest first, one line each:
time, member, source (postgres or agent) and text.

Any host of the fleet answers: the member's host keeps the log (the last
8 MiB at most, kept while postgres is down too) and the host asked passes
it through. Reading logs needs the fleet's API token, not a read-only one:
a postgres log can hold the text of statements and their data.`,
		Example: `  pgfleet logs demo                     the primary's log
  pgfleet logs demo --member demo-2 --since 10m
  pgfleet logs demo --since 2026-01-02T15:04:05Z
  pgfleet logs demo -f                  follow until Ctrl-C`,
		Args: exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := fleet.ValidateName("cluster", name, fleet.MaxClusterName); err != nil {
				return usageError{err}
			}
			if o.Member != "" {
				if err := fleet.ValidateMemberID(name, o.Member); err != nil {
					return usageError{fmt.Errorf("--member: %w", err)}
				}
			}
			if o.Since != "" {
				if _, err := api.ParseSince(o.Since, time.Now()); err != nil {
					return usageError{fmt.Errorf("--%w", err)}
				}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			show := printLogLine
			if cf.json {
				enc := json.NewEncoder(out)
				show = func(_ io.Writer, l api.LogLine) error { return enc.Encode(l) }
			}
			lines := 0
			err = c.Logs(cmd.Context(), name, o, func(l api.LogLine) error { lines++; return show(out, l) })
			if o.Follow && cmd.Context().Err() != nil {
				return nil // interrupted, as --follow is meant to end
			}
			if err != nil {
				return clusterGone(cmd.Context(), c, name, err)
			}
			if lines == 0 && !cf.json {
				whose, since := "the primary", ""
				if o.Member != "" {
					whose = o.Member
				}
				if o.Since != "" {
					since = " since " + o.Since
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "no lines in the log of %s%s\n", whose, since)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Member, "member", "", "the member whose log to show (default: the primary)")
	cmd.Flags().StringVar(&o.Since, "since", "", "only lines written since: how long ago (10m, 2h30m) or an RFC 3339 time (default: all the host keeps)")
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "keep showing new lines until interrupted")
	cmd.Flags().BoolVar(&cf.json, "json", false, "print each line as a JSON object")
	return cmd
}

// printLogLine prints one line of a member's log: postgres's lines as it
// wrote them ("[pid] LOG:  ..."), the agent's after their level in the same
// style.
func printLogLine(w io.Writer, l api.LogLine) error {
	text := l.Text
	if l.Source != "postgres" && l.Level != "" {
		text = l.Level + ":  " + text
	}
	_, err := fmt.Fprintf(w, "%s  %s  %-8s  %s\n", l.Time.Local().Format("2006-01-02 15:04:05.000"), l.Member, l.Source, text)
	return err
}
