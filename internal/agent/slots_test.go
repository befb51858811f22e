package agent_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestOrphanSlotDropped removes a member from the spec while its host's
// agent is down: the primary drops its replication slot within a minute,
// and a slot made for a member number the cluster never had, but keeps the
// remaining standby's slot and a slot that is not a member's. Every slot's
// WAL is bounded by max_slot_wal_keep_size meanwhile.
func TestOrphanSlotDropped(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three agents and three postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2,ams")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "db", PrimaryRegion: "iad", HA: ptr(2), Replicas: []string{"ams"}}); err != nil {
		t.Fatal(err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 2*time.Minute, "cluster db ready", func() (bool, string) {
		var err error
		if v, err = c.Cluster(ctx, "db"); err != nil {
			return false, err.Error()
		}
		return clusterReady(v)
	})
	u, err := c.URL(ctx, "db", "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, u.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var keep string
	if err := conn.QueryRow(ctx, "SHOW max_slot_wal_keep_size").Scan(&keep); err != nil || keep != "2GB" {
		t.Errorf("max_slot_wal_keep_size = %q, %v; want 2GB by default", keep, err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot('db_9', true), pg_create_physical_replication_slot('cdc', true)"); err != nil {
		t.Fatal(err)
	}
	var replica api.MemberView
	for _, m := range v.Members {
		if m.Region == "ams" {
			replica = m
		}
	}
	f.Stop(replica.Host)
	st := f.Store(f.Plan.Hosts[0].Name)
	// The store may be settling after losing a voter.
	labtest.WaitFor(t, 30*time.Second, "the member's spec deleted", func() (bool, string) {
		dctx, cancel := context.WithTimeout(ctx, 4*time.Second)
		defer cancel()
		_, err := st.Client().Delete(dctx, "/pgfleet/clusters/db/members/"+replica.ID+"/spec")
		return err == nil, fmt.Sprint(err)
	})
	removed := time.Now()
	labtest.WaitFor(t, time.Minute, "the removed member's slot dropped on the primary", func() (bool, string) {
		rows, err := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots ORDER BY 1")
		if err != nil {
			return false, err.Error()
		}
		slots, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return false, err.Error()
		}
		gone := !slices.Contains(slots, "db_3") && !slices.Contains(slots, "db_9")
		return gone, fmt.Sprintf("slots %v", slots)
	})
	t.Logf("slot dropped %s after the member was removed", time.Since(removed).Round(100*time.Millisecond))
	rows, _ := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots ORDER BY 1")
	slots, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	if got := strings.Join(slots, ","); got != "cdc,db_2" {
		t.Errorf("slots left on the primary = %s; want the standby's (db_2) and the one that is no member's (cdc)", got)
	}
	// Events are written in the background, each retried while the store
	// settles after losing a host.
	labtest.WaitFor(t, 30*time.Second, "a slot-dropped event for db_3 and one for db_9, saying why", func() (bool, string) {
		evs, err := c.Events(ctx, "db", 200)
		if err != nil {
			return false, err.Error()
		}
		var dropped []string
		for _, e := range evs {
			if e.Kind == "slot-dropped" {
				dropped = append(dropped, e.Message)
			}
		}
		all := strings.Join(dropped, "\n")
		return len(dropped) == 2 && strings.Contains(all, "db-3 is no longer a member") && strings.Contains(all, "db_9"), fmt.Sprintf("%q", dropped)
	})
}
