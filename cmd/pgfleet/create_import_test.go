package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestCreateImport makes a cluster born with a copy of a database of a
// PostgreSQL outside pgfleet (`create --import-from`), and checks that a
// source that cannot be reached, or refuses the password, is reported
// within seconds with nothing created.
func TestCreateImport(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an agent and two postgres instances")
	}
	f := labtest.StartFleet(t, "iad")
	ctx := context.Background()
	source := startSourcePG(t, "replica")
	admin := labtest.Connect(t, source)
	for _, db := range []string{"shop", `"Shop Old"`} {
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+db); err != nil {
			t.Fatal(err)
		}
	}
	from := withDB(source, "shop")
	src := labtest.Connect(t, from)
	for _, s := range []string{
		"CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)",
		"INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 4000) g",
		"CREATE TABLE notes (body text)",
		"INSERT INTO notes SELECT 'n' || g FROM generate_series(1, 700) g",
	} {
		if _, err := src.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}

	for _, tt := range []struct {
		name, from, want string
	}{
		{"nothing listens", "postgres://postgres:x@127.0.0.1:1/shop", "connect to the source"},
		{"wrong password", withUser(t, source, "postgres", "wrong", "shop"), "password authentication failed"},
		{"a database name the cluster cannot hold", withDB(source, "Shop Old"), `database name "Shop Old" is not valid`},
	} {
		start := time.Now()
		_, _, err := inFleet(t, f, "create", "bad", "--primary-region", "iad", "--backup-store", "none", "--import-from", tt.from)
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "nothing created") {
			t.Errorf("%s: %v; want an error with %q that says nothing was created", tt.name, err, tt.want)
		}
		if took > 5*time.Second {
			t.Errorf("%s: answered after %s; want under 5 s", tt.name, took.Round(time.Millisecond))
		}
		if _, err := f.Client.Cluster(ctx, "bad"); !api.IsNotFound(err) {
			t.Errorf("%s: cluster bad after the refusal: %v; want not found", tt.name, err)
		}
	}

	out, stderr, err := inFleet(t, f, "create", "shop", "--primary-region", "iad", "--backup-store", "none", "--import-from", from)
	if err != nil {
		t.Fatalf("create --import-from: %v\n%s\n%s", err, out, stderr)
	}
	t.Logf("create --import-from:\n%s%s", out, stderr)
	if !strings.Contains(out, "every table's row count matches") {
		t.Errorf("create --import-from's summary:\n%s", out)
	}
	if strings.Contains(out+stderr, passwordOf(t, source)) {
		t.Error("create --import-from printed the source's password")
	}
	dst := labtest.Connect(t, withDB(primaryURL(t, f.Client, "shop"), "shop"))
	for table, want := range map[string]int{"orders": 4000, "notes": 700} {
		var n int
		if err := dst.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != want {
			t.Errorf("%s in cluster shop: %d rows (%v), want %d", table, n, err, want)
		}
	}
}
