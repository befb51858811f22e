package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
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
			return rollingRestart(ctx, c, args[0], cmd.OutOrStdout())
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long the whole restart may take")
	return cmd
}

// rollingRestart restarts cluster name's members one at a time (see
// newRestartCmd).
func rollingRestart(ctx context.Context, c *api.Client, name string, out io.Writer) error {
	start := time.Now()
	v, err := c.Cluster(ctx, name)
	if err != nil {
		return err
	}
	if v.Primary == "" {
		return fmt.Errorf("cluster %s has no primary now: wait for `pgfleet status %s` to show one", name, name)
	}
	primary := v.Primary
	var replicas, standbys []string
	for _, m := range v.Members {
		switch {
		case m.ID == primary:
		case m.Region != v.PrimaryRegion:
			replicas = append(replicas, m.ID)
		default:
			standbys = append(standbys, m.ID)
		}
	}
	for _, id := range append(replicas, standbys...) {
		if err := restartOne(ctx, c, name, id, out); err != nil {
			return err
		}
	}
	if len(standbys) == 0 {
		return fmt.Errorf("restarted every other member; %s is the only member of the primary region, so restarting it would stop writes: add a standby (`pgfleet ha %s --size 2`) and run the restart again", primary, name)
	}
	sv, err := c.Switchover(ctx, name, "")
	if err != nil {
		return fmt.Errorf("switch over before restarting the primary %s: %w", primary, err)
	}
	fmt.Fprintf(out, "switching over from %s to %s\n", sv.From, sv.To)
	if err := waitPrimary(ctx, c, name, func(cv api.ClusterView) bool { return cv.Primary == sv.To }); err != nil {
		return err
	}
	if err := restartOne(ctx, c, name, primary, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "cluster %s restarted in %s; %s is the primary\n", name, time.Since(start).Round(100*time.Millisecond), sv.To)
	return nil
}

// restartOne orders member id to restart and waits until it is back:
// healthy, caught up enough to stream, with the order carried out.
func restartOne(ctx context.Context, c *api.Client, name, id string, out io.Writer) error {
	t0 := time.Now()
	rv, err := c.RestartMember(ctx, name, id)
	if err != nil {
		return err
	}
	last := "no answer"
	for {
		v, err := c.Cluster(ctx, name)
		if err == nil {
			for _, m := range v.Members {
				if m.ID != id {
					continue
				}
				last = fmt.Sprintf("%s %s, healthy %v, order %q", m.Role, m.State, m.Healthy, m.Restarted)
				if m.Restarted == rv.Order && m.Healthy && m.State == fleet.StateStreaming && m.LagBytes >= 0 {
					fmt.Fprintf(out, "restarted %s in %s\n", id, time.Since(t0).Round(100*time.Millisecond))
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not come back from its restart in time (last seen: %s); see `pgfleet events %s`", id, strings.TrimSpace(last), name)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
