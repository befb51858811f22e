package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// reconnectingApp writes one row per transaction on a new connection
// through the routing proxy, as an app without a pool does, and records
// every id acknowledged and every failure.
type reconnectingApp struct {
	url     string
	mu      sync.Mutex
	acked   []int
	failed  []string
	slowest time.Duration // the longest a transaction took, connection included: the write pause
	stop    chan struct{}
	stopped chan struct{}
}

func startReconnectingApp(url string) *reconnectingApp {
	a := &reconnectingApp{url: url, stop: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(a.stopped)
		for {
			select {
			case <-a.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			t0 := time.Now()
			id, err := insertReturning(ctx, a.url)
			cancel()
			a.mu.Lock()
			a.slowest = max(a.slowest, time.Since(t0))
			if err != nil {
				a.failed = append(a.failed, err.Error())
			} else {
				a.acked = append(a.acked, id)
			}
			a.mu.Unlock()
		}
	}()
	return a
}

// halt stops the app and checks what it saw during what: no failed
// transaction. It returns the ids acknowledged.
func (a *reconnectingApp) halt(t *testing.T, during string) []int {
	t.Helper()
	close(a.stop)
	<-a.stopped
	t.Logf("the app committed %d transactions during %s, %d failed; the slowest took %s", len(a.acked), during, len(a.failed), a.slowest.Round(time.Millisecond))
	if len(a.failed) > 0 {
		t.Errorf("%d of the app's transactions failed during %s; first: %s", len(a.failed), during, a.failed[0])
	}
	return a.acked
}

func insertReturning(ctx context.Context, url string) (int, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var id int
	err = conn.QueryRow(ctx, "INSERT INTO w DEFAULT VALUES RETURNING id").Scan(&id)
	return id, err
}

// TestMove moves a cluster with a primary and a standby in iad to ams
// under an app that opens a new connection through the proxy for every
// transaction: no transaction fails, every acknowledged row is there, the
// primary and a standby are in ams and iad's members are read replicas;
// a failover then elects in ams. Then it moves back with --drop-old: iad's
// replicas become standbys again without a clone, and ams's members are
// removed, their slots dropped on the new primary. Bad requests are
// refused with the reason and change nothing.
func TestMove(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four agents and up to four postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2,ams:2")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "mv", PrimaryRegion: "iad", HA: ptrInt(2), BackupStore: "none"}); err != nil {
		t.Fatal(err)
	}
	ready := func(what string, ok func(v api.ClusterView) (bool, string)) api.ClusterView {
		t.Helper()
		var v api.ClusterView
		labtest.WaitFor(t, 3*time.Minute, what, func() (bool, string) {
			var err error
			if v, err = c.Cluster(ctx, "mv"); err != nil {
				return false, err.Error()
			}
			return ok(v)
		})
		return v
	}
	v := ready("cluster mv ready", func(v api.ClusterView) (bool, string) {
		return v.Primary != "" && healthyMembers(v) == 2, fmt.Sprintf("primary %q, %d of %d healthy", v.Primary, healthyMembers(v), len(v.Members))
	})
	iad := memberIDs(v)

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--primary-region", "syd"}, `unknown region "syd"`},
		{[]string{"--primary-region", "Bad Region"}, "--primary-region"},
		{[]string{"--reverse"}, "no move under way to reverse"},
		{[]string{}, "say where the primary goes"},
	} {
		_, _, err := inFleet(t, f, append([]string{"move", "mv"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("move mv %v: %v; want refused, saying %q", tt.args, err, tt.want)
		}
	}
	if out, _, err := inFleet(t, f, "move", "mv", "--primary-region", "iad"); err != nil || !strings.Contains(out, "nothing to do") {
		t.Errorf("move mv --primary-region iad: %v\n%s; want nothing to do", err, out)
	}
	if v2, err := c.Cluster(ctx, "mv"); err != nil || len(v2.Members) != 2 || v2.PrimaryRegion != "iad" {
		t.Fatalf("after the bad requests: %+v, %v; want unchanged", v2, err)
	}

	pu, err := c.ClusterURL(ctx, "mv", api.URLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := labtest.Connect(t, pu.URL).Exec(ctx, "CREATE TABLE w (id serial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}

	// A move interrupted while its standbys clone, then reversed: the
	// members it placed in ams are removed, and iad is as it was.
	out, _, err := inFleet(t, f, "move", "mv", "--primary-region", "ams", "--timeout", "2s")
	if err == nil || !strings.Contains(err.Error(), "run the same command again to resume") {
		t.Fatalf("move cut short by --timeout 2s: %v\n%s; want it to say how to resume", err, out)
	}
	if _, _, err := inFleet(t, f, "replica", "add", "mv", "--region", "ams"); err == nil || !strings.Contains(err.Error(), "a move of mv from iad to ams is under way") {
		t.Errorf("replica add during a move: %v; want refused", err)
	}
	out, stderr, err := inFleet(t, f, "move", "mv", "--reverse")
	t.Logf("move reversed:\n%s", out)
	if err != nil {
		t.Fatalf("move --reverse: %v\n%s", err, stderr)
	}
	ready("mv as before the reversed move", func(v api.ClusterView) (bool, string) {
		return v.PrimaryRegion == "iad" && slices.Equal(memberIDs(v), iad) && healthyMembers(v) == 2 && regionOf(v, v.Primary) == "iad",
			fmt.Sprintf("primary region %s, primary %s, members %v", v.PrimaryRegion, v.Primary, memberIDs(v))
	})

	// iad to ams, interrupted and resumed, keeping iad's members as read
	// replicas.
	app := startReconnectingApp(pu.URL)
	start := time.Now()
	if _, _, err := inFleet(t, f, "move", "mv", "--primary-region", "ams", "--timeout", "2s"); err == nil {
		t.Fatalf("move cut short by --timeout 2s succeeded")
	}
	out, stderr, err = inFleet(t, f, "move", "mv", "--primary-region", "ams")
	took := time.Since(start)
	acked := app.halt(t, "the move")
	t.Logf("move to ams, resumed, in %s:\n%s", took.Round(100*time.Millisecond), out)
	if err != nil {
		t.Fatalf("move --primary-region ams: %v\n%s", err, stderr)
	}
	logEvents(t, c, "mv", start)
	for _, step := range []string{"switch over from", "ams is the primary region", "done"} {
		if !strings.Contains(out, step) {
			t.Errorf("move printed no step saying %q", step)
		}
	}
	v = ready("mv in ams, iad's members read replicas", func(v api.ClusterView) (bool, string) {
		var got []string
		ok := v.PrimaryRegion == "ams" && len(v.Members) == 4 && healthyMembers(v) == 4
		for _, m := range v.Members {
			got = append(got, fmt.Sprintf("%s %s %s %s", m.ID, m.Region, m.Role, m.State))
			switch {
			case m.ID == v.Primary:
				ok = ok && m.Region == "ams"
			case m.Region == "iad":
				ok = ok && m.Role == fleet.RoleReplica
			default:
				ok = ok && m.Role == fleet.RoleStandby
			}
		}
		return ok, fmt.Sprintf("primary region %s, primary %s: %s", v.PrimaryRegion, v.Primary, strings.Join(got, "; "))
	})
	if !slices.Equal(v.Replicas, []string{"iad"}) || v.HA != 2 {
		t.Errorf("after the move: ha %d, replicas %v; want 2, [iad]", v.HA, v.Replicas)
	}
	missing := missingRows(t, c, v.Primary, acked)
	if len(missing) > 0 {
		t.Errorf("%d acknowledged rows missing after the move: %v", len(missing), missing[:min(10, len(missing))])
	}
	events, err := c.Events(ctx, "mv", 200)
	if err != nil {
		t.Fatal(err)
	}
	moves := 0
	for _, e := range events {
		if e.Kind == "move" {
			moves++
		}
	}
	if moves < 3 {
		t.Errorf("%d move events; want one for each step written", moves)
	}

	// Elections follow the new primary region.
	old := v.Primary
	if err := c.Failover(ctx, "mv"); err != nil {
		t.Fatalf("failover: %v", err)
	}
	v = ready("a new primary after the failover", func(v api.ClusterView) (bool, string) {
		for _, m := range v.Members {
			if m.ID == v.Primary && m.ID != old && m.State == fleet.StateRunning {
				return true, ""
			}
		}
		return false, fmt.Sprintf("primary %q", v.Primary)
	})
	if r := regionOf(v, v.Primary); r != "ams" {
		t.Errorf("the failover elected %s in %s; want a member in ams", v.Primary, r)
	}

	// Back to iad, dropping ams's members.
	ams := slices.DeleteFunc(memberIDs(v), func(id string) bool { return slices.Contains(iad, id) })
	v = ready("every member streaming again", func(v api.ClusterView) (bool, string) {
		return healthyMembers(v) == 4, fmt.Sprintf("%d of 4 healthy", healthyMembers(v))
	})
	app = startReconnectingApp(pu.URL)
	out, stderr, err = inFleet(t, f, "move", "mv", "--primary-region", "iad", "--drop-old")
	acked2 := app.halt(t, "the move back")
	t.Logf("move back to iad with --drop-old:\n%s", out)
	if err != nil {
		t.Fatalf("move --primary-region iad --drop-old: %v\n%s", err, stderr)
	}
	if strings.Contains(out, "placed in iad") {
		t.Errorf("the move back placed new members in iad, where its replicas were:\n%s", out)
	}
	v = ready("mv back in iad, ams's members gone", func(v api.ClusterView) (bool, string) {
		got := memberIDs(v)
		return v.PrimaryRegion == "iad" && regionOf(v, v.Primary) == "iad" && slices.Equal(got, iad) && healthyMembers(v) == 2,
			fmt.Sprintf("primary region %s, primary %s, members %v", v.PrimaryRegion, v.Primary, got)
	})
	if len(v.Replicas) != 0 {
		t.Errorf("after dropping ams: replicas %v; want none", v.Replicas)
	}
	u, err := c.URL(ctx, "mv", v.Primary)
	if err != nil {
		t.Fatal(err)
	}
	conn := labtest.Connect(t, u.URL)
	labtest.WaitFor(t, time.Minute, "the dropped members' slots gone from the primary", func() (bool, string) {
		rows, err := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots ORDER BY 1")
		if err != nil {
			return false, err.Error()
		}
		slots, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return false, err.Error()
		}
		for _, id := range ams {
			if slices.Contains(slots, postgres.SlotName(id)) {
				return false, fmt.Sprintf("slots %v", slots)
			}
		}
		return true, ""
	})
	if missing := missingRows(t, c, v.Primary, append(acked, acked2...)); len(missing) > 0 {
		t.Errorf("%d acknowledged rows missing after the move back: %v", len(missing), missing[:min(10, len(missing))])
	}
}

func memberIDs(v api.ClusterView) []string {
	var ids []string
	for _, m := range v.Members {
		ids = append(ids, m.ID)
	}
	slices.Sort(ids)
	return ids
}

func regionOf(v api.ClusterView, id string) string {
	for _, m := range v.Members {
		if m.ID == id {
			return m.Region
		}
	}
	return ""
}

// missingRows lists the acknowledged ids that member's table w lacks.
func missingRows(t *testing.T, c *api.Client, member string, acked []int) []int {
	t.Helper()
	ctx := context.Background()
	u, err := c.URL(ctx, "mv", member)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := labtest.Connect(t, u.URL).Query(ctx, "SELECT id FROM w")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	have := map[int]bool{}
	for _, id := range ids {
		have[id] = true
	}
	var missing []int
	for _, id := range acked {
		if !have[id] {
			missing = append(missing, id)
		}
	}
	return missing
}

// TestMoveSync moves a cluster in sync mode from iad to ams under an app
// reconnecting per transaction: the old region's standbys leave the sync
// set before they stop being electable, no transaction fails, no
// acknowledged row is lost, and the sync set ends in ams.
func TestMoveSync(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four agents and four postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2,ams:2")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "mv", PrimaryRegion: "iad", HA: ptrInt(2), Sync: fleet.SyncOn, BackupStore: "none"}); err != nil {
		t.Fatal(err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, "cluster mv ready, in sync", func() (bool, string) {
		var err error
		if v, err = c.Cluster(ctx, "mv"); err != nil {
			return false, err.Error()
		}
		return v.Primary != "" && healthyMembers(v) == 2 && len(v.SyncStandbys) == 1, fmt.Sprintf("primary %q, %d healthy, sync set %v", v.Primary, healthyMembers(v), v.SyncStandbys)
	})
	pu, err := c.ClusterURL(ctx, "mv", api.URLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := labtest.Connect(t, pu.URL).Exec(ctx, "CREATE TABLE w (id serial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	app := startReconnectingApp(pu.URL)
	start := time.Now()
	out, stderr, err := inFleet(t, f, "move", "mv", "--primary-region", "ams")
	acked := app.halt(t, "the move")
	t.Logf("move to ams in sync mode:\n%s", out)
	if err != nil {
		t.Fatalf("move --primary-region ams: %v\n%s", err, stderr)
	}
	logEvents(t, c, "mv", start)
	if !strings.Contains(out, "leave the sync set") {
		t.Errorf("the move in sync mode printed no step taking iad's members out of the sync set")
	}
	labtest.WaitFor(t, time.Minute, "mv in ams, its sync set there", func() (bool, string) {
		if v, err = c.Cluster(ctx, "mv"); err != nil {
			return false, err.Error()
		}
		ok := v.PrimaryRegion == "ams" && regionOf(v, v.Primary) == "ams" && len(v.SyncStandbys) == 1 && healthyMembers(v) == 4
		for _, id := range v.SyncStandbys {
			ok = ok && regionOf(v, id) == "ams"
		}
		return ok, fmt.Sprintf("primary region %s, primary %s, sync set %v, %d healthy", v.PrimaryRegion, v.Primary, v.SyncStandbys, healthyMembers(v))
	})
	if missing := missingRows(t, c, v.Primary, acked); len(missing) > 0 {
		t.Errorf("%d acknowledged rows missing after the move: %v", len(missing), missing[:min(10, len(missing))])
	}
}

// logEvents logs cluster's events since start, for the record of what a
// move did and how long each part took.
func logEvents(t *testing.T, c *api.Client, cluster string, start time.Time) {
	t.Helper()
	events, err := c.Events(context.Background(), cluster, 500)
	if err != nil {
		t.Logf("events: %v", err)
		return
	}
	var lines []string
	for _, e := range events {
		if e.Time.After(start) {
			lines = append(lines, fmt.Sprintf("%6.2fs %-10s %s", e.Time.Sub(start).Seconds(), e.Kind, e.Message))
		}
	}
	slices.Sort(lines)
	t.Logf("events:\n%s", strings.Join(lines, "\n"))
}
