package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestMissingKeyKeepsData: a member whose key vanishes from the store
// without a destroy (a restored snapshot, a stray delete) stops and keeps
// its data, and says so in an event; a real destroy, recorded as a
// tombstone, deletes the data of every member, the one that vanished
// before included.
func TestMissingKeyKeepsData(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two agents and two postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "db", PrimaryRegion: "iad", HA: ptr(2)}); err != nil {
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
	var standby api.MemberView
	for _, m := range v.Members {
		if m.ID != v.Primary {
			standby = m
		}
	}
	dataOf := func(m api.MemberView) string {
		return filepath.Join(f.DataDir(m.Host), "members", m.ID)
	}
	pgVersion := filepath.Join(dataOf(standby), "pgdata", "PG_VERSION")

	// A stray delete of the standby's placement.
	st := f.Store(f.Plan.Hosts[0].Name)
	if _, err := st.Client().Delete(ctx, "/pgfleet/clusters/db/members/"+standby.ID+"/spec"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, time.Minute, "a vanished event for "+standby.ID, func() (bool, string) {
		evs, err := c.Events(ctx, "db", 50)
		if err != nil {
			return false, err.Error()
		}
		var last string
		for _, e := range evs {
			last = e.Kind + ": " + e.Message
			if e.Kind == "vanished" && e.Member == standby.ID {
				return true, ""
			}
		}
		return false, "last event " + last
	})
	if _, err := os.Stat(pgVersion); err != nil {
		t.Fatalf("the vanished member's data is gone: %v", err)
	}
	labtest.WaitFor(t, 30*time.Second, "the vanished member's postgres stopped", func() (bool, string) {
		b, err := os.ReadFile(filepath.Join(dataOf(standby), "pgdata", "postmaster.pid"))
		if err != nil {
			return true, ""
		}
		return false, "postmaster.pid: " + strings.SplitN(string(b), "\n", 2)[0]
	})

	// A destroy is an order: every member's data goes.
	if err := c.Destroy(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 90*time.Second, "every member's data deleted", func() (bool, string) {
		var left []string
		for _, m := range v.Members {
			if _, err := os.Stat(dataOf(m)); err == nil {
				left = append(left, m.ID)
			}
		}
		return len(left) == 0, fmt.Sprintf("data left of %v", left)
	})
}
