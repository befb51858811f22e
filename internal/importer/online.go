package importer

import (
	"bytes"
	"context"
	"errors"
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

// cutoverMaxLag is how far behind the source the cluster may be when a
// cutover locks the source: applying this much is the bulk of the pause
// (a few hundred ms for 256 kB of small transactions on a loaded 2-core
// host, most of it the subscriber's WAL flush before it confirms).
const cutoverMaxLag = 256 << 10

// onlineImport is an online import's two ends, as one run of the CLI
// sees them.
type onlineImport struct {
	name    string // the cluster
	db      string // the database, on both sides
	obj     string // publication, slot and subscription name
	src     *pgx.Conn
	primary string // the cluster's primary member
	sync    bool   // the cluster runs in sync mode
	dstURL  string // the cluster's primary, database db, as superuser
}

func (im *onlineImport) close() {
	if im.src != nil {
		im.src.Close(context.Background())
	}
}

// openOnline connects to the source and finds the cluster's primary. The
// import's state needs nothing else: its name comes from the database's.
func openOnline(ctx context.Context, c *api.Client, name, from string) (*onlineImport, error) {
	src, err := Connect(ctx, from, "the source")
	if err != nil {
		return nil, err
	}
	im := &onlineImport{name: name, src: src, db: src.Config().Database}
	if im.db == "" {
		im.db = "postgres"
	}
	im.obj = migrate.ObjectName(im.db)
	v, err := c.Cluster(ctx, name)
	if err != nil {
		im.close()
		return nil, err
	}
	if v.Primary == "" {
		im.close()
		return nil, fmt.Errorf("cluster %s has no primary now: wait for `pgfleet status %s` to show one", name, name)
	}
	pu, err := c.URL(ctx, name, v.Primary)
	if err != nil {
		im.close()
		return nil, err
	}
	im.primary = v.Primary
	im.sync = v.Sync != "" && v.Sync != fleet.SyncOff
	if im.dstURL, err = withDatabase(pu.URL, im.db); err != nil {
		im.close()
		return nil, err
	}
	return im, nil
}

// target connects to the import's database in the cluster.
func (im *onlineImport) target(ctx context.Context) (*pgx.Conn, error) {
	return Connect(ctx, im.dstURL, "the cluster's database "+im.db)
}

// importTarget connects to the import's database in the cluster, which
// must exist: without it there is no import.
func (im *onlineImport) importTarget(ctx context.Context) (*pgx.Conn, error) {
	dst, err := im.target(ctx)
	if noDatabase(err) {
		return nil, errNoImport(im)
	}
	return dst, err
}

// noDatabase reports whether err says the database does not exist.
func noDatabase(err error) bool {
	var pgErr interface{ SQLState() string }
	return errors.As(err, &pgErr) && pgErr.SQLState() == "3D000"
}

// progress reads where the import stands; ok is false when the cluster has
// no subscription for it.
func (im *onlineImport) progress(ctx context.Context, dst *pgx.Conn) (migrate.Progress, migrate.Subscription, bool, error) {
	sub, ok, err := migrate.FindSubscription(ctx, dst, im.obj)
	if err != nil || !ok {
		return migrate.Progress{}, sub, ok, err
	}
	p := migrate.Summarize(sub.States, sub.Enabled, sub.Running)
	p.Cluster, p.Database, p.Subscription = im.name, im.db, im.obj
	p.SourceLSN, p.ConfirmedLSN, p.LagBytes, _, err = migrate.SourceLSN(ctx, im.src, im.obj)
	return p, sub, true, err
}

// workerStart bounds the wait for a new subscription's worker to start.
const workerStart = 5 * time.Second

// memberRootCert is where the subscription finds the fleet's CA on any
// member: root.crt beside the data directory (postgres.Instance.RootCertPath),
// named relative to the data directory, which is every backend's working
// directory. An absolute path would name one member's directory, and the
// subscription goes wherever the primary goes, through switchovers and
// failovers.
const memberRootCert = "../root.crt"

// subscriptionRootCert makes conninfo's sslrootcert one the cluster's
// primary can read, wherever it runs: the CLI's copy of the fleet's CA
// (a source that is another cluster of the fleet, from `pgfleet url`) is
// each member's own; a CA the primary has at the same path is kept; any
// other is refused, since the subscription could not verify the source.
func subscriptionRootCert(ctx context.Context, admin *pgx.Conn, conninfo string) (string, error) {
	u, err := url.Parse(conninfo)
	if err != nil {
		return "", err
	}
	q := u.Query()
	path := q.Get("sslrootcert")
	if path == "" || path == "system" {
		return conninfo, nil
	}
	mine, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read --from's sslrootcert: %w", err)
	}
	var fleetCA string
	if err := admin.QueryRow(ctx, "SELECT pg_read_file($1)", memberRootCert).Scan(&fleetCA); err != nil {
		return "", fmt.Errorf("read the fleet's CA on the cluster's primary: %w", err)
	}
	if m := bytes.TrimSpace(mine); len(m) > 0 && bytes.Contains([]byte(fleetCA), m) {
		q.Set("sslrootcert", memberRootCert)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	var there bool
	if err := admin.QueryRow(ctx, "SELECT pg_stat_file($1, true) IS NOT NULL", path).Scan(&there); err != nil {
		return "", fmt.Errorf("look for --from's sslrootcert on the cluster's primary: %w", err)
	}
	if !there {
		return "", fmt.Errorf("--from's sslrootcert %s is not the fleet's CA, and the subscription connects to the source from the cluster's primary, which has no file %s: copy it to that path on every host of the cluster, readable by the postgres OS user, or use sslmode=require (encrypted, the source's certificate not verified)", path, path)
	}
	return conninfo, nil
}

// subscriptionConninfo is the connection string the cluster's primary
// uses to reach the source: --from's URL with the password the CLI
// connected with (PGPASSWORD or a passfile included), since the primary
// has neither. It never reaches a command line or a log.
func subscriptionConninfo(from, user, password string) (string, error) {
	u, err := url.Parse(from)
	if err != nil {
		return "", err
	}
	// The user too: the URL may leave it to the CLI's defaults (PGUSER, the
	// OS user), which the primary does not share.
	u.User = url.User(user)
	if password != "" {
		u.User = url.UserPassword(user, password)
	}
	q := u.Query()
	if q.Get("connect_timeout") == "" {
		q.Set("connect_timeout", "10")
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// Online starts an online import: checks, roles, schema,
// publication, subscription. Run again while one is under way, it only
// shows its progress: the subscription resumes by itself.
func Online(ctx context.Context, c *api.Client, name string, o Options, out, errw io.Writer) error {
	im, err := openOnline(ctx, c, name, o.From)
	if err != nil {
		return err
	}
	defer im.close()
	admin, err := Connect(ctx, withDB(im.dstURL, "postgres"), "the cluster's primary")
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", im.db).Scan(&exists); err != nil {
		return err
	}
	if exists {
		dst, err := im.target(ctx)
		if err != nil {
			return err
		}
		p, _, ok, err := im.progress(ctx, dst)
		dst.Close(context.Background())
		if err != nil {
			return err
		}
		if ok {
			fmt.Fprintf(out, "an online import of %s into cluster %s is under way already:\n", im.db, name)
			PrintProgress(out, p)
			return nil
		}
	}

	repl, tables, err := migrate.InspectReplication(ctx, im.src)
	if err != nil {
		return err
	}
	if err := migrate.CheckOnline(repl, tables, o.FullIdentity); err != nil {
		return fmt.Errorf("online import into %s refused, nothing changed: %w", name, err)
	}
	srcInfo, err := migrate.InspectSource(ctx, im.src)
	if err != nil {
		return err
	}
	dstInfo, err := migrate.InspectTarget(ctx, admin)
	if err != nil {
		return err
	}
	dstInfo.UserTables = 0
	if exists {
		dst, err := im.target(ctx)
		if err != nil {
			return err
		}
		t, err := migrate.InspectTarget(ctx, dst)
		dst.Close(context.Background())
		if err != nil {
			return err
		}
		dstInfo.UserTables = t.UserTables
	}
	if err := migrate.Check(srcInfo, dstInfo, o.Clean); err != nil {
		return fmt.Errorf("online import into %s refused, nothing changed: %w", name, err)
	}
	conninfo, err := subscriptionConninfo(o.From, im.src.Config().User, im.src.Config().Password)
	if err == nil {
		conninfo, err = subscriptionRootCert(ctx, admin, conninfo)
	}
	if err != nil {
		return fmt.Errorf("online import into %s refused, nothing changed: %w", name, err)
	}
	fmt.Fprintf(out, "importing database %s (%s, PostgreSQL %d) online into cluster %s (primary %s)\n", im.db, fleet.FormatBytes(srcInfo.Bytes), srcInfo.VersionNum/10000, name, im.primary)

	if !o.NoRoles {
		if err := importRoles(ctx, im.src, admin, out, errw); err != nil {
			return err
		}
	}
	if !exists {
		if err := fleet.ValidateDatabaseName(im.db); err != nil && im.db != "postgres" {
			return fmt.Errorf("the source's database: %w", err)
		}
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{im.db}.Sanitize()); err != nil {
			return fmt.Errorf("create database %s: %w", im.db, err)
		}
	}
	if bad := migrate.Unidentified(tables); len(bad) > 0 {
		if err := migrate.SetFullIdentity(ctx, im.src, bad); err != nil {
			return err
		}
		fmt.Fprintf(out, "set REPLICA IDENTITY FULL on the source's %d table(s) without a primary key\n", len(bad))
	}

	// The schema, through the offline path's pg_dump adapter: its passfiles
	// keep the passwords off command lines.
	bin, err := postgres.FindBin("")
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "pgfleet-import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	tool := migrate.Tool{Bin: bin, Dir: work}
	srcConn, _ := migrate.SplitURL(o.From)
	if srcConn.Password == "" {
		srcConn.Password = im.src.Config().Password
	}
	dstConn, err := migrate.SplitURL(im.dstURL)
	if err != nil {
		return err
	}
	if err := tool.DumpSchema(ctx, srcConn, work+"/schema"); err != nil {
		return err
	}
	if err := tool.Restore(ctx, dstConn, work+"/schema", migrate.RestoreOptions{Jobs: 1, Clean: o.Clean, NoOwner: o.NoRoles}); err != nil {
		return fmt.Errorf("%w (the target database %s may hold part of the schema: run the import again with --clean)", err, im.db)
	}
	fmt.Fprintln(out, "copied the schema")

	if err := migrate.CreatePublication(ctx, im.src, im.obj, repl.Superuser); err != nil {
		return err
	}
	dst, err := im.target(ctx)
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())
	if err := migrate.CreateSubscription(ctx, dst, im.obj, conninfo, im.sync); err != nil {
		// Leave nothing on the source that would hold its WAL.
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = migrate.DropSlots(cctx, im.src, im.obj, 0)
		_ = migrate.DropPublication(cctx, im.src, im.obj)
		return fmt.Errorf("%w (the cluster's primary connects to the source with --from's URL: it must reach that host)", err)
	}
	fmt.Fprintf(out, "publication %s on the source, subscription %s in cluster %s: the initial copy runs\n", im.obj, im.obj, name)
	// The subscription's worker starts a moment after the subscription:
	// until then its progress would read as stopped.
	for deadline := time.Now().Add(workerStart); ; {
		p, _, _, err := im.progress(ctx, dst)
		if err != nil {
			break
		}
		if p.Phase != migrate.PhaseStopped || time.Now().After(deadline) {
			PrintProgress(out, p)
			break
		}
		if sleepCtx(ctx, 200*time.Millisecond) != nil {
			break
		}
	}
	fmt.Fprintf(out, "follow it with `pgfleet import %s --from URL --status`; finish with --cutover\n", name)
	return nil
}

