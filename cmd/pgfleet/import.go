package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/migrate"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// importOptions are `pgfleet import`'s flags.
type importOptions struct {
	from    string
	jobs    int
	noRoles bool
	clean   bool

	online       bool // logical replication instead of a copy
	fullIdentity bool // --replica-identity-full
	status       bool
	cutover      bool
	lockSource   bool
	abort        bool
	json         bool
	timeout      time.Duration // how long --cutover waits for the lag to shrink
}

func newImportCmd(cf *clientFlags) *cobra.Command {
	var o importOptions
	cmd := &cobra.Command{
		Use:   "import NAME --from URL [--online | --status | --cutover [--lock-source] | --abort]",
		Short: "Copy a database from any PostgreSQL server into a cluster (offline in parallel, or online by logical replication)",
		Long: `Copy one database of an existing PostgreSQL server into cluster NAME: its
roles first (without superuser or replication attributes; --no-roles leaves
them and the objects' owners out), then its schema and data with pg_dump and
pg_restore in parallel (--jobs), straight into the cluster's primary. The
target database has the source's name and must hold no table, unless --clean
drops what the source also has. Every table's rows are counted on both sides
at the end.

Give the source's password in PGPASSWORD (or a ~/.pgpass) rather than in the
URL, which ` + "`ps`" + ` shows. Writes to the source made during the import are not
copied: stop the app, or make the source read-only, first. Import only from a
source you trust: its dump is restored as the cluster's superuser, so its
functions, defaults and index expressions run with that power while it loads.

--online copies the schema, then lets the cluster's primary subscribe to a
publication of the source (logical replication), which copies the data and
then follows every change while the app keeps writing to the source. It
checks first that the source can (wal_level=logical, free slots and
walsenders, a role with REPLICATION, tables with a primary key or replica
identity; --replica-identity-full sets FULL on those without) and says what
to change. --status shows the initial copy's progress, then the lag (--json).
--cutover waits until the lag is nearly zero, with --lock-source makes the
source database read-only and ends its sessions, waits for the last change,
copies the sequences' values, drops the subscription, the source's slot and
publication, and reports the write pause. --abort drops all of that and
leaves the copied data. All of them take the same --from: the import's
state is its subscription in the cluster and its publication and slot on
the source, named pgfleet_import_<database>. The cluster's primary connects
to the source with --from's URL and password, which PostgreSQL keeps in the
subscription's catalog row (readable by superusers only) until the cutover
or abort drops it.`,
		Args: exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.from == "" {
				return usageError{errors.New("--from: give the source's URL, postgres://USER@HOST:PORT/DATABASE")}
			}
			if _, err := migrate.SplitURL(o.from); err != nil {
				return usageError{fmt.Errorf("--from: %w", err)}
			}
			modes := 0
			for _, on := range []bool{o.online, o.status, o.cutover, o.abort} {
				if on {
					modes++
				}
			}
			if modes > 1 {
				return usageError{errors.New("give one of --online, --status, --cutover and --abort")}
			}
			if o.lockSource && !o.cutover {
				return usageError{errors.New("--lock-source goes with --cutover")}
			}
			if o.json && !o.status {
				return usageError{errors.New("--json goes with --status")}
			}
			if o.fullIdentity && !o.online {
				return usageError{errors.New("--replica-identity-full goes with --online")}
			}
			if o.jobs < 1 || o.jobs > 32 {
				return usageError{fmt.Errorf("--jobs %d: want 1 to 32", o.jobs)}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
			switch {
			case o.online:
				return runImportOnline(cmd.Context(), c, args[0], o, out, errw)
			case o.status:
				return runImportStatus(cmd.Context(), c, args[0], o, out)
			case o.cutover:
				return runImportCutover(cmd.Context(), c, args[0], o, out, errw)
			case o.abort:
				return runImportAbort(cmd.Context(), c, args[0], o, out)
			}
			return runImport(cmd.Context(), c, args[0], o, out, errw)
		},
	}
	cmd.Flags().StringVar(&o.from, "from", "", "the source database's URL (required)")
	cmd.Flags().IntVar(&o.jobs, "jobs", 2, "parallel pg_dump and pg_restore workers")
	cmd.Flags().BoolVar(&o.noRoles, "no-roles", false, "copy no roles; objects belong to the cluster's superuser")
	cmd.Flags().BoolVar(&o.clean, "clean", false, "drop the target's objects that the source also has before loading")
	cmd.Flags().BoolVar(&o.online, "online", false, "import by logical replication while the source stays in use")
	cmd.Flags().BoolVar(&o.fullIdentity, "replica-identity-full", false, "with --online: give the source's tables without a primary key REPLICA IDENTITY FULL")
	cmd.Flags().BoolVar(&o.status, "status", false, "show an online import's progress and lag")
	cmd.Flags().BoolVar(&o.json, "json", false, "with --status: print JSON")
	cmd.Flags().BoolVar(&o.cutover, "cutover", false, "finish an online import: wait for the last change, copy sequences, drop the replication")
	cmd.Flags().BoolVar(&o.lockSource, "lock-source", false, "with --cutover: make the source database read-only and end its sessions first")
	cmd.Flags().BoolVar(&o.abort, "abort", false, "stop an online import and drop its subscription, slot and publication")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 10*time.Minute, "with --cutover: how long to wait for the initial copy and the lag")
	return cmd
}

