package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/migrate"
)

// startSourcePG starts a PostgreSQL outside pgfleet, with its own initdb,
// and returns its superuser's URL (database postgres, password auth over
// TCP). It stops when the test ends.
func startSourcePG(t *testing.T, walLevel string) string {
	t.Helper()
	return labtest.StartPostgres(t, labtest.PlainPostgres{Password: "source-secret-9", WALLevel: walLevel})
}

// importWriter inserts rows into the source's orders table and updates
// some, one transaction at a time, and records every id whose insert
// committed. It stops once the source refuses writes for good.
type importWriter struct {
	mu    sync.Mutex
	acked []int64
	errs  int
	stop  chan struct{}
	done  chan struct{}
}

func startImportWriter(t *testing.T, url string) *importWriter {
	w := &importWriter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ctx := context.Background()
		var conn *pgx.Conn
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				if conn != nil {
					conn.Close(ctx)
				}
				return
			default:
			}
			if conn == nil {
				c, err := pgx.Connect(ctx, url+"&connect_timeout=5")
				if err != nil {
					w.mu.Lock()
					w.errs++
					w.mu.Unlock()
					time.Sleep(20 * time.Millisecond) // pacing a retry, not waiting for readiness
					continue
				}
				conn = c
			}
			var id int64
			err := conn.QueryRow(ctx, "INSERT INTO orders (item) VALUES ($1) RETURNING id", fmt.Sprintf("w%d", i)).Scan(&id)
			if err == nil && i%10 == 0 {
				_, err = conn.Exec(ctx, "UPDATE orders SET item = item || '+' WHERE id = $1", id-5)
			}
			if err == nil && i%25 == 0 {
				_, err = conn.Exec(ctx, "INSERT INTO notes VALUES (now(), $1)", fmt.Sprintf("n%d", i))
			}
			w.mu.Lock()
			if err != nil {
				w.errs++
				if conn.IsClosed() || strings.Contains(err.Error(), "read-only") || strings.Contains(err.Error(), "terminat") {
					conn.Close(ctx)
					conn = nil
				}
			} else {
				w.acked = append(w.acked, id)
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *importWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *importWriter) halt() []int64 {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int64(nil), w.acked...)
}