// withDB returns rawURL naming database db; rawURL is one the API gave.
func withDB(rawURL, db string) string {
	s, err := withDatabase(rawURL, db)
	if err != nil {
		return rawURL
	}
	return s
}

// PrintProgress writes one line of where an online import stands.
func PrintProgress(out io.Writer, p migrate.Progress) {
	switch p.Phase {
	case migrate.PhaseCopying:
		fmt.Fprintf(out, "%s: initial copy, %d of %d table(s) done; lag %s\n", p.Subscription, p.TablesDone, p.Tables, fleet.FormatBytes(p.LagBytes))
	case migrate.PhaseStreaming:
		fmt.Fprintf(out, "%s: streaming, all %d table(s) copied; lag %s (source at %s, confirmed %s)\n", p.Subscription, p.Tables, fleet.FormatBytes(p.LagBytes), p.SourceLSN, p.ConfirmedLSN)
	default:
		fmt.Fprintf(out, "%s: stopped (no worker runs on the cluster's primary; see its log), %d of %d table(s) copied; lag %s\n", p.Subscription, p.TablesDone, p.Tables, fleet.FormatBytes(p.LagBytes))
	}
}

// errNoImport answers a --status, --cutover or --abort without an import.
func errNoImport(im *onlineImport) error {
	return fmt.Errorf("no online import of database %s into cluster %s: start one with `pgfleet import %s --from URL --online` (--abort drops whatever an interrupted one left on the source)", im.db, im.name, im.name)
}

