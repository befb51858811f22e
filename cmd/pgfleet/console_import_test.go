package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestConsoleImportMove imports databases from a PostgreSQL outside
// pgfleet into a cluster through the web console, offline and online
// with its cutover, and moves the cluster's primary region by clicking;
// each checked as a user would: rows in the cluster, the primary in the
// new region, the source's password nowhere on the page or in the
// agents' logs, and refusals shown next to the form.
func TestConsoleImportMove(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dev fleet, a postgres and a browser")
	}
	b := newBrowser(t)
	c, dir, netArg := devFleetCLI(t, []string{"iad-1", "ams-1"})
	c.ok("dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad,ams")
	plan, err := (&lab.Dev{Dir: dir}).LoadPlan()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(agent.TokenPath(filepath.Join(dir, "iad-1")))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	base := "https://" + plan.Hosts[0].API()

	// The source: a PostgreSQL of its own, with two databases.
	source := startSourcePG(t, "logical")
	const secret = "source-secret-9" // startSourcePG's
	admin := labtest.Connect(t, source)
	for _, s := range []string{"CREATE DATABASE shop", "CREATE DATABASE live"} {
		if _, err := admin.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	sourceDB := func(db string, stmts ...string) {
		conn := labtest.Connect(t, withDB(source, db))
		for _, s := range stmts {
			if _, err := conn.Exec(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	sourceDB("shop",
		"CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)",
		"INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 3000) g",
		"CREATE TABLE notes (body text)",
		"INSERT INTO notes SELECT 'n' || g FROM generate_series(1, 500) g")
	sourceDB("live",
		"CREATE TABLE visits (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())",
		"INSERT INTO visits SELECT FROM generate_series(1, 200)")
	// The URL as a user types it, the password in its own field.
	su, _ := url.Parse(source)
	su.User = url.User("postgres")
	noPassword := func(db string) string { return withDB(su.String(), db) }

	c.ok("create", "shop", "--primary-region", "iad", "--backup-store", "none", "--wait")
	clusterDB := func(db string) *pgx.Conn {
		return labtest.Connect(t, withDB(strings.TrimSpace(c.ok("url", "shop")), db))
	}
	count := func(conn *pgx.Conn, table string) int {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatalf("count %s: %v", table, err)
		}
		return n
	}

	b.open(base + "/signin")
	b.typeInto("#token", strings.TrimSpace(string(tok)))
	b.click("button[type=submit]")
	b.waitPath("/clusters", 10*time.Second)
	b.open(base + "/clusters/shop")
	b.waitText("#import-h", "Import", 10*time.Second)

	// Refusals, next to the form, within seconds, and nothing imported.
	for _, tt := range []struct{ name, url, password, want string }{
		{"not a URL", "mysql://h/db", "", "not a postgres:// URL"},
		{"nothing listens", "postgres://postgres@127.0.0.1:1/shop", "x", "connect to the source"},
		{"wrong password", noPassword("shop"), "wrong-pass-77", "password authentication failed"},
	} {
		start := time.Now()
		b.typeInto("#import-source", tt.url)
		b.typeInto("#import-password", tt.password)
		b.click("#import-start")
		b.waitText("#import-error", tt.want, 15*time.Second)
		if took := time.Since(start); took > 6*time.Second {
			t.Errorf("%s: refused after %s; want within 5 s", tt.name, took.Round(time.Millisecond))
		}
		if got := b.text("#import-password"); got != "" {
			t.Errorf("%s: the password field came back with %q", tt.name, got)
		}
	}
	if b.text("#import-source") != noPassword("shop") {
		t.Errorf("the source field after a refusal: %q, want %q", b.text("#import-source"), noPassword("shop"))
	}

	// Offline, by keyboard: the URL, the password, Enter.
	b.typeInto("#import-source", noPassword("shop"))
	b.typeInto("#import-password", secret)
	b.key("#import-password", "\r")
	b.waitText(".flash", "Import started", 15*time.Second)
	done := b.waitText("#import-progress", "every table's row count matches", 3*time.Minute)
	if !strings.Contains(done, "public.orders") || !strings.Contains(done, "3000") {
		t.Errorf("the import's summary on the page: %q", done)
	}
	shop := clusterDB("shop")
	if n := count(shop, "orders"); n != 3000 {
		t.Errorf("orders in the cluster: %d rows, want 3000", n)
	}
	if n := count(shop, "notes"); n != 500 {
		t.Errorf("notes in the cluster: %d rows, want 500", n)
	}
	b.shots("import", "#import")

	// Online: replicating, a write on the source arrives, then the cutover
	// with the source locked.
	b.open(base + "/clusters/shop")
	b.typeInto("#import-source", noPassword("live"))
	b.typeInto("#import-password", secret)
	b.click("#import-online")
	b.click("#import-start")
	b.waitText("#import-progress", "streaming, all 1 table(s) copied", 2*time.Minute)
	sourceDB("live", "INSERT INTO visits SELECT FROM generate_series(1, 50)")
	b.shots("import-online", "#import")
	b.click("#import-cutover")
	b.waitText("#import-progress", "cutover done", time.Minute)
	if n := count(clusterDB("live"), "visits"); n != 250 {
		t.Errorf("visits in the cluster after the cutover: %d rows, want 250", n)
	}
	var slots int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots").Scan(&slots); err != nil || slots != 0 {
		t.Errorf("replication slots left on the source: %d (%v), want 0", slots, err)
	}

	// The password is nowhere: not in the page, not in the events, not in
	// the agents' logs.
	if html := b.eval("document.documentElement.outerHTML"); strings.Contains(html, secret) {
		t.Error("the cluster's page holds the source's password")
	}
	if ev := c.ok("events", "shop"); strings.Contains(ev, secret) {
		t.Error("the cluster's events hold the source's password")
	}
	for _, h := range plan.Hosts {
		if log, _ := os.ReadFile(filepath.Join(dir, h.Name+".log")); strings.Contains(string(log), secret) {
			t.Errorf("%s.log holds the source's password", h.Name)
		}
	}

	// Move: a region without hosts is refused on the form; then ams by
	// clicking, and the page shows each step until done.
	b.open(base + "/clusters/shop#move")
	b.eval(`(function(){var s=document.getElementById("move-region");var o=document.createElement("option");o.value="syd";o.text="syd";s.add(o);s.value="syd";return ""})()`)
	b.click("#move-start")
	b.waitText("#move-error", "syd", 15*time.Second)
	// By keyboard: the region, then Enter on the button.
	b.run("choose ams", chromedp.SetValue(chromedp.CSS("#move-region"), "ams"))
	b.key("#move-start", "\r")
	b.waitText(".flash", "Moving the primary to ams", 20*time.Second)
	b.waitText("#move-progress", "Moved", 4*time.Minute)
	steps := b.text("#move-progress")
	if !strings.Contains(steps, "switch") {
		t.Errorf("the move's steps on the page: %q", steps)
	}
	var v api.ClusterView
	if err := json.Unmarshal([]byte(c.ok("status", "shop", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	region := ""
	for _, m := range v.Members {
		if m.ID == v.Primary {
			region = m.Region
		}
	}
	if v.PrimaryRegion != "ams" || region != "ams" {
		t.Errorf("after the move: primary region %q, primary %s in %q; want both ams", v.PrimaryRegion, v.Primary, region)
	}
	// Loaded again, the form offers the way back.
	b.open(base + "/clusters/shop")
	b.waitText("#move", "New primary region (now ams)", 10*time.Second)
	b.waitText("#move-progress", "Moved", 10*time.Second)
	b.shots("move", "#move")
	if n := count(clusterDB("shop"), "orders"); n != 3000 {
		t.Errorf("orders after the move: %d rows, want 3000", n)
	}

	// A move someone else began and left (one step through the API, as a
	// stopped `pgfleet move` leaves it) shows on the page with Resume and
	// Reverse; reversed by clicking, the primary is back in ams and no
	// move is left.
	step := b.eval(fmt.Sprintf(`fetch("/v1/clusters/shop/move",{method:"POST",headers:{"Authorization":"Bearer %s","Content-Type":"application/json"},body:JSON.stringify({region:"iad"})}).then(function(r){return r.text()})`, strings.TrimSpace(string(tok))))
	var mv api.MoveView
	if err := json.Unmarshal([]byte(step), &mv); err != nil || mv.Move == nil || mv.Move.To != "iad" || mv.Done {
		t.Fatalf("one step of a move to iad through the API: %v\n%s", err, step)
	}
	b.open(base + "/clusters/shop")
	b.waitText("#move-underway", "A move from ams to iad is under way", 10*time.Second)
	b.waitText("#move-underway", "not run from this console", time.Second)
	b.click("#move-reverse")
	b.waitText(".flash", "Reversing the move", 20*time.Second)
	b.waitText("#move-progress", "Moved back", 4*time.Minute)
	v = api.ClusterView{}
	if err := json.Unmarshal([]byte(c.ok("status", "shop", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if v.PrimaryRegion != "ams" || v.Move != nil {
		t.Errorf("after the reverse: primary region %q, move %+v; want ams and no move", v.PrimaryRegion, v.Move)
	}
}
