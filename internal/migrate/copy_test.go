package migrate_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/migrate"
)

// TestCopyStreamsBigTablesWhole copies a database between two databases
// of one real PostgreSQL with Copy, every table streamed COPY to COPY and
// the big one in two ctid ranges side by side, and checks what a user
// would: every table's rows and content hash equal the source's (a
// generated column, a dropped one, an inheritance parent and child, a
// partitioned table, an unlogged table, odd names), the keys and foreign
// keys are there, and the sequence goes on from the source's value.
func TestCopyStreamsBigTablesWhole(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres")
	}
	bin := labtest.RequirePostgres(t)
	base := startPG(t)
	ctx := context.Background()
	admin := labtest.Connect(t, base+"postgres")
	for _, s := range []string{"CREATE DATABASE src", "CREATE DATABASE dst"} {
		if _, err := admin.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	src := labtest.Connect(t, base+"src")
	for _, s := range []string{
		// A type of the database's own: its rows go as text, not binary.
		"CREATE TYPE mood AS ENUM ('calm', 'busy')",
		"CREATE TABLE big (id int PRIMARY KEY, grp int NOT NULL, gone text, pad text, twice int GENERATED ALWAYS AS (id * 2) STORED)",
		"INSERT INTO big (id, grp, gone, pad) SELECT g, g % 100, 'x', repeat(md5(g::text), 2) FROM generate_series(1, 250000) g",
		"ALTER TABLE big DROP COLUMN gone",
		`CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales"."Order ""Lines""" (big_id int REFERENCES big, qty int, note text)`,
		`INSERT INTO "Sales"."Order ""Lines""" SELECT g, g % 7, CASE WHEN g % 3 = 0 THEN NULL ELSE E'tab\there, line\nbreak, \\back' END FROM generate_series(1, 3000) g`,
		"CREATE TABLE notes (id serial PRIMARY KEY, body text)",
		"CREATE TABLE notes_archive (archived date) INHERITS (notes)",
		"INSERT INTO notes (body) SELECT 'n' || g FROM generate_series(1, 500) g",
		"INSERT INTO notes_archive (body, archived) SELECT 'a' || g, '2026-01-01' FROM generate_series(1, 200) g",
		"CREATE TABLE events (at date, what text) PARTITION BY RANGE (at)",
		"CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
		"CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
		"INSERT INTO events SELECT '2026-01-01'::date + g % 700, 'e' FROM generate_series(1, 1000) g",
		"CREATE UNLOGGED TABLE scratch (k text, moods mood[], at timestamptz, n numeric, f float8, d date, i interval)",
		"INSERT INTO scratch SELECT 'k' || g, ARRAY['busy', 'calm']::mood[], '2026-11-28 04:00:00+00'::timestamptz + g * interval '1 min', g / 7.0, g / 7.0::float8, '2026-11-28'::date + g, g * interval '1 day 1 min' FROM generate_series(1, 100) g",
		// Defaults that print rows as text another server would read
		// otherwise: day before month, floats cut short, as an old
		// server did.
		"ALTER DATABASE src SET DateStyle = 'SQL, DMY'",
		"ALTER DATABASE src SET IntervalStyle = 'sql_standard'",
		"ALTER DATABASE src SET extra_float_digits = 0",
		// Values that name objects by OID must arrive as names: the
		// cluster's OIDs differ.
		"CREATE TABLE refs (t regclass, ty regtype[], n int)",
		"INSERT INTO refs VALUES ('big', ARRAY['mood']::regtype[], 1), ('notes', ARRAY['int4']::regtype[], 2)",
		"CREATE INDEX big_grp ON big (grp)",
		// Its statistics come only from an ANALYZE after the index.
		"CREATE INDEX big_pad_head ON big (left(pad, 4))",
		"VACUUM ANALYZE",
	} {
		if _, err := src.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}

	tool := migrate.Tool{Bin: bin, Dir: labtest.TestDir(t)}
	var steps []string
	loaded := map[string]int{}
	res, err := tool.Copy(ctx, migrate.Conn{URL: base + "src"}, migrate.Conn{URL: base + "dst"}, migrate.CopyOptions{
		Jobs: 2, StreamAbove: 1,
		Table: func(name string, total int) { loaded[name] = total },
		Step:  func(line string) { steps = append(steps, line) },
	})
	if err != nil {
		t.Fatalf("Copy: %v\nsteps: %s", err, strings.Join(steps, "\n"))
	}
	t.Logf("steps:\n%s", strings.Join(steps, "\n"))
	// big (about 20 MB) in two parts, the seven others whole.
	if got := strings.Join(steps, "\n"); !strings.Contains(got, "copied 8 big table(s)") || !strings.Contains(got, "in 9 part(s) by 2 session(s)") {
		t.Errorf("Copy's steps do not say 8 tables streamed in 9 parts:\n%s", got)
	}
	if len(loaded) != 8 || loaded["public.big"] != 8 {
		t.Errorf("tables told loading: %v; want 8, of 8", loaded)
	}

	dst := labtest.Connect(t, base+"dst")
	tables, err := migrate.Tables(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range append(tables, "ONLY public.notes", "public.notes_archive", "public.events_2026", "public.events_2027") {
		q := fmt.Sprintf("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM %s t", table)
		var n, m int64
		var h, g string
		if err := src.QueryRow(ctx, q).Scan(&n, &h); err != nil {
			t.Fatalf("%s on the source: %v", q, err)
		}
		if err := dst.QueryRow(ctx, q).Scan(&m, &g); err != nil {
			t.Fatalf("%s in the copy: %v", q, err)
		}
		if n != m || h != g {
			t.Errorf("%s: %d rows (hash %s) in the copy, want %d (hash %s)", table, m, g, n, h)
		}
	}
	var indexes int
	if err := dst.QueryRow(ctx, "SELECT count(*) FROM pg_indexes WHERE tablename = 'big'").Scan(&indexes); err != nil || indexes != 3 {
		t.Errorf("big has %d indexes (%v), want its primary key, big_grp and big_pad_head", indexes, err)
	}

	// The summary's counts: the source's from the copy's snapshot, the
	// cluster's from the COPY commands that loaded big (in two parts)
	// and a count of the rest; each as count(*) on the table says.
	if res.Source["public.big"] != 250000 || res.Loaded["public.big"] != 250000 {
		t.Errorf("big: %d row(s) read, %d loaded by the COPY commands, want 250000", res.Source["public.big"], res.Loaded["public.big"])
	}
	dstCounts, err := migrate.CountTables(ctx, dst, res.Loaded)
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range tables {
		var n int64
		if err := src.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if res.Source[table] != n || dstCounts[table] != n {
			t.Errorf("%s: summary says %d on the source and %d in the copy, count(*) %d", table, res.Source[table], dstCounts[table], n)
		}
	}
	if len(res.Source) != len(tables) || len(dstCounts) != len(tables) {
		t.Errorf("summary of %d and %d table(s), want %d: %v %v", len(res.Source), len(dstCounts), len(tables), res.Source, dstCounts)
	}

	n, err := migrate.Analyze(ctx, migrate.Conn{URL: base + "dst"}, 2)
	if err != nil {
		t.Fatalf("Analyze: %v", err)
	}
	// big, Order "Lines", notes, notes_archive, events (with its
	// partitions), scratch, refs.
	if n != 7 {
		t.Errorf("Analyze did %d table(s), want 7", n)
	}
	var stats int
	if err := dst.QueryRow(ctx, `SELECT count(*) FROM pg_stats WHERE (schemaname, tablename) IN
		(('public', 'big'), ('public', 'big_pad_head'), ('public', 'events_2026'), ('public', 'events'), ('Sales', 'Order "Lines"'))`).Scan(&stats); err != nil {
		t.Fatal(err)
	}
	// big's 4 columns (twice too), the expression index's 1, 2 for each
	// partition and 2 for events as a whole, Order "Lines"'s 3.
	if stats != 4+1+2+2+3 {
		t.Errorf("pg_stats has %d row(s) for big, its expression index, events and Order \"Lines\", want 12", stats)
	}
	if _, err := dst.Exec(ctx, `INSERT INTO "Sales"."Order ""Lines""" VALUES (999999, 1, 'no such big')`); err == nil || !strings.Contains(err.Error(), "foreign key") {
		t.Errorf("an order line for no big row: %v, want the foreign key to refuse it", err)
	}
	var id int
	if err := dst.QueryRow(ctx, "INSERT INTO notes (body) VALUES ('after') RETURNING id").Scan(&id); err != nil || id != 701 {
		t.Errorf("a new note got id %d (%v), want 701", id, err)
	}
}

// startPG starts a PostgreSQL of its own (trust auth) and returns the URL
// prefix of its databases.
func startPG(t *testing.T) string {
	t.Helper()
	u := labtest.StartPostgres(t, labtest.PlainPostgres{})
	return strings.TrimSuffix(u, "postgres?sslmode=disable")
}
