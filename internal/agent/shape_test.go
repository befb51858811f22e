package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// TestClusterShape changes a live cluster's shape in sync mode: a replica
// added in another region and standbys added and removed in the primary
// region, one of them from the sync set, and a replica removed while its
// host's agent is down. New members clone and hold the rows; removed
// members lose their slot on the primary and their data on their host; the
// primary never changes; bad requests are refused with the reason.
func TestClusterShape(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five agents and up to four postgres instances")
	}
	f := labtest.StartFleet(t, "iad:3,ams:2")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "shape", PrimaryRegion: "iad", HA: ptr(2), Sync: fleet.SyncOn}); err != nil {
		t.Fatal(err)
	}
	v := waitShape(t, c, "shape", 2)
	primary := v.Primary
	pu, err := c.URL(ctx, "shape", primary)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pu.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}
	slots := func() []string {
		rows, err := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return names
	}

	// A replica in ams: cloned, streaming, holding the rows.
	sv, err := c.AddReplica(ctx, "shape", "ams")
	if err != nil {
		t.Fatalf("replica add: %v", err)
	}
	if len(sv.Added) != 1 || sv.Added[0].Region != "ams" || sv.Added[0].Role != fleet.RoleReplica {
		t.Fatalf("replica add added %+v; want one replica in ams", sv.Added)
	}
	replica := sv.Added[0]
	waitShape(t, c, "shape", 3)
	if n := countRows(t, c, "shape", replica.ID); n != 100 {
		t.Errorf("the new replica %s holds %d rows, want 100", replica.ID, n)
	}

	// A third member in iad, then back to two: the newest standby goes,
	// although it is in the sync set.
	sv, err = c.SetHA(ctx, "shape", 3)
	if err != nil || len(sv.Added) != 1 {
		t.Fatalf("ha --size 3: %+v, %v; want one standby added", sv.Added, err)
	}
	third := sv.Added[0]
	waitShape(t, c, "shape", 4)
	labtest.WaitFor(t, time.Minute, third.ID+" in the sync set", func() (bool, string) {
		v, err := c.Cluster(ctx, "shape")
		if err != nil {
			return false, err.Error()
		}
		return slices.Contains(v.SyncStandbys, third.ID), fmt.Sprintf("sync set %v", v.SyncStandbys)
	})
	var removed []string
	for start := time.Now(); ; {
		sv, err = c.SetHA(ctx, "shape", 2)
		var ae *api.APIError
		if errors.As(err, &ae) && strings.Contains(ae.Message, api.LeavingSyncSet) && time.Since(start) < time.Minute {
			continue
		}
		if err != nil {
			t.Fatalf("ha --size 2: %v", err)
		}
		removed = sv.Removed
		break
	}
	if !slices.Equal(removed, []string{third.ID}) {
		t.Fatalf("ha --size 2 removed %v; want the newest standby %s", removed, third.ID)
	}
	memberGone(t, f, c, slots, third)

	// The replica, with its host's agent down: its slot goes at once, its
	// data when the agent comes back.
	f.Stop(replica.Host)
	if _, err := c.RemoveMember(ctx, "shape", replica.ID); err != nil {
		t.Fatalf("replica remove with its host down: %v", err)
	}
	f.Start(replica.Host, "")
	memberGone(t, f, c, slots, replica)

	v, err = c.Cluster(ctx, "shape")
	if err != nil {
		t.Fatal(err)
	}
	if v.Primary != primary || len(v.Members) != 2 {
		t.Errorf("after the changes: primary %s of %d members; want %s of 2, never changed", v.Primary, len(v.Members), primary)
	}
	for _, m := range v.Members {
		if m.Timeline != 1 {
			t.Errorf("%s on timeline %d: the shape changes caused a failover", m.ID, m.Timeline)
		}
	}

	// Bad requests change nothing and say why.
	for _, tt := range []struct {
		what string
		call func() error
		want string
	}{
		{"remove the primary", func() error { _, err := c.RemoveMember(ctx, "shape", primary); return err }, "switch over"},
		{"remove the last standby in sync mode", func() error {
			for _, m := range v.Members {
				if m.ID != primary {
					_, err := c.RemoveMember(ctx, "shape", m.ID)
					return err
				}
			}
			return nil
		}, "last standby"},
		{"remove a member it does not have", func() error { _, err := c.RemoveMember(ctx, "shape", "shape-20"); return err }, "has no member shape-20"},
		{"a replica in the primary region", func() error { _, err := c.AddReplica(ctx, "shape", "iad"); return err }, "primary region"},
		{"a replica where no host runs", func() error { _, err := c.AddReplica(ctx, "shape", "syd"); return err }, "no running host"},
		{"ha 0", func() error { _, err := c.SetHA(ctx, "shape", 0); return err }, "1 to 9"},
		{"ha past the region's hosts", func() error { _, err := c.SetHA(ctx, "shape", 4); return err }, "add hosts to iad"},
	} {
		if err := tt.call(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v; want refused, saying %q", tt.what, err, tt.want)
		}
	}
	if v2, err := c.Cluster(ctx, "shape"); err != nil || len(v2.Members) != 2 || v2.Primary != primary {
		t.Errorf("after the bad requests: %d members, primary %s, %v; want unchanged", len(v2.Members), v2.Primary, err)
	}
}

// waitShape waits until cluster name has n members, all healthy and
// caught up, and returns it.
func waitShape(t *testing.T, c *api.Client, name string, n int) api.ClusterView {
	t.Helper()
	var v api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, fmt.Sprintf("cluster %s ready with %d members", name, n), func() (bool, string) {
		var err error
		if v, err = c.Cluster(context.Background(), name); err != nil {
			return false, err.Error()
		}
		ok, why := clusterReady(v)
		return ok && len(v.Members) == n, why
	})
	return v
}

// countRows counts the rows of items on one member, directly.
func countRows(t *testing.T, c *api.Client, cluster, member string) int {
	t.Helper()
	var n int
	if err := connectMember(t, c, cluster, member).QueryRow(context.Background(), "SELECT count(*) FROM items").Scan(&n); err != nil {
		t.Fatalf("count on %s: %v", member, err)
	}
	return n
}

// memberGone waits until removed member m has left the cluster, its slot
// the primary and its data its host.
func memberGone(t *testing.T, f *labtest.Fleet, c *api.Client, slots func() []string, m fleet.MemberSpec) {
	t.Helper()
	dir := filepath.Join(f.DataDir(m.Host), "members", m.ID)
	labtest.WaitFor(t, time.Minute, m.ID+" gone: from the cluster, its slot and its data", func() (bool, string) {
		v, err := c.Cluster(context.Background(), m.Cluster)
		if err != nil {
			return false, err.Error()
		}
		inCluster := slices.ContainsFunc(v.Members, func(x api.MemberView) bool { return x.ID == m.ID })
		slot := slices.Contains(slots(), postgres.SlotName(m.ID))
		_, err = os.Stat(dir)
		data := !errors.Is(err, fs.ErrNotExist)
		return !inCluster && !slot && !data, fmt.Sprintf("in the cluster %v, slot %v, data dir %v", inCluster, slot, data)
	})
}
