package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

func newMoveCmd(cf *clientFlags) *cobra.Command {
	var (
		req     api.MoveRequest
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "move NAME --primary-region R [--drop-old] | --reverse",
		Short: "Move a cluster's primary and standbys to region R; the old region's members stay as read replicas",
		Long: `Move a cluster's primary region to R, step by step: standbys are placed in R
(as many as the cluster has in its primary region) and clone; once they
stream, the primary switches over to the one least behind (clients through
the proxies wait, they do not fail); then R is the primary region, failovers
elect there, and the old region's members are read replicas, or are removed
with --drop-old. In sync mode commits wait for a standby in R before the old
region's members stop being electable, so no acknowledged commit is lost.

Interrupted, the same command resumes the move where the cluster is;
--reverse undoes it instead (back to the region it left, removing the
members it added).`,
		Example: `  pgfleet move app --primary-region ams
  pgfleet move app --primary-region ams --drop-old
  pgfleet move app --reverse`,
		Args: exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case req.Reverse && req.Region != "":
				return usageError{fmt.Errorf("--reverse moves back to the region the move under way left: give it without --primary-region")}
			case !req.Reverse && req.Region == "":
				return usageError{fmt.Errorf("say where the primary goes: --primary-region R (or --reverse to undo a move under way)")}
			case req.Region != "":
				if err := fleet.ValidateRegion(req.Region); err != nil {
					return usageError{fmt.Errorf("--primary-region: %w", err)}
				}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return c.Move(ctx, args[0], req, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&req.Region, "primary-region", "", "the region the primary and its standbys move to")
	cmd.Flags().BoolVar(&req.DropOld, "drop-old", false, "remove the old region's members at the end (their data is deleted) instead of keeping them as read replicas")
	cmd.Flags().BoolVar(&req.Reverse, "reverse", false, "undo the move under way")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long the whole move may take (run it again to resume)")
	return cmd
}
