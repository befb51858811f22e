package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// defaultDevDir is where a dev fleet lives. As root, postgres runs as the
// postgres OS user, which cannot enter root's home, so the fleet goes under
// /var/lib.
func defaultDevDir() string {
	if os.Geteuid() == 0 && os.Getenv("PGFLEET_HOME") == "" {
		return "/var/lib/pgfleet/dev"
	}
	return filepath.Join(home(), "dev")
}

// devClustersWait is how long `dev up` waits for the fleet's clusters to be
// ready: after a restart of the whole fleet they elect a primary and their
// members catch up, which takes seconds.
const devClustersWait = 2 * time.Minute

// waitClusters waits until every cluster of the fleet is ready (ready) or
// ctx ends, and returns the clusters as last seen.
func waitClusters(ctx context.Context, c *api.Client) ([]api.ClusterView, error) {
	var last []api.ClusterView
	var lastErr error
	for {
		cs, err := c.Clusters(ctx)
		if err == nil {
			last, lastErr = cs, nil
			all := true
			for _, v := range cs {
				all = all && ready(v)
			}
			if all {
				return cs, nil
			}
		} else if ctx.Err() == nil {
			lastErr = err // the store may still be settling: ask again
		}
		select {
		case <-ctx.Done():
			if last == nil && lastErr != nil {
				return nil, fmt.Errorf("list the fleet's clusters: %w", lastErr)
			}
			return last, nil
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func healthyMembers(v api.ClusterView) int {
	n := 0
	for _, m := range v.Members {
		if m.Healthy {
			n++
		}
	}
	return n
}

func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Run a local multi-region fleet on this machine"}
	var regions, dir, pgBin string
	var netOctet int
	up := &cobra.Command{
		Use:   "up",
		Short: "Start a local fleet: one agent per host, each on its own loopback address",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if netOctet < 0 || netOctet > 254 {
				return usageError{fmt.Errorf("--net %d: must be 0-254", netOctet)}
			}
			plan, err := lab.ParsePlan(regions, netOctet)
			if err != nil {
				return usageError{err}
			}
			if _, err := postgres.FindBin(pgBin); err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			abs, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			d := &lab.Dev{Exe: exe, Dir: abs, PGBin: pgBin, Out: out}
			fmt.Fprintf(out, "starting dev fleet in %s\n", abs)
			plan, token, err := d.Up(cmd.Context(), plan, cmd.Flags().Changed("regions"))
			if err != nil {
				return err
			}
			ca, err := os.ReadFile(d.CAPath(plan))
			if err != nil {
				return fmt.Errorf("read the fleet's CA: %w", err)
			}
			if err := saveConfig(cliConfig{Endpoints: lab.Endpoints(plan), Token: token, CA: string(ca), DevDir: abs}); err != nil {
				return fmt.Errorf("save CLI config: %w", err)
			}
			c, err := d.Client(plan, token)
			if err != nil {
				return err
			}
			// The hosts are up, but a fleet is ready for its user once its
			// clusters are: after a restart they elect and catch up first.
			ctx, cancel := context.WithTimeout(cmd.Context(), devClustersWait)
			defer cancel()
			cs, err := waitClusters(ctx, c)
			if err != nil {
				return err
			}
			hosts := fmt.Sprintf("%d hosts (%s); API https://%s; token and CA saved in %s", len(plan.Hosts), plan.Regions, plan.Hosts[0].API(), configPath())
			// Every agent serves the web console; its sign-in takes the token.
			fmt.Fprintf(out, "web console: https://%s/ (any host's API address; sign in with the token in %s; the fleet's CA, which your browser is to trust for it, is in %s)\n",
				plan.Hosts[0].API(), agent.TokenPath(filepath.Join(abs, plan.Hosts[0].Name)), d.CAPath(plan))
			if len(cs) == 0 {
				fmt.Fprintf(out, "fleet ready: %s\n", hosts)
				fmt.Fprintf(out, "next: pgfleet create demo --primary-region %s --ha 3 --replicas ams,syd --wait\n", plan.Hosts[0].Region)
				return nil
			}
			var states, waiting []string
			for _, v := range cs {
				states = append(states, fmt.Sprintf("%s %d/%d healthy", v.Name, healthyMembers(v), len(v.Members)))
				if !ready(v) {
					waiting = append(waiting, v.Name)
				}
			}
			if len(waiting) > 0 {
				fmt.Fprintf(out, "fleet up: %s\nclusters not ready after %s: %s; watch them with `pgfleet status %s`\n", hosts, devClustersWait, strings.Join(states, ", "), waiting[0])
				return nil
			}
			fmt.Fprintf(out, "fleet ready: %s\nclusters: %s\n", hosts, strings.Join(states, ", "))
			fmt.Fprintf(out, "next: pgfleet status %s\n", cs[0].Name)
			return nil
		},
	}
	up.Flags().StringVar(&regions, "regions", lab.DefaultRegions, "regions and host counts, e.g. iad:3,ams,syd")
	up.Flags().StringVar(&dir, "dir", defaultDevDir(), "directory of the dev fleet")
	up.Flags().StringVar(&pgBin, "pg-bin", "", "directory of the PostgreSQL server binaries")
	up.Flags().IntVar(&netOctet, "net", 0, "second octet N of the hosts' loopback addresses 127.N.R.H")
	up.Flags().MarkHidden("net")

	var purge bool
	var downDir string
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the local fleet (and delete it with --purge)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("dir") {
				if cfg, err := loadConfig(); err == nil && cfg.DevDir != "" {
					downDir = cfg.DevDir
				}
			}
			abs, err := filepath.Abs(downDir)
			if err != nil {
				return err
			}
			d := &lab.Dev{Dir: abs, Out: cmd.OutOrStdout()}
			if err := d.Down(purge); err != nil {
				return err
			}
			if purge {
				if cfg, err := loadConfig(); err == nil && cfg.DevDir == abs {
					os.Remove(configPath())
				}
			}
			return nil
		},
	}
	down.Flags().BoolVar(&purge, "purge", false, "also delete the fleet's data")
	down.Flags().StringVar(&downDir, "dir", defaultDevDir(), "directory of the dev fleet")
	cmd.AddCommand(up, down)
	return cmd
}
