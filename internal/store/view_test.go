package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/store"
)

// TestViewFollowsTheStore: a view answers what the store holds, a moment
// later, for every kind of change (create, status, a lease expiring,
// delete), wakes a subscriber for the changes it asked for and not for a
// lag update, and hands out copies no reader can spoil for the others.
func TestViewFollowsTheStore(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v := s.StartView(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	labtest.WaitFor(t, 10*time.Second, "the view current", func() (bool, string) { return v.Current(), "not current" })
	placement := v.Subscribe(ctx, store.PlacementChange)
	cluster := v.SubscribeCluster(ctx, "c")
	drain := func(ch <-chan struct{}) {
		select {
		case <-ch:
		default:
		}
	}
	woken := func(ch <-chan struct{}, within time.Duration) bool {
		select {
		case <-ch:
			return true
		case <-time.After(within):
			return false
		}
	}
	same := func(what string) {
		t.Helper()
		labtest.WaitFor(t, 5*time.Second, "the view shows "+what, func() (bool, string) {
			want, werr := s.Cluster(ctx, "c")
			got, gerr := v.Cluster(ctx, "c")
			w, g := fmt.Sprintf("%+v %v", want, werr), fmt.Sprintf("%+v %v", got, gerr)
			return w == g, "store: " + w + "\nview:  " + g
		})
	}

	if err := s.CreateCluster(ctx, spec("c", 6000), fleet.Secrets{}, members("c", 6000), ev("c", "x")); err != nil {
		t.Fatal(err)
	}
	same("the new cluster")
	if !woken(placement, 5*time.Second) {
		t.Error("a new cluster did not wake the placement subscriber")
	}

	lctx, expire := context.WithCancel(ctx)
	lease, err := s.Grant(lctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterHost(ctx, fleet.Host{Name: "h1", Region: "iad", Addr: "127.0.0.1", APIAddr: "127.0.0.1:7000"}, lease); err != nil {
		t.Fatal(err)
	}
	drain(cluster)
	running := fleet.MemberStatus{ID: "c-1", Role: fleet.RolePrimary, State: fleet.StateRunning, Healthy: true}
	if err := s.PutStatus(ctx, "c", running, lease); err != nil {
		t.Fatal(err)
	}
	// What this store client wrote, it reads back at once.
	if got, err := v.Cluster(ctx, "c"); err != nil || got.Status["c-1"].State != fleet.StateRunning {
		t.Errorf("right after writing it, the view shows status %+v, %v; want c-1 running", got.Status, err)
	}
	same("the member running")
	if !woken(cluster, 5*time.Second) {
		t.Error("a member starting to run did not wake its cluster's subscriber")
	}
	drain(placement)
	running.LagBytes = 4096
	if err := s.PutStatus(ctx, "c", running, lease); err != nil {
		t.Fatal(err)
	}
	same("the new lag")
	if woken(cluster, 300*time.Millisecond) || woken(placement, 0) {
		t.Error("a lag update woke a subscriber; only the ticks are to pick it up")
	}
	hosts, err := v.Hosts(ctx)
	if err != nil || len(hosts) != 1 || hosts[0].Name != "h1" {
		t.Errorf("view hosts = %v, %v; want h1", hosts, err)
	}

	c, _ := v.Cluster(ctx, "c")
	c.Members[0].Role = fleet.RoleReplica
	c.Status["c-1"] = fleet.MemberStatus{}
	if again, _ := v.Cluster(ctx, "c"); again.Members[0].Role != fleet.RolePrimary || again.Status["c-1"].State != fleet.StateRunning {
		t.Errorf("a reader's change reached the view's cache: %+v", again)
	}

	expire()
	labtest.WaitFor(t, 10*time.Second, "status and host gone with the lease", func() (bool, string) {
		c, err := v.Cluster(ctx, "c")
		hosts, herr := v.Hosts(ctx)
		return err == nil && herr == nil && len(c.Status) == 0 && len(hosts) == 0, fmt.Sprintf("status %v, hosts %v, %v %v", c.Status, hosts, err, herr)
	})

	drain(placement)
	if err := s.DeleteCluster(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 5*time.Second, "the cluster gone from the view", func() (bool, string) {
		_, err := v.Cluster(ctx, "c")
		cs, lerr := v.Clusters(ctx)
		return errors.Is(err, store.ErrNotFound) && lerr == nil && len(cs) == 0, fmt.Sprint(err, cs, lerr)
	})
	if !woken(placement, 5*time.Second) {
		t.Error("a destroyed cluster did not wake the placement subscriber")
	}
}

// TestViewWithoutStore: a view that cannot follow its store does not
// answer from an empty copy: reads go to the store and fail as the store's
// own reads do.
func TestViewWithoutStore(t *testing.T) {
	s, err := store.Open([]string{fmt.Sprintf("http://127.%d.9.9:2379", labtest.FreeNet(t))}, "/test/"+t.Name()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v := s.StartView(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := v.Clusters(ctx); !errors.Is(err, store.ErrNoQuorum) {
		t.Errorf("Clusters without a store = %v, want ErrNoQuorum", err)
	}
	if v.Current() {
		t.Error("a view without a store says it is current")
	}
}

// TestViewStaysCurrentWhileQuiet: with nothing changing, the view keeps
// proving itself current (a linearizable read each second), so readers
// are not sent to the store.
func TestViewStaysCurrentWhileQuiet(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v := s.StartView(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	labtest.WaitFor(t, 10*time.Second, "the view current", func() (bool, string) { return v.Current(), "not current" })
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if !v.Current() {
			t.Fatal("a quiet view stopped being current")
		}
	}
}
