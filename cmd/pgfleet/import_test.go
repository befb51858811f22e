package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestImport copies a database with its owner role, tables of every kind
// and a sequence from one real Postgres (a cluster of the fleet) into
// another cluster with `pgfleet import`, then checks what a user would:
// the app logs in with its old password and finds its rows; a second
// import is refused until --clean; bad sources fail fast with the reason.
func TestImport(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an agent and two postgres instances")
	}
	f := labtest.StartFleet(t, "iad")
	ctx := context.Background()
	c := f.Client
	for _, n := range []string{"old", "new"} {
		if _, err := c.Create(ctx, api.CreateRequest{Name: n, PrimaryRegion: "iad", BackupStore: "none"}); err != nil {
			t.Fatal(err)
		}
	}
	var srcURL string
	for _, n := range []string{"old", "new"} {
		var v api.ClusterView
		labtest.WaitFor(t, 2*time.Minute, "cluster "+n+" ready", func() (bool, string) {
			var err error
			if v, err = c.Cluster(ctx, n); err != nil {
				return false, err.Error()
			}
			return v.Primary != "" && len(v.Members) == 1 && v.Members[0].Healthy, v.Primary
		})
		if n == "old" {
			u, err := c.URL(ctx, n, v.Primary)
			if err != nil {
				t.Fatal(err)
			}
			srcURL = u.URL
		}
	}
	// The source: an app role owning a database with a few kinds of table.
	admin := labtest.Connect(t, srcURL)
	for _, s := range []string{
		"CREATE ROLE shop LOGIN PASSWORD 'shop-secret-1'",
		"CREATE DATABASE shop OWNER shop",
	} {
		if _, err := admin.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	shopSrc := withUser(t, srcURL, "shop", "shop-secret-1", "shop")
	app := labtest.Connect(t, shopSrc)
	for _, s := range []string{
		"CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, placed timestamptz DEFAULT now())",
		"INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 5000) g",
		`CREATE TABLE "Order Lines" (order_id bigint REFERENCES orders, qty int)`,
		`INSERT INTO "Order Lines" SELECT g, g % 7 FROM generate_series(1, 3000) g`,
		"CREATE TABLE events (at date, what text) PARTITION BY RANGE (at)",
		"CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
		"INSERT INTO events SELECT '2026-01-01'::date + g % 300, 'e' FROM generate_series(1, 1000) g",
		"CREATE VIEW big_orders AS SELECT * FROM orders WHERE id > 4000",
	} {
		if _, err := app.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	app.Close(ctx)

	out, stderr, err := inFleet(t, f, "import", "new", "--from", withUser(t, srcURL, "postgres", passwordOf(t, srcURL), "shop"), "--jobs", "2")
	if err != nil {
		t.Fatalf("import: %v\n%s\n%s", err, out, stderr)
	}
	t.Logf("import:\n%s%s", out, stderr)
	if !strings.Contains(out, "every table's row count matches") || !strings.Contains(out, `public."Order Lines"`) {
		t.Errorf("import's summary:\n%s", out)
	}
	// The summary's counts are the tables' true rows (events: its
	// partition's), on both sides.
	for _, line := range []string{`public."Order Lines" +3000 +3000\n`, `public.events +1000 +1000\n`, `public.orders +5000 +5000\n`} {
		if !regexp.MustCompile(line).MatchString(out) {
			t.Errorf("import's summary has no line %q:\n%s", line, out)
		}
	}
	if strings.Contains(out+stderr, "shop-secret-1") || strings.Contains(out+stderr, passwordOf(t, srcURL)) {
		t.Error("the import printed a password")
	}

	// The app, with its old password, on the new cluster.
	v, err := c.Cluster(ctx, "new")
	if err != nil {
		t.Fatal(err)
	}
	nu, err := c.URL(ctx, "new", v.Primary)
	if err != nil {
		t.Fatal(err)
	}
	moved := labtest.Connect(t, withUser(t, nu.URL, "shop", "shop-secret-1", "shop"))
	for table, want := range map[string]int{"orders": 5000, `"Order Lines"`: 3000, "events": 1000, "big_orders": 1000} {
		var n int
		if err := moved.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != want {
			t.Errorf("%s on the new cluster: %d rows (%v), want %d", table, n, err, want)
		}
	}
	var owner string
	if err := moved.QueryRow(ctx, "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'").Scan(&owner); err != nil || owner != "shop" {
		t.Errorf("orders is owned by %q (%v), want shop", owner, err)
	}
	// The sequence goes on from where the source left it.
	var id int64
	if err := moved.QueryRow(ctx, "INSERT INTO orders (item) VALUES ('after') RETURNING id").Scan(&id); err != nil || id != 5001 {
		t.Errorf("a new order got id %d (%v), want 5001", id, err)
	}
	var super bool
	if err := moved.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = 'shop'").Scan(&super); err != nil || super {
		t.Errorf("role shop: superuser %v (%v), want a plain role", super, err)
	}
	moved.Close(ctx)

	from := withUser(t, srcURL, "postgres", passwordOf(t, srcURL), "shop")
	if _, _, err := inFleet(t, f, "import", "new", "--from", from); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("a second import without --clean: %v; want refused, the database holds tables", err)
	}
	if out, stderr, err := inFleet(t, f, "import", "new", "--from", from, "--clean"); err != nil {
		t.Errorf("import --clean: %v\n%s\n%s", err, out, stderr)
	}

	for _, tt := range []struct {
		name, from, want string
	}{
		{"nothing listens", "postgres://postgres:x@127.0.0.1:1/shop", "connect to the source"},
		{"wrong password", withUser(t, srcURL, "shop", "wrong", "shop"), "password authentication failed"},
		{"not a URL", "mysql://h/db", "not a postgres:// URL"},
	} {
		start := time.Now()
		_, _, err := inFleet(t, f, "import", "new", "--from", tt.from)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v; want an error with %q", tt.name, err, tt.want)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s: answered after %s; want under 5 s", tt.name, took.Round(time.Millisecond))
		}
	}
}

// passwordOf returns the password of a URL the API gave.
func passwordOf(t *testing.T, rawURL string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Password
}
