package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// inFleet runs pgfleet in-process against the test fleet f, as a user with
// the fleet's address, token and CA would, and returns what it printed.
func inFleet(t *testing.T, f *labtest.Fleet, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	t.Setenv("PGFLEET_HOME", t.TempDir())
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"--api", strings.Join(lab.Endpoints(f.Plan), ","), "--token", f.Token, "--ca", f.Client.CAFile}, args...))
	err = root.Execute()
	return out.String(), errb.String(), err
}

// envLines parses KEY=VALUE lines.
func envLines(t *testing.T, s string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("line %q is not KEY=VALUE", line)
		}
		env[k] = v
	}
	return env
}

// withUser returns rawURL with user, password and database replaced.
func withUser(t *testing.T, rawURL, user, password, db string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	if db != "" {
		u.Path = "/" + db
	}
	return u.String()
}

// tryConnect opens and closes a connection to rawURL, reporting the error.
func tryConnect(rawURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, rawURL+"&connect_timeout=5")
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// TestAppsAndUsers attaches two apps to a cluster and checks what each may
// do, makes users, rotates passwords across a failover, refuses bad names
// and pgfleet's own roles without changing anything, and detaches.
func TestAppsAndUsers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three agents and three postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2,ams")
	ctx := context.Background()
	ha := 2
	if _, err := f.Client.Create(ctx, api.CreateRequest{Name: "web", PrimaryRegion: "iad", HA: &ha, Replicas: []string{"ams"}}); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 3*time.Minute, "cluster web ready", func() (bool, string) {
		v, err := f.Client.Cluster(ctx, "web")
		if err != nil {
			return false, err.Error()
		}
		return ready(v), fmt.Sprintf("%+v", v.Members)
	})
	cli := func(args ...string) string {
		t.Helper()
		out, errOut, err := inFleet(t, f, args...)
		if err != nil {
			t.Fatalf("pgfleet %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}
	refused := func(want string, args ...string) {
		t.Helper()
		out, errOut, err := inFleet(t, f, args...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("pgfleet %s: %v (output %q %q); want an error with %q", strings.Join(args, " "), err, out, errOut, want)
		}
	}

	// attach: two apps, each with its own database and URLs.
	shopEnv := envLines(t, cli("attach", "web", "--app", "shop"))
	billingEnv := envLines(t, cli("attach", "web", "--app", "billing"))
	for _, k := range []string{"DATABASE_URL", "DATABASE_REPLICA_URL"} {
		u, err := url.Parse(shopEnv[k])
		if err != nil {
			t.Fatalf("%s=%q: %v", k, shopEnv[k], err)
		}
		if q := u.Query(); u.User.Username() != "shop" || u.Path != "/shop" || q.Get("sslmode") != "verify-full" || q.Get("sslrootcert") != f.Client.CAFile {
			t.Errorf("attach: %s=%s; want user shop, database shop, sslmode=verify-full and sslrootcert=%s", k, shopEnv[k], f.Client.CAFile)
		}
	}
	shop, err := pgx.Connect(ctx, shopEnv["DATABASE_URL"])
	if err != nil {
		t.Fatalf("connect as the app through DATABASE_URL: %v", err)
	}
	defer shop.Close(ctx)
	if _, err := shop.Exec(ctx, "CREATE TABLE orders (id serial PRIMARY KEY, item text); INSERT INTO orders (item) VALUES ('tea')"); err != nil {
		t.Fatalf("the app creates a table in its own database: %v", err)
	}
	billing, err := pgx.Connect(ctx, billingEnv["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer billing.Close(ctx)
	if _, err := billing.Exec(ctx, "CREATE TABLE invoices (total int); INSERT INTO invoices VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	shopPW, _ := url.Parse(shopEnv["DATABASE_URL"])
	pw, _ := shopPW.User.Password()
	if err := tryConnect(withUser(t, shopEnv["DATABASE_URL"], "shop", pw, "billing")); err == nil || !strings.Contains(err.Error(), "permission denied for database") {
		t.Errorf("app shop connects to billing's database: %v; want permission denied", err)
	}
	for _, stmt := range []string{
		"ALTER ROLE billing PASSWORD 'taken-over'",
		"ALTER ROLE shop SUPERUSER",
		"ALTER ROLE shop CREATEROLE",
		"CREATE ROLE intruder LOGIN",
		"CREATE DATABASE other",
		"SELECT * FROM pg_authid",
	} {
		if _, err := shop.Exec(ctx, stmt); err == nil {
			t.Errorf("app shop ran %q; want it refused", stmt)
		}
	}
	labtest.WaitFor(t, 30*time.Second, "the app's row read through DATABASE_REPLICA_URL", func() (bool, string) {
		conn, err := pgx.Connect(ctx, shopEnv["DATABASE_REPLICA_URL"])
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close(ctx)
		var item string
		err = conn.QueryRow(ctx, "SELECT item FROM orders").Scan(&item)
		return err == nil && item == "tea", fmt.Sprint(item, err)
	})

	// users: a read-only one with its password in a file, a read-write one.
	pwFile := filepath.Join(t.TempDir(), "alice.pw")
	if out := cli("users", "create", "alice", "--cluster", "web", "--read-only", "--out", pwFile); strings.Contains(out, "password:") {
		t.Errorf("users create --out showed the password:\n%s", out)
	}
	fi, err := os.Stat(pwFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("--out file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(pwFile)
	alice, err := pgx.Connect(ctx, withUser(t, shopEnv["DATABASE_URL"], "alice", strings.TrimSpace(string(b)), "shop"))
	if err != nil {
		t.Fatalf("connect as the read-only user: %v", err)
	}
	defer alice.Close(ctx)
	var n int
	if err := alice.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 1 {
		t.Errorf("read-only user reads the app's table: %d, %v", n, err)
	}
	if _, err := alice.Exec(ctx, "INSERT INTO orders (item) VALUES ('scone')"); err == nil {
		t.Errorf("the read-only user wrote a row")
	}
	out := cli("users", "create", "bob", "--cluster", "web")
	bobPW := ""
	for _, line := range strings.Split(out, "\n") {
		if p, ok := strings.CutPrefix(line, "password: "); ok {
			bobPW = p
		}
	}
	if len(bobPW) < 20 {
		t.Fatalf("users create printed no password:\n%s", out)
	}
	bob, err := pgx.Connect(ctx, withUser(t, shopEnv["DATABASE_URL"], "bob", bobPW, "billing"))
	if err != nil {
		t.Fatalf("connect as the read-write user: %v", err)
	}
	defer bob.Close(ctx)
	if _, err := bob.Exec(ctx, "INSERT INTO invoices VALUES (7)"); err != nil {
		t.Errorf("the read-write user inserts into an app's table: %v", err)
	}
	if _, err := bob.Exec(ctx, "CREATE TABLE mine (x int)"); err == nil {
		t.Errorf("a user created a table; users have no DDL")
	}

	// Bad and owned names: refused, nothing changed.
	usersBefore, dbsBefore := cli("users", "list", "--cluster", "web"), cli("db", "list", "web")
	for _, args := range [][]string{
		{"users", "create", "postgres", "--cluster", "web"},
		{"users", "rotate", "pgfleet_replication", "--cluster", "web"},
		{"users", "delete", "postgres", "--cluster", "web"},
		{"users", "create", "Robert'); DROP TABLE orders;--", "--cluster", "web"},
		{"users", "create", "pg_monitor2", "--cluster", "web"},
		{"users", "create", "carol"},
		{"attach", "web", "--app", "template1"},
		{"attach", "web", "--app", "Shop"},
		{"attach", "web"},
		{"db", "create", "web", "postgres"},
		{"db", "create", "web", "a b"},
		{"db", "delete", "web", "shop"},
	} {
		_, _, err := inFleet(t, f, args...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("pgfleet %s: %v; want a usage error", strings.Join(args, " "), err)
		}
	}
	// The API checks again what a client other than the CLI sends.
	for what, call := range map[string]func() error{
		"create user postgres":   func() error { _, err := f.Client.CreateUser(ctx, "web", api.UserRequest{Name: "postgres"}); return err },
		"rotate pgfleet_repl...": func() error { _, err := f.Client.RotateUser(ctx, "web", fleet.ReplicationUser); return err },
		"delete user postgres":   func() error { return f.Client.DeleteUser(ctx, "web", "postgres") },
		"create user with quote": func() error { _, err := f.Client.CreateUser(ctx, "web", api.UserRequest{Name: `a"b`}); return err },
		"attach template0":       func() error { _, err := f.Client.Attach(ctx, "web", api.AttachRequest{App: "template0"}); return err },
		"create db template1":    func() error { return f.Client.CreateDatabase(ctx, "web", "template1") },
		"delete db postgres":     func() error { return f.Client.DeleteDatabase(ctx, "web", "postgres") },
	} {
		var ae *api.APIError
		if err := call(); !errors.As(err, &ae) || ae.Status != 400 {
			t.Errorf("%s through the API: %v; want 400", what, err)
		}
	}
	refused("already attached", "attach", "web", "--app", "shop")
	refused("already exists", "users", "create", "alice", "--cluster", "web")
	refused("app's role", "users", "delete", "shop", "--cluster", "web")
	refused("detach", "db", "delete", "web", "shop", "--yes")
	refused("has no user", "users", "rotate", "nobody", "--cluster", "web")
	if u, d := cli("users", "list", "--cluster", "web"), cli("db", "list", "web"); u != usersBefore || d != dbsBefore {
		t.Errorf("refused commands changed the cluster:\nusers before:\n%s\nafter:\n%s\ndatabases before:\n%s\nafter:\n%s", usersBefore, u, dbsBefore, d)
	}
	for _, want := range []string{"alice", "read-only user", "bob", "billing", "shop"} {
		if !strings.Contains(usersBefore, want) {
			t.Errorf("users list lacks %q:\n%s", want, usersBefore)
		}
	}
	if strings.Contains(usersBefore, "postgres") || strings.Contains(usersBefore, fleet.ReplicationUser) {
		t.Errorf("users list shows pgfleet's own roles:\n%s", usersBefore)
	}

	// rotate: the old password fails and the new one works on every
	// member, and again after a failover.
	rotated := cli("users", "rotate", "shop", "--cluster", "web", "--json")
	newPW := between(rotated, `"password": "`, `"`)
	if newPW == "" || newPW == pw {
		t.Fatalf("users rotate --json:\n%s", rotated)
	}
	everyMember := func(when string) {
		v, err := f.Client.Cluster(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range v.Members {
			su, err := f.Client.URL(ctx, "web", m.ID)
			if err != nil {
				t.Fatal(err)
			}
			labtest.WaitFor(t, 30*time.Second, when+": old password refused and new one taken by "+m.ID, func() (bool, string) {
				oldErr := tryConnect(withUser(t, su.URL, "shop", pw, "shop"))
				newErr := tryConnect(withUser(t, su.URL, "shop", newPW, "shop"))
				return oldErr != nil && newErr == nil, fmt.Sprintf("old password: %v; new password: %v", oldErr, newErr)
			})
		}
	}
	everyMember("after rotate")
	before, _ := f.Client.Cluster(ctx, "web")
	if err := f.Client.Failover(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, time.Minute, "a new primary after the failover", func() (bool, string) {
		v, err := f.Client.Cluster(ctx, "web")
		if err != nil {
			return false, err.Error()
		}
		return v.Primary != "" && v.Primary != before.Primary && ready(v), fmt.Sprintf("primary %q, %+v", v.Primary, v.Members)
	})
	everyMember("after the failover")
	labtest.WaitFor(t, 30*time.Second, "the new password through DATABASE_URL on the new primary", func() (bool, string) {
		err := tryConnect(withUser(t, shopEnv["DATABASE_URL"], "shop", newPW, ""))
		return err == nil, fmt.Sprint(err)
	})
	// And on the new primary a rotation works too.
	cli("users", "rotate", "bob", "--cluster", "web")

	// detach keeps the data; attach gives it back; --drop-data deletes it.
	// (Sessions through the proxy ended with the failover: open new ones.)
	openAs := func(user, password, db string) *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, withUser(t, shopEnv["DATABASE_URL"], user, password, db))
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(func() { conn.Close(ctx) })
		return conn
	}
	live := openAs("shop", newPW, "shop")
	cli("detach", "web", "--app", "shop")
	if err := tryConnect(withUser(t, shopEnv["DATABASE_URL"], "shop", newPW, "")); err == nil {
		t.Errorf("a detached app still logs in")
	}
	if _, err := live.Exec(ctx, "SELECT 1"); err == nil {
		t.Errorf("a detached app's open session goes on")
	}
	if !strings.Contains(cli("db", "list", "web"), "shop") {
		t.Errorf("detach without --drop-data dropped the database")
	}
	again := envLines(t, cli("attach", "web", "--app", "shop"))
	conn, err := pgx.Connect(ctx, again["DATABASE_URL"])
	if err != nil {
		t.Fatalf("connect after attaching again: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 1 {
		t.Errorf("after detach and attach the app's table holds %d rows (%v), want 1", n, err)
	}
	conn.Close(ctx)
	refused("--yes", "detach", "web", "--app", "shop", "--drop-data")
	cli("detach", "web", "--app", "shop", "--drop-data", "--yes")
	if dbs := cli("db", "list", "web"); strings.Contains(dbs, "shop") {
		t.Errorf("detach --drop-data left the database:\n%s", dbs)
	}
	cli("db", "create", "web", "reports")
	if out := cli("db", "list", "web"); !strings.Contains(out, "reports") {
		t.Errorf("db list after db create:\n%s", out)
	}
	cli("db", "delete", "web", "reports", "--yes")
	alice = openAs("alice", strings.TrimSpace(string(b)), "billing")
	cli("users", "delete", "alice", "--cluster", "web")
	if _, err := alice.Exec(ctx, "SELECT 1"); err == nil {
		t.Errorf("a deleted user's open session goes on")
	}
	if err := tryConnect(withUser(t, shopEnv["DATABASE_URL"], "alice", strings.TrimSpace(string(b)), "billing")); err == nil {
		t.Errorf("a deleted user still logs in")
	}
	if out := cli("users", "list", "--cluster", "web"); strings.Contains(out, "alice") {
		t.Errorf("users list after delete:\n%s", out)
	}

	// No password in the events or the agents' logs.
	evs, err := f.Client.Events(ctx, "web", 500)
	if err != nil {
		t.Fatal(err)
	}
	var text []string
	for _, e := range evs {
		text = append(text, e.Message)
	}
	logs, _ := filepath.Glob(filepath.Join(f.Dir, "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		text = append(text, string(b))
	}
	all := strings.Join(text, "\n")
	for what, secret := range map[string]string{"first password": pw, "rotated password": newPW, "bob's password": bobPW} {
		if strings.Contains(all, secret) {
			t.Errorf("the %s appears in the events or logs", what)
		}
	}
	if !slices.ContainsFunc(evs, func(e fleet.Event) bool { return e.Message == "password of shop rotated" }) {
		t.Errorf("no event of the rotation")
	}
}

// between returns the text of s between the first prefix and the next end.
func between(s, prefix, end string) string {
	_, rest, ok := strings.Cut(s, prefix)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, end)
	return v
}
