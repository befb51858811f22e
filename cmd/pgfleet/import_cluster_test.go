package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestImportOnlineFromCluster imports online from another cluster of the
// fleet with the URL `pgfleet url` prints, whose sslrootcert is the CLI's
// copy of the fleet's CA (a file the cluster's postgres cannot read): the
// subscription verifies the source with each member's own copy instead,
// keeps streaming through a switchover of the target, and the cutover
// brings every row.
func TestImportOnlineFromCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet with two clusters")
	}
	ctx := context.Background()
	f := labtest.StartFleet(t, "iad:2")
	c := f.Client
	one, two := 1, 2
	if _, err := c.Create(ctx, api.CreateRequest{Name: "old", PrimaryRegion: "iad", HA: &one, BackupStore: "none", Params: map[string]string{"wal_level": "logical"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, api.CreateRequest{Name: "new", PrimaryRegion: "iad", HA: &two, BackupStore: "none"}); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 3*time.Minute, "both clusters have a primary, new a streaming standby", func() (bool, string) {
		o, err := c.Cluster(ctx, "old")
		if err != nil {
			return false, err.Error()
		}
		n, err := c.Cluster(ctx, "new")
		if err != nil {
			return false, err.Error()
		}
		healthy := 0
		for _, m := range n.Members {
			if m.Healthy {
				healthy++
			}
		}
		return o.Primary != "" && n.Primary != "" && healthy == 2, fmt.Sprintf("old primary %q, new primary %q with %d healthy", o.Primary, n.Primary, healthy)
	})
	from, _, err := inFleet(t, f, "url", "old")
	if err != nil {
		t.Fatal(err)
	}
	from = strings.TrimSpace(from)
	if !strings.Contains(from, "sslrootcert=") {
		t.Fatalf("pgfleet url old = %s; want a URL naming the fleet's CA", from)
	}
	src := labtest.Connect(t, from)
	for _, s := range []string{
		"CREATE TABLE invoices (id serial PRIMARY KEY, amount int)",
		"INSERT INTO invoices (amount) SELECT g FROM generate_series(1, 1000) g",
	} {
		if _, err := src.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}

	out, stderr, err := inFleet(t, f, "import", "new", "--online", "--from", from)
	t.Logf("import --online:\n%s%s", out, stderr)
	if err != nil {
		t.Fatalf("import --online from another cluster of the fleet: %v", err)
	}
	dst := labtest.Connect(t, primaryURL(t, c, "new"))
	var conninfo string
	if err := dst.QueryRow(ctx, "SELECT subconninfo FROM pg_subscription").Scan(&conninfo); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(conninfo, "sslrootcert=..%2Froot.crt") && !strings.Contains(conninfo, "sslrootcert=../root.crt") {
		t.Errorf("the subscription's conninfo names %s; want every member's own CA, ../root.crt", between(conninfo, "sslrootcert=", "&"))
	}
	dst.Close(ctx)
	streaming := func(what string) {
		t.Helper()
		labtest.WaitFor(t, 2*time.Minute, what, func() (bool, string) {
			out, stderr, err := inFleet(t, f, "import", "new", "--status", "--from", from)
			return err == nil && strings.Contains(out, "streaming, all 1 table(s) copied; lag 0 B"), out + stderr
		})
	}
	streaming("the initial copy ends and the subscription streams")

	var v api.ClusterView
	labtest.WaitFor(t, 2*time.Minute, "new's standby streams, for the switchover", func() (bool, string) {
		var err error
		v, err = c.Cluster(ctx, "new")
		if err != nil {
			return false, err.Error()
		}
		var states []string
		for _, m := range v.Members {
			states = append(states, m.ID+" "+string(m.State))
			if m.ID != v.Primary && m.State == fleet.StateStreaming && m.Healthy && m.LagBytes >= 0 {
				return true, ""
			}
		}
		return false, strings.Join(states, ", ")
	})
	if _, err := c.Switchover(ctx, "new", ""); err != nil {
		t.Fatalf("switchover: %v", err)
	}
	labtest.WaitFor(t, 2*time.Minute, "another member of new is primary", func() (bool, string) {
		n, err := c.Cluster(ctx, "new")
		if err != nil {
			return false, err.Error()
		}
		return n.Primary != "" && n.Primary != v.Primary, n.Primary
	})
	if _, err := src.Exec(ctx, "INSERT INTO invoices (amount) SELECT g FROM generate_series(1, 500) g"); err != nil {
		t.Fatal(err)
	}
	streaming("the new primary's subscription streams the rows written after the switchover")

	out, stderr, err = inFleet(t, f, "import", "new", "--cutover", "--lock-source", "--from", from)
	t.Logf("import --cutover:\n%s%s", out, stderr)
	if err != nil {
		t.Fatalf("import --cutover: %v", err)
	}
	dst = labtest.Connect(t, primaryURL(t, c, "new"))
	var n int
	if err := dst.QueryRow(ctx, "SELECT count(*) FROM invoices").Scan(&n); err != nil || n != 1500 {
		t.Errorf("after the cutover the cluster holds %d invoices (%v); want all 1500", n, err)
	}
}
