package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"
)

func newRestartCmd(cf *clientFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restart NAME",
		Short: "Restart every member's postgres, one at a time, the primary last after a switchover",
		Long: `Restart every member of a cluster, one at a time: read replicas, then
standbys, each back and streaming before the next; then a switchover moves the
primary to a standby (clients through the proxies are held, not failed), and
the old primary restarts as a standby. Never more than one member is down.
It applies settings that need a restart (` + "`pgfleet config set --restart`" + ` runs it).`,
		Args: exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return c.RollingRestart(ctx, args[0], cmd.OutOrStdout())
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long the whole restart may take")
	return cmd
}