// connect opens a connection that gives up within 5 s.
func connect(ctx context.Context, rawURL, what string) (*pgx.Conn, error) {
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

func runImport(ctx context.Context, c *api.Client, name string, o importOptions, out, errw io.Writer) error {
	start := time.Now()
	bin, err := postgres.FindBin("")
	if err != nil {
		return err
	}
	src, err := connect(ctx, o.from, "the source")
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
	admin, err := connect(ctx, pu.URL, "the cluster's primary")
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
		dst, err := connect(ctx, dstURL, "the cluster's database "+db)
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
	if err := migrate.Check(srcInfo, dstInfo, o.clean); err != nil {
		return fmt.Errorf("import into %s refused, nothing changed: %w", name, err)
	}
	fmt.Fprintf(out, "importing database %s (%s, PostgreSQL %d) into cluster %s (primary %s)\n", db, fleet.FormatBytes(srcInfo.Bytes), srcInfo.VersionNum/10000, name, v.Primary)

	if !o.noRoles {
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
	srcConn, _ := migrate.SplitURL(o.from)
	if srcConn.Password == "" {
		srcConn.Password = src.Config().Password // from PGPASSWORD or a passfile
	}
	dstConn, err := migrate.SplitURL(dstURL)
	if err != nil {
		return err
	}
	dump := work + "/dump"
	t0 := time.Now()
	if err := tool.Dump(ctx, srcConn, dump, o.jobs); err != nil {
		return err
	}
	total, err := tool.TableData(ctx, dump)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "dumped %d table(s) in %s\n", total, time.Since(t0).Round(100*time.Millisecond))
	t0 = time.Now()
	done := 0
	progress := newLineProgress(out)
	err = tool.Restore(ctx, dstConn, dump, migrate.RestoreOptions{
		Jobs: o.jobs, Clean: o.clean, NoOwner: o.noRoles,
		Table: func(table string) {
			done++
			progress.show(fmt.Sprintf("restoring: table %d of %d (%s)", done, total, table))
		},
	})
	progress.end()
	if err != nil {
		return fmt.Errorf("%w (the target database %s may hold part of the data: run the import again with --clean)", err, db)
	}
	fmt.Fprintf(out, "restored in %s\n", time.Since(t0).Round(100*time.Millisecond))

	dst, err := connect(ctx, dstURL, "the cluster's database "+db)
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())
	if _, err := dst.Exec(ctx, "ANALYZE"); err != nil {
		return fmt.Errorf("analyze the imported tables: %w", err)
	}
	srcCounts, err := migrate.CountRows(ctx, src)
	if err != nil {
		return err
	}
	dstCounts, err := migrate.CountRows(ctx, dst)
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

// lineProgress shows a changing line in place on a terminal, and each
// tenth step as a line of its own elsewhere.
type lineProgress struct {
	w    io.Writer
	tty  bool
	n    int
	last string
}

func newLineProgress(w io.Writer) *lineProgress {
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
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", s)
	} else if p.n%10 == 1 {
		fmt.Fprintln(p.w, s)
	}
}

func (p *lineProgress) end() {
	if p.tty && p.n > 0 {
		fmt.Fprintln(p.w)
	}
}
