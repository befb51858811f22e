package agent_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// TestCloneFromRegion moves a cluster whose primary and standby are in iad
// and whose replica is in ams to ams, and stops after the move's first
// step, which turns the replica into a standby and adds another in ams: the
// new member copies its data from the member already in ams, not across
// regions from the primary, then streams from the primary through its own
// slot and receives the rows written after the copy. The primary is left
// with exactly one slot per other member, each in use, and the member
// copied from with no temporary slot.
func TestCloneFromRegion(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four agents and four postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2,ams:2")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "near", PrimaryRegion: "iad", HA: ptr(2), Replicas: []string{"ams"}}); err != nil {
		t.Fatal(err)
	}
	v := waitShape(t, c, "near", 3)
	var first api.MemberView
	for _, m := range v.Members {
		if m.Region == "ams" {
			first = m
		}
	}
	primary := connectMember(t, c, "near", v.Primary)
	if _, err := primary.Exec(ctx, "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}

	mv, err := c.MoveStep(ctx, "near", api.MoveRequest{Region: "ams"})
	if err != nil {
		t.Fatalf("move near --primary-region ams: %v", err)
	}
	if mv.Action != fleet.MoveBegin || mv.Move == nil || len(mv.Move.Added) != 1 {
		t.Fatalf("the move's first step: %s %q, %+v; want it to add one standby in ams", mv.Action, mv.Step, mv.Move)
	}
	added := mv.Move.Added[0]
	v = waitShape(t, c, "near", 4)

	// The clone event names the replica in ams as the source.
	evs, err := c.Events(ctx, "near", 200)
	if err != nil {
		t.Fatal(err)
	}
	var clones []string
	for _, e := range evs {
		if e.Kind == "clone" && e.Member == added {
			clones = append(clones, e.Message)
		}
	}
	t.Logf("clone events of %s: %q", added, clones)
	want := fmt.Sprintf("cloning %s from %s ", added, first.ID)
	if len(clones) != 1 || !strings.HasPrefix(clones[0], want) {
		t.Errorf("clone events of %s: %q; want one saying %q", added, clones, want)
	}

	// It streams from the primary, through its own slot.
	var paddr string
	for _, m := range v.Members {
		if m.ID == v.Primary {
			paddr = m.Addr
		}
	}
	phost, pport, _ := net.SplitHostPort(paddr)
	conn := connectMember(t, c, "near", added)
	var host, slot, status string
	var port int
	if err := conn.QueryRow(ctx, "SELECT sender_host, sender_port, slot_name, status FROM pg_stat_wal_receiver").Scan(&host, &port, &slot, &status); err != nil {
		t.Fatalf("read %s's WAL receiver: %v", added, err)
	}
	if host != phost || strconv.Itoa(port) != pport || slot != postgres.SlotName(added) || status != "streaming" {
		t.Errorf("%s receives WAL from %s:%d through slot %q (%s); want from the primary %s through %q, streaming", added, host, port, slot, status, paddr, postgres.SlotName(added))
	}

	// Rows written after the copy reach it.
	if _, err := primary.Exec(ctx, "INSERT INTO items SELECT g FROM generate_series(101, 150) g"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, time.Minute, "the rows written after the clone on "+added, func() (bool, string) {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
			return false, err.Error()
		}
		return n == 150, fmt.Sprintf("%d rows", n)
	})

	// No orphan slot: one per other member on the primary, each in use,
	// and none left behind on the replica the copy came from.
	labtest.WaitFor(t, 30*time.Second, "the primary's slots: one per standby, each in use", func() (bool, string) {
		rows, err := primary.Query(ctx, "SELECT slot_name || CASE WHEN active THEN '' ELSE ' (inactive)' END FROM pg_replication_slots ORDER BY 1")
		if err != nil {
			return false, err.Error()
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return false, err.Error()
		}
		var want []string
		for _, m := range v.Members {
			if m.ID != v.Primary {
				want = append(want, postgres.SlotName(m.ID))
			}
		}
		slices.Sort(want)
		return slices.Equal(got, want), fmt.Sprintf("slots %q", got)
	})
	src := connectMember(t, c, "near", first.ID)
	var temp int
	if err := src.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE temporary OR active").Scan(&temp); err != nil || temp != 0 {
		t.Errorf("%s, copied from, holds %d temporary or active slots (%v); want none", first.ID, temp, err)
	}
}

// connectMember connects to one member of a cluster directly, as the
// superuser; the connection closes with the test.
func connectMember(t *testing.T, c *api.Client, cluster, member string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	u, err := c.URL(ctx, cluster, member)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, u.URL)
	if err != nil {
		t.Fatalf("connect to %s: %v", member, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
