// Package importer copies a database from any PostgreSQL server into a
// pgfleet cluster: offline with pg_dump and pg_restore, or online with a
// publication on the source and a subscription on the cluster's primary.
// It is the adapter that runs those tools and pgx against both ends; the
// decisions (does the source fit, which roles, is the copy whole, may the
// cutover lock) are internal/migrate's. The CLI (`pgfleet import`,
// `create --import-from`) and the web console both run it, with an API
// client to find the cluster's primary.
package importer

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/migrate"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// Options are an import's settings, `pgfleet import`'s flags.
type Options struct {
	From         string // the source database's URL
	Jobs         int    // parallel pg_dump and pg_restore workers
	NoRoles      bool   // copy no roles
	Clean        bool   // drop the target's objects the source also has
	FullIdentity bool   // online: REPLICA IDENTITY FULL on tables without a key
	LockSource   bool   // cutover: make the source read-only first
	// Timeout is how long a cutover waits for the initial copy and the lag.
	Timeout time.Duration
}

// connect opens a connection that gives up within 5 s.
func Connect(ctx context.Context, rawURL, what string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	cfg.ConnectTimeout = 5 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", what, err)
	}
	return conn, nil
}

// withDatabase returns rawURL naming database db.
func withDatabase(rawURL, db string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	u.Path = "/" + db
	return u.String(), nil
}