// Status reads where the online import from database from into cluster
// name stands.
func Status(ctx context.Context, c *api.Client, name, from string) (migrate.Progress, error) {
	im, err := openOnline(ctx, c, name, from)
	if err != nil {
		return migrate.Progress{}, err
	}
	defer im.close()
	dst, err := im.importTarget(ctx)
	if err != nil {
		return migrate.Progress{}, err
	}
	defer dst.Close(context.Background())
	p, _, ok, err := im.progress(ctx, dst)
	if err != nil {
		return migrate.Progress{}, err
	}
	if !ok {
		return migrate.Progress{}, errNoImport(im)
	}
	return p, nil
}

// Cutover finishes an online import. The pause it reports runs
// from the moment the source stops taking writes to the moment the
// cluster's sequences are set, when the app may write to the cluster.
func Cutover(ctx context.Context, c *api.Client, name string, o Options, out, errw io.Writer) error {
	im, err := openOnline(ctx, c, name, o.From)
	if err != nil {
		return err
	}
	defer im.close()
	dst, err := im.importTarget(ctx)
	if err != nil {
		return err
	}
	defer dst.Close(context.Background())

	// Catch up while the source still takes writes.
	deadline := time.Now().Add(o.Timeout)
	var last string
	var lastAt time.Time
	var sub migrate.Subscription
	for {
		p, s, ok, err := im.progress(ctx, dst)
		if err != nil {
			return err
		}
		if !ok {
			return errNoImport(im)
		}
		sub = s
		ready, why := migrate.ReadyToLock(p, cutoverMaxLag)
		if ready {
			break
		}
		if kind := strings.Fields(why)[0]; kind != last || time.Since(lastAt) > 5*time.Second {
			fmt.Fprintf(out, "waiting: %s\n", why)
			last, lastAt = kind, time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cutover: not caught up after %s (%s); nothing changed, run it again", o.Timeout, why)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}

	start := time.Now()
	if o.LockSource {
		ended, err := migrate.LockSource(ctx, im.src, im.db)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "source database %s is read-only now; ended %d session(s)\n", im.db, ended)
	} else {
		fmt.Fprintln(errw, "note: without --lock-source, writes the source takes from now on are not copied")
	}
	// Everything written so far ends before this position; once the
	// cluster has confirmed it, the cluster holds every change.
	var lsn string
	if err := im.src.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		return unlockOnError(im, o, fmt.Errorf("read the source's WAL position: %w", err))
	}
	locked := time.Since(start)
	if err := waitConfirmed(ctx, im, dst, lsn, 30*time.Second); err != nil {
		return unlockOnError(im, o, err)
	}
	applied := time.Since(start)
	copied, missing, err := migrate.CopySequences(ctx, im.src, dst)
	if err != nil {
		return unlockOnError(im, o, err)
	}
	pause := time.Since(start)
	for _, m := range missing {
		fmt.Fprintf(errw, "note: sequence %s is not in the cluster: its value was not copied\n", m)
	}

	// The replication's end: the subscription, whose DROP also drops the
	// source's slot, then anything left on the source.
	if err := migrate.DropSubscription(ctx, dst, im.obj, true); err != nil {
		return err
	}
	if _, err := migrate.DropSlots(ctx, im.src, im.obj, sub.OID); err != nil {
		return err
	}
	if err := migrate.DropPublication(ctx, im.src, im.obj); err != nil {
		return err
	}
	verb := "writes were paused for"
	if !o.LockSource {
		verb = "the cutover took"
	}
	fmt.Fprintf(out, "cutover done at %s: %s %s (lock %s, last change applied %s, sequences %s); copied %d sequence value(s); dropped subscription, slot and publication %s\n",
		lsn, verb, pause.Round(time.Millisecond), locked.Round(time.Millisecond), (applied - locked).Round(time.Millisecond), (pause - applied).Round(time.Millisecond), copied, im.obj)
	if o.LockSource {
		fmt.Fprintf(out, "the source database stays read-only; undo with ALTER DATABASE %s RESET default_transaction_read_only\n", pgx.Identifier{im.db}.Sanitize())
	}
	return nil
}