// TestImportOnline imports a database from a PostgreSQL of its own into a
// two-member cluster by logical replication, under a writer, with a
// switchover of the cluster in the middle, then cuts over with the source
// locked. It checks what the user would: every committed row arrived and
// no other, tables match in content, sequences go on past the source's,
// and the source holds no slot or publication any more. It also checks
// the refusals: a source without wal_level=logical, a table without a key.
func TestImportOnline(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two postgres sources and a two-member cluster")
	}
	ctx := context.Background()
	replica := startSourcePG(t, "replica")
	source := startSourcePG(t, "logical")
	f := labtest.StartFleet(t, "iad:2")
	c := f.Client
	ha := 2
	if _, err := c.Create(ctx, api.CreateRequest{Name: "new", PrimaryRegion: "iad", HA: &ha, BackupStore: "none"}); err != nil {
		t.Fatal(err)
	}

	// The source: an app's database with a keyed table that has a sequence,
	// and a table without a key.
	admin := labtest.Connect(t, source)
	for _, s := range []string{"CREATE ROLE shop LOGIN PASSWORD 'shop-secret-1'", "CREATE DATABASE shop OWNER shop"} {
		if _, err := admin.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	shop := strings.Replace(source, "/postgres?", "/shop?", 1)
	app := labtest.Connect(t, shop)
	for _, s := range []string{
		"CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)",
		"INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 50000) g",
		"CREATE TABLE notes (at timestamptz, note text)",
		"INSERT INTO notes SELECT now(), 'n' || g FROM generate_series(1, 100) g",
		"CREATE SEQUENCE tickets START 1000",
		"SELECT nextval('tickets') FROM generate_series(1, 42)",
		"ALTER TABLE orders OWNER TO shop",
	} {
		if _, err := app.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}

	labtest.WaitFor(t, 3*time.Minute, "cluster new has a primary and a streaming standby", func() (bool, string) {
		v, err := c.Cluster(ctx, "new")
		if err != nil {
			return false, err.Error()
		}
		healthy := 0
		for _, m := range v.Members {
			if m.Healthy {
				healthy++
			}
		}
		return v.Primary != "" && healthy == 2, fmt.Sprintf("primary %q, %d healthy", v.Primary, healthy)
	})
	nothingLeft := func(t *testing.T, what string) {
		t.Helper()
		var slots, pubs int
		if err := admin.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_publication)").Scan(&slots, &pubs); err != nil {
			t.Fatal(err)
		}
		var pubsShop int
		app.QueryRow(ctx, "SELECT count(*) FROM pg_publication").Scan(&pubsShop)
		if slots != 0 || pubs+pubsShop != 0 {
			t.Errorf("%s: the source holds %d slot(s) and %d publication(s), want none", what, slots, pubs+pubsShop)
		}
	}

	t.Run("refusals", func(t *testing.T) {
		start := time.Now()
		_, _, err := inFleet(t, f, "import", "new", "--online", "--from", replica)
		if err == nil || !strings.Contains(err.Error(), "set wal_level = logical (it is replica) and restart the source") {
			t.Errorf("import --online from a wal_level=replica source: %v; want refused with what to change", err)
		}
		_, _, err = inFleet(t, f, "import", "new", "--online", "--from", shop)
		if err == nil || !strings.Contains(err.Error(), "public.notes") || !strings.Contains(err.Error(), "--replica-identity-full") || strings.Contains(err.Error(), "public.orders") {
			t.Errorf("import --online of a table without a key: %v; want refused naming public.notes", err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("the refusals took %s", took)
		}
		_, _, err = inFleet(t, f, "import", "new", "--status", "--from", shop)
		if err == nil || !strings.Contains(err.Error(), "no online import of database shop") {
			t.Errorf("--status before an import: %v", err)
		}
		nothingLeft(t, "after the refusals")
		var ident string
		app.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE relname = 'notes'").Scan(&ident)
		if ident != "d" {
			t.Errorf("a refused import changed notes' replica identity to %q", ident)
		}
		if err := tryConnect(withDB(primaryURL(t, c, "new"), "shop") + "&connect_timeout=5"); err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("a refused import made database shop in the cluster (%v)", err)
		}
	})
	if t.Failed() {
		return
	}

	w := startImportWriter(t, shop)
	defer func() {
		select {
		case <-w.stop:
		default:
			w.halt()
		}
	}()
	labtest.WaitFor(t, 10*time.Second, "the writer commits", func() (bool, string) {
		return w.count() > 20, fmt.Sprintf("%d commits", w.count())
	})

	out, stderr, err := inFleet(t, f, "import", "new", "--online", "--replica-identity-full", "--from", shop)
	t.Logf("import --online:\n%s%s", out, stderr)
	if err != nil {
		t.Fatalf("import --online: %v", err)
	}
	// status reads --status --json; an error (the primary changing hands)
	// comes back as a phase of its own, for the waits to report.
	status := func() migrate.Progress {
		t.Helper()
		out, stderr, err := inFleet(t, f, "import", "new", "--status", "--json", "--from", shop)
		if err != nil {
			return migrate.Progress{Phase: migrate.Phase("error: " + err.Error() + " " + stderr)}
		}
		var p migrate.Progress
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatalf("import --status --json: %v\n%s", err, out)
		}
		return p
	}
	phases := map[migrate.Phase]bool{}
	labtest.WaitFor(t, 3*time.Minute, "the initial copy ends", func() (bool, string) {
		p := status()
		phases[p.Phase] = true
		return p.Phase == migrate.PhaseStreaming, fmt.Sprintf("%+v", p)
	})
	p := status()
	if p.Tables != 2 || p.TablesDone != 2 || p.SourceLSN == "" || p.ConfirmedLSN == "" {
		t.Errorf("status while streaming: %+v; want 2 of 2 tables and both positions", p)
	}
	t.Logf("phases seen: %v; streaming: %+v", phases, p)
	text, _, err := inFleet(t, f, "import", "new", "--status", "--from", shop)
	if err != nil || !strings.Contains(text, "streaming, all 2 table(s) copied; lag") {
		t.Errorf("import --status: %v\n%s", err, text)
	}

	if again, _, err := inFleet(t, f, "import", "new", "--online", "--from", shop); err != nil || !strings.Contains(again, "under way already") {
		t.Errorf("import --online again: %v\n%s; want the running import's progress", err, again)
	}

	// A switchover of the cluster: the new primary has the subscription
	// from the old one's WAL and starts its worker by itself.
	v, err := c.Cluster(ctx, "new")
	if err != nil {
		t.Fatal(err)
	}
	old := v.Primary
	if _, err := c.Switchover(ctx, "new", ""); err != nil {
		t.Fatalf("switchover: %v", err)
	}
	labtest.WaitFor(t, 2*time.Minute, "another member is primary", func() (bool, string) {
		v, err := c.Cluster(ctx, "new")
		if err != nil {
			return false, err.Error()
		}
		return v.Primary != "" && v.Primary != old, v.Primary
	})
	atSwitch := w.count()
	labtest.WaitFor(t, 2*time.Minute, "the new primary's worker runs and catches up", func() (bool, string) {
		p := status()
		return p.Running && p.Phase == migrate.PhaseStreaming && w.count() > atSwitch+50 && p.LagBytes < 1<<20, fmt.Sprintf("%+v, %d commits since", p, w.count()-atSwitch)
	})
	newPrimary := labtest.Connect(t, withDB(primaryURL(t, c, "new"), "shop"))
	var inRecovery bool
	var workerPID *int32
	if err := newPrimary.QueryRow(ctx, "SELECT pg_is_in_recovery(), (SELECT pid FROM pg_stat_subscription WHERE relid IS NULL)").Scan(&inRecovery, &workerPID); err != nil || inRecovery || workerPID == nil {
		t.Errorf("the new primary: in recovery %v, apply worker %v (%v); want a primary running the worker", inRecovery, workerPID, err)
	}

	out, stderr, err = inFleet(t, f, "import", "new", "--cutover", "--lock-source", "--from", shop)
	t.Logf("import --cutover --lock-source:\n%s%s", out, stderr)
	if err != nil {
		t.Fatalf("import --cutover: %v", err)
	}
	m := regexp.MustCompile(`writes were paused for (\S+) `).FindStringSubmatch(out)
	if m == nil {
		t.Errorf("the cutover did not report its pause:\n%s", out)
	} else if pause, err := time.ParseDuration(m[1]); err != nil || pause > time.Second {
		t.Errorf("the cutover paused writes for %s (%v); want under 1s", m[1], err)
	}
	if strings.Contains(out+stderr, "source-secret-9") {
		t.Error("the import printed the source's password")
	}
	acked := w.halt()

	// Every committed row is in the cluster, and no other; contents match.
	src := labtest.Connect(t, shop)
	dst := labtest.Connect(t, withDB(primaryURL(t, c, "new"), "shop"))
	ids := map[int64]bool{}
	rows, err := dst.Query(ctx, "SELECT id FROM orders")
	if err != nil {
		t.Fatal(err)
	}
	dstIDs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range dstIDs {
		ids[id] = true
	}
	missing := 0
	for _, id := range acked {
		if !ids[id] {
			missing++
		}
	}
	var srcCount int
	src.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&srcCount)
	extra := len(dstIDs) - srcCount
	if missing != 0 || extra != 0 {
		t.Errorf("after the cutover: %d committed row(s) missing, %d extra (source %d rows, cluster %d, writer committed %d)", missing, extra, srcCount, len(dstIDs), len(acked))
	}
	t.Logf("writer committed %d rows during the import", len(acked))
	for _, q := range []string{
		"SELECT md5(string_agg(id || ':' || item, ',' ORDER BY id)) FROM orders",
		"SELECT md5(string_agg(note, ',' ORDER BY note)) FROM notes",
	} {
		var a, b string
		src.QueryRow(ctx, q).Scan(&a)
		dst.QueryRow(ctx, q).Scan(&b)
		if a != b || a == "" {
			t.Errorf("%s: source %s, cluster %s", q, a, b)
		}
	}
	// Sequences go on past the source's values.
	var srcMax, next, ticket int64
	src.QueryRow(ctx, "SELECT max(id) FROM orders").Scan(&srcMax)
	if err := dst.QueryRow(ctx, "INSERT INTO orders (item) VALUES ('after') RETURNING id").Scan(&next); err != nil || next <= srcMax {
		t.Errorf("a new order in the cluster got id %d (%v); want past the source's %d", next, err, srcMax)
	}
	if err := dst.QueryRow(ctx, "SELECT nextval('tickets')").Scan(&ticket); err != nil || ticket != 1042 {
		t.Errorf("nextval('tickets') in the cluster = %d (%v), want 1042", ticket, err)
	}
	// The source: read-only, nothing left of the import.
	nothingLeft(t, "after the cutover")
	if _, err := labtest.Connect(t, shop).Exec(ctx, "INSERT INTO orders (item) VALUES ('late')"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("a write to the locked source: %v; want refused as read-only", err)
	}
	var subs int
	dst.QueryRow(ctx, "SELECT count(*) FROM pg_subscription").Scan(&subs)
	if subs != 0 {
		t.Errorf("the cluster holds %d subscription(s) after the cutover", subs)
	}
	if _, _, err := inFleet(t, f, "import", "new", "--status", "--from", shop); err == nil {
		t.Error("--status after the cutover found an import")
	}

	// An import given up half-way: --abort leaves nothing on the source,
	// and says so when run again.
	if _, err := admin.Exec(ctx, "CREATE DATABASE extra"); err != nil {
		t.Fatal(err)
	}
	extraURL := strings.Replace(source, "/postgres?", "/extra?", 1)
	ex := labtest.Connect(t, extraURL)
	if _, err := ex.Exec(ctx, "CREATE TABLE big (id int PRIMARY KEY, pad text); INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g"); err != nil {
		t.Fatal(err)
	}
	if out, stderr, err := inFleet(t, f, "import", "new", "--online", "--no-roles", "--from", extraURL); err != nil {
		t.Fatalf("import --online of extra: %v\n%s%s", err, out, stderr)
	}
	out, _, err = inFleet(t, f, "import", "new", "--abort", "--from", extraURL)
	if err != nil || !strings.Contains(out, "aborted: dropped subscription pgfleet_import_extra") {
		t.Errorf("import --abort: %v\n%s", err, out)
	}
	nothingLeft(t, "after --abort")
	var exPubs int
	ex.QueryRow(ctx, "SELECT count(*) FROM pg_publication").Scan(&exPubs)
	if exPubs != 0 {
		t.Errorf("after --abort, database extra holds %d publication(s)", exPubs)
	}
	out, _, err = inFleet(t, f, "import", "new", "--abort", "--from", extraURL)
	if err != nil || !strings.Contains(out, "no subscription pgfleet_import_extra") {
		t.Errorf("import --abort again: %v\n%s", err, out)
	}

	// Bad sources answer fast with libpq's message.
	for _, tt := range []struct{ name, from, want string }{
		{"nothing listens", "postgres://postgres:x@127.0.0.1:1/shop", "connect to the source"},
		{"wrong password", strings.Replace(shop, "source-secret-9", "wrong", 1), "password authentication failed"},
	} {
		start := time.Now()
		_, _, err := inFleet(t, f, "import", "new", "--online", "--from", tt.from)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v; want an error with %q", tt.name, err, tt.want)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s: answered after %s; want under 5 s", tt.name, took.Round(time.Millisecond))
		}
	}
}

// primaryURL returns the superuser URL of cluster name's primary.
func primaryURL(t *testing.T, c *api.Client, name string) string {
	t.Helper()
	u, err := c.URL(context.Background(), name, "")
	if err != nil {
		t.Fatal(err)
	}
	return u.URL
}

// withDB returns rawURL, a URL the API gave, naming database db.
func withDB(rawURL, db string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	u.Path = "/" + db
	return u.String()
}