// Offline copies database From's schema and data into cluster name's
// primary with pg_dump and pg_restore in parallel, roles first unless
// NoRoles, then compares every table's row count. It writes its progress
// to out and its notes to errw.
func Offline(ctx context.Context, c *api.Client, name string, o Options, out, errw io.Writer) error {
	start := time.Now()
	bin, err := postgres.FindBin("")
	if err != nil {
		return err
	}
	src, err := Connect(ctx, o.From, "the source")
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	db := src.Config().Database
	if db == "" {
		db = "postgres"
	}
	srcInfo, err := migrate.InspectSource(ctx, src)
	if err != nil {
		return err
	}

	v, err := c.Cluster(ctx, name)
	if err != nil {
		return err
	}
	if v.Primary == "" {
		return fmt.Errorf("cluster %s has no primary now: wait for `pgfleet status %s` to show one", name, name)
	}
	pu, err := c.URL(ctx, name, v.Primary)
	if err != nil {
		return err
	}
	admin, err := Connect(ctx, pu.URL, "the cluster's primary")
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
		return err
	}
	dstURL, err := withDatabase(pu.URL, db)
	if err != nil {
		return err
	}
	var dstInfo migrate.Target
	if exists {
		dst, err := Connect(ctx, dstURL, "the cluster's database "+db)
		if err != nil {
			return err
		}
		dstInfo, err = migrate.InspectTarget(ctx, dst)
		dst.Close(context.Background())
		if err != nil {
			return err
		}
	} else if dstInfo, err = migrate.InspectTarget(ctx, admin); err != nil {
		return err
	} else {
		dstInfo.UserTables = 0
	}
	if err := migrate.Check(srcInfo, dstInfo, o.Clean); err != nil {
		return fmt.Errorf("import into %s refused, nothing changed: %w", name, err)
	}
	fmt.Fprintf(out, "importing database %s (%s, PostgreSQL %d) into cluster %s (primary %s)\n", db, fleet.FormatBytes(srcInfo.Bytes), srcInfo.VersionNum/10000, name, v.Primary)

	if !o.NoRoles {
		if err := importRoles(ctx, src, admin, out, errw); err != nil {
			return err
		}
	}
	if !exists {
		if err := fleet.ValidateDatabaseName(db); err != nil && db != "postgres" {
			return fmt.Errorf("the source's database: %w", err)
		}
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
			return fmt.Errorf("create database %s: %w", db, err)
		}
	}

	work, err := os.MkdirTemp("", "pgfleet-import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	tool := migrate.Tool{Bin: bin, Dir: work}
	srcConn, _ := migrate.SplitURL(o.From)
	if srcConn.Password == "" {
		srcConn.Password = src.Config().Password // from PGPASSWORD or a passfile
	}
	dstConn, err := migrate.SplitURL(dstURL)
	if err != nil {
		return err
	}
	done := 0
	progress := newLineProgress(out)
	copied, err := tool.Copy(ctx, srcConn, dstConn, migrate.CopyOptions{
		Jobs: o.Jobs, Clean: o.Clean, NoOwner: o.NoRoles,
		Table: func(table string, total int) {
			done++
			progress.show(fmt.Sprintf("loading: table %d of %d (%s)", done, total, table))
		},
		Step: func(line string) { progress.end(); progress.n = 0; fmt.Fprintln(out, line) },
	})
	progress.end()
	if err != nil {
		return fmt.Errorf("%w (the target database %s may hold part of the data: run the import again with --clean)", err, db)
	}

	srcCounts := copied.Source
	if srcCounts == nil {
		t0 := time.Now()
		if srcCounts, err = migrate.CountTables(ctx, src, nil); err != nil {
			return fmt.Errorf("count the source's rows: %w", err)
		}
		fmt.Fprintf(out, "counted the source's rows in %s\n", time.Since(t0).Round(100*time.Millisecond))
	}
	dstCounts, err := checkTarget(ctx, dstConn, dstURL, db, o.Jobs, copied.Loaded, out)
	if err != nil {
		return err
	}
	counts := migrate.Compare(srcCounts, dstCounts)
	var rows int64
	fmt.Fprintf(out, "%-40s %12s %12s\n", "TABLE", "SOURCE", "CLUSTER")
	for _, tc := range counts {
		fmt.Fprintf(out, "%-40s %12d %12d\n", tc.Table, tc.Source, tc.Target)
		rows += tc.Source
	}
	if bad := migrate.Mismatches(counts); len(bad) > 0 {
		var names []string
		for _, b := range bad {
			names = append(names, b.Table)
		}
		return fmt.Errorf("row counts differ for %s: was the source written to during the import? Stop its writers and run the import again with --clean", strings.Join(names, ", "))
	}
	fmt.Fprintf(out, "imported %d table(s), %d row(s) into %s/%s in %s; every table's row count matches\n", len(counts), rows, name, db, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// checkTarget gathers the planner's statistics of the imported tables
// (migrate.Analyze, jobs sessions) and, beside them in a session of its
// own, counts the cluster's rows: loaded holds the streamed tables' rows
// from the COPY commands that loaded them, so only the other tables are
// scanned.
func checkTarget(ctx context.Context, dstConn migrate.Conn, dstURL, db string, jobs int, loaded map[string]int64, out io.Writer) (map[string]int64, error) {
	t0 := time.Now()
	dst, err := Connect(ctx, dstURL, "the cluster's database "+db)
	if err != nil {
		return nil, err
	}
	defer dst.Close(context.Background())
	type analyzed struct {
		tables int
		took   time.Duration
		err    error
	}
	done := make(chan analyzed, 1)
	go func() {
		n, err := migrate.Analyze(ctx, dstConn, jobs)
		done <- analyzed{n, time.Since(t0), err}
	}()
	counts, cerr := migrate.CountTables(ctx, dst, loaded)
	counted := time.Since(t0)
	a := <-done
	if a.err != nil {
		return nil, fmt.Errorf("analyze the imported tables: %w", a.err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("count the cluster's rows: %w", cerr)
	}
	fmt.Fprintf(out, "analyzed %d table(s) in %s by %d session(s); counted the cluster's rows beside in %s\n",
		a.tables, a.took.Round(100*time.Millisecond), max(min(jobs, a.tables), 1), counted.Round(100*time.Millisecond))
	return counts, nil
}

// importRoles makes the source's roles in the cluster (migrate.RoleStatements).
func importRoles(ctx context.Context, src, admin *pgx.Conn, out, errw io.Writer) error {
	roles, members, notes, err := migrate.SourceRoles(ctx, src)
	if err != nil {
		return err
	}
	existing, err := migrate.RoleNames(ctx, admin)
	if err != nil {
		return err
	}
	stmts, more := migrate.RoleStatements(roles, members, existing, fleet.OwnedRole)
	// The statements quote with '' only: make sure the session reads them so.
	if _, err := admin.Exec(ctx, "SET standard_conforming_strings = on"); err != nil {
		return fmt.Errorf("copy roles: %w", err)
	}
	for _, s := range stmts {
		if _, err := admin.Exec(ctx, s); err != nil {
			// The statement may carry a password: name the role, not the SQL.
			return fmt.Errorf("copy roles: %v", err)
		}
	}
	for _, n := range append(notes, more...) {
		fmt.Fprintln(errw, "note:", n)
	}
	created := 0
	for _, s := range stmts {
		if strings.HasPrefix(s, "CREATE ROLE ") {
			created++
		}
	}
	fmt.Fprintf(out, "copied %d role(s)\n", created)
	return nil
}

// Liner is a progress writer that shows a changing line in place, as a
// terminal does (the console's page is one): Offline gives it every step
// of the restore rather than each tenth as a line of its own.
type Liner interface {
	ShowLine(s string)
}

// lineProgress shows a changing line in place on a terminal or a Liner,
// and each tenth step as a line of its own elsewhere.
type lineProgress struct {
	w     io.Writer
	liner Liner
	tty   bool
	n     int
	last  string
}

func newLineProgress(w io.Writer) *lineProgress {
	if l, ok := w.(Liner); ok {
		return &lineProgress{w: w, liner: l}
	}
	f, ok := w.(*os.File)
	tty := false
	if ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &lineProgress{w: w, tty: tty}
}

func (p *lineProgress) show(s string) {
	p.n++
	p.last = s
	switch {
	case p.liner != nil:
		p.liner.ShowLine(s)
	case p.tty:
		fmt.Fprintf(p.w, "\r\033[K%s", s)
	case p.n%10 == 1:
		fmt.Fprintln(p.w, s)
	}
}

func (p *lineProgress) end() {
	if p.tty && p.n > 0 {
		fmt.Fprintln(p.w)
	}
}