// unlockOnError makes a locked source writable again when the cutover
// fails before the cluster took over.
func unlockOnError(im *onlineImport, o Options, err error) error {
	if !o.LockSource {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if uerr := migrate.UnlockSource(ctx, im.src, im.db); uerr != nil {
		return fmt.Errorf("%w; and the source stays read-only: %v", err, uerr)
	}
	return fmt.Errorf("%w; the source is writable again and the import goes on: run --cutover again", err)
}

// waitConfirmed waits until the source's slot is confirmed up to lsn,
// hurrying the confirmation on both ends (migrate.Nudge): left alone, the
// last applied changes wait for the primary's WAL writer and then for the
// apply worker's next report, which together take up to a second or so.
func waitConfirmed(ctx context.Context, im *onlineImport, dst *pgx.Conn, lsn string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	nudge := migrate.Nudger(im.src, dst)
	for {
		nudge(ctx)
		ok, err := migrate.SlotConfirmed(ctx, im.src, im.obj, lsn)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			_, confirmed, _, _, _ := migrate.SourceLSN(ctx, im.src, im.obj)
			return fmt.Errorf("cutover: the cluster has not confirmed the source's last change (%s) within %s; it confirmed %s", lsn, timeout, confirmed)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Abort stops an online import, wherever it got to: the
// subscription goes (with its slot), then whatever the source still holds
// of it. The data copied so far stays in the cluster. It needs the source:
// an abort that could not drop the source's slot would leave it holding
// the source's WAL, so then it changes nothing.
func Abort(ctx context.Context, c *api.Client, name, from string, out io.Writer) error {
	im, err := openOnline(ctx, c, name, from)
	if err != nil {
		return err
	}
	defer im.close()
	var subOID uint32
	dropped := false
	dst, err := im.target(ctx)
	switch {
	case err == nil:
		defer dst.Close(context.Background())
		sub, ok, err := migrate.FindSubscription(ctx, dst, im.obj)
		if err != nil {
			return err
		}
		if ok {
			subOID = sub.OID
			if err := migrate.DropSubscription(ctx, dst, im.obj, true); err != nil {
				return err
			}
			dropped = true
		}
	case noDatabase(err): // nothing to drop in the cluster
	default:
		return err
	}
	slots, err := migrate.DropSlots(ctx, im.src, im.obj, subOID)
	if err != nil {
		return err
	}
	if err := migrate.DropPublication(ctx, im.src, im.obj); err != nil {
		return err
	}
	if !dropped && slots == 0 {
		fmt.Fprintf(out, "no subscription %s in cluster %s; the source holds no slot of it and no publication any more\n", im.obj, name)
		return nil
	}
	fmt.Fprintf(out, "aborted: dropped subscription %s and the source's slot and publication; the data copied so far stays in %s/%s (run the import again with --clean to start over)\n", im.obj, name, im.db)
	return nil
}
