package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/chaos"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestChaos is the short seeded run of the fault suite (internal/chaos): a
// three-host fleet in network namespaces, a sync-mode cluster, writers
// through every proxy, the multi-host URL and each member directly, and
// about twenty faults: postmasters and agents killed or stopped, hosts lost
// or cut off, switchovers and failovers, sometimes two at once. It fails on
// any acknowledged id lost, two members acknowledging writes on one
// timeline, a write acknowledged on an older timeline after a newer one
// took writes, a fault that does not settle, or members that end up with
// different rows. PGFLEET_CHAOS_SEED and PGFLEET_CHAOS_FAULTS change the
// run; bench/chaos runs the long one.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-host fleet through twenty faults")
	}
	seed, faults := uint64(20261127), 20
	if v, err := strconv.ParseUint(os.Getenv("PGFLEET_CHAOS_SEED"), 10, 64); err == nil {
		seed = v
	}
	if v, err := strconv.Atoi(os.Getenv("PGFLEET_CHAOS_FAULTS")); err == nil && v > 0 {
		faults = v
	}
	f := startNamespacedFleet(t, "iad:3")
	plan, dir := f.plan, f.dir
	ctx := context.Background()
	logPath := filepath.Join(labtest.TestDir(t), "chaos.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- run log:\n%s", lab.Tail(logPath, 80))
			for _, h := range plan.Hosts {
				t.Logf("--- end of %s.log:\n%s", h.Name, lab.Tail(filepath.Join(dir, h.Name+".log"), 40))
			}
		}
	})
	t.Logf("seed %d, %d faults (PGFLEET_CHAOS_SEED=%d reruns this sequence)", seed, faults, seed)
	start := time.Now()
	h, err := chaos.Run(ctx, chaos.Config{
		Dev: f.dev, Plan: plan, Net: f.ns.Namespaces, Client: f.client,
		Cluster: "chaos", Sync: true, Seed: seed, Faults: faults,
		Log: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := chaos.Check(h)
	for i, f := range h.Faults {
		settled := "never settled"
		if !f.Settled.IsZero() {
			settled = "settled " + f.Settled.Sub(f.Healed).Round(10*time.Millisecond).String() + " after its heal"
		}
		t.Logf("fault %2d at %s: %s on %s, healed after %s, %s", i+1, f.Start.Format("15:04:05.000"), f.Kind, f.Target, f.Healed.Sub(f.Start).Round(10*time.Millisecond), settled)
	}
	t.Logf("%d faults in %s:\n%s", len(h.Faults), time.Since(start).Round(time.Second), r.Table())
	if !r.OK() {
		t.Fatalf("the fault suite found broken promises (seed %d):\n%s", seed, r.Table())
	}
}
