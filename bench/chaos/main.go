// Command chaos runs pgfleet's fault suite (internal/chaos) at length: a
// three-host fleet in network namespaces, a cluster per replication mode,
// writers through every proxy, the multi-host URL and each member directly,
// and a seeded nemesis. It writes the checker's table per mode to -out.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgfleet/pgfleet/internal/chaos"
	"github.com/pgfleet/pgfleet/internal/lab"
)

func main() {
	exe := flag.String("pgfleet", "bin/pgfleet", "pgfleet binary")
	dir := flag.String("dir", "bench/tmp/chaos", "working directory (emptied first)")
	faults := flag.Int("faults", 250, "rounds per mode: each injects one fault, or two overlapping ones")
	modes := flag.String("modes", "sync,async", "replication modes to run, in order")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "nemesis seed")
	out := flag.String("out", "bench/results/chaos.md", "markdown report")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *exe, *dir, *faults, strings.Split(*modes, ","), *seed, *out); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, exe, dir string, faults int, modes []string, seed uint64, out string) error {
	exe, err := filepath.Abs(exe)
	if err != nil {
		return err
	}
	// The agents take file:// URLs under it, which must be absolute.
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Fault suite: %d rounds per mode (a round injects one fault or two at once)\n\n", faults)
	fmt.Fprintf(&b, "Measured %s on one 2-core machine by `bash bench/chaos/run.sh` (seed %d).\n", time.Now().UTC().Format("2006-01-02"), seed)
	b.WriteString("Three hosts (`iad:3`), each in its own network namespace; one cluster with a primary and two standbys, lease TTL 3 s.\n")
	b.WriteString("Writers insert unique ids through each host's proxy, through the multi-host URL and directly to each member, recording acknowledged, refused and unknown outcomes.\n")
	b.WriteString("The nemesis kills postmasters and agents, stops (SIGSTOP) agents, postmasters and both, loses hosts, cuts hosts off, and forces switchovers and failovers, sometimes two faults at once; each fault is held 1-8 s, healed, and the cluster must settle (a running primary, every member streaming, an application write acknowledged) within 60 s.\n")
	b.WriteString("\"No app write acknowledged\" is the longest stretch between a fault and its settling without an acknowledged write through a proxy or the URL.\n")
	for i, mode := range modes {
		sync := mode == "sync"
		if !sync && mode != "async" {
			return fmt.Errorf("-modes: %q is neither sync nor async", mode)
		}
		r, took, err := runMode(ctx, exe, filepath.Join(dir, mode), faults, sync, seed+uint64(i))
		if err != nil {
			return fmt.Errorf("%s mode: %w", mode, err)
		}
		fmt.Fprintf(&b, "\n## %s mode (%s)\n\n%s", mode, took.Round(time.Second), r.Table())
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			return err
		}
		fmt.Printf("%s mode done in %s:\n%s\n", mode, took.Round(time.Second), r.Table())
	}
	return nil
}

func runMode(ctx context.Context, exe, dir string, faults int, sync bool, seed uint64) (chaos.Report, time.Duration, error) {
	if err := os.RemoveAll(dir); err != nil {
		return chaos.Report{}, 0, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return chaos.Report{}, 0, err
	}
	plan, err := lab.ParsePlan("iad:3", 0)
	if err != nil {
		return chaos.Report{}, 0, err
	}
	ns, err := lab.NewNamespaces(&plan)
	if err != nil {
		return chaos.Report{}, 0, err
	}
	defer ns.Remove()
	d := &lab.Dev{Exe: exe, Dir: filepath.Join(dir, "fleet"), Out: io.Discard, Wrap: ns.Wrap}
	defer d.Down(false) // keeps the logs; the next run empties the directory
	plan, token, err := d.Up(ctx, plan, true)
	if err != nil {
		return chaos.Report{}, 0, err
	}
	logf, err := os.Create(filepath.Join(dir, "chaos.log"))
	if err != nil {
		return chaos.Report{}, 0, err
	}
	defer logf.Close()
	client, err := d.Client(plan, token)
	if err != nil {
		return chaos.Report{}, 0, err
	}
	start := time.Now()
	h, err := chaos.Run(ctx, chaos.Config{
		Dev: d, Plan: plan, Net: ns, Client: client,
		Cluster: "chaos", Sync: sync, Seed: seed, Faults: faults,
		Log: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		return chaos.Report{}, 0, err
	}
	return chaos.Check(h), time.Since(start), nil
}
