package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/postgres"
)

// The tests here run real PostgreSQL 15 servers (as the postgres OS user
// when the tests run as root), which archive through archive_command and
// restore through restore_command running this test binary as `wal-push`
// and `wal-fetch` (see TestMain).

const testPassword = "backup test password"

// pgTest is what the postgres tests share.
type pgTest struct {
	t      *testing.T
	bin    postgres.Bin
	user   postgres.OSUser
	dir    string // traversable by the postgres user
	helper string // a copy of the test binary the postgres user can run
	log    *slog.Logger
}

func newPGTest(t *testing.T) *pgTest {
	t.Helper()
	bin, err := postgres.FindBin("")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("FindBin: %v", err)
		}
		t.Skipf("FindBin: %v", err)
	}
	u, err := postgres.CurrentOrPostgres()
	if err != nil {
		t.Fatalf("CurrentOrPostgres: %v", err)
	}
	pt := &pgTest{t: t, bin: bin, user: u, dir: t.TempDir()}
	// t.TempDir's parent is 0700 (and root's, as root): open both up so
	// the postgres user can reach its data directories.
	for _, d := range []string{pt.dir, filepath.Dir(pt.dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pt.helper = filepath.Join(pt.dir, "pgfleet-test-helper")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pt.helper, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sink := &logSink{t: t}
	t.Cleanup(sink.close)
	pt.log = slog.New(slog.NewTextHandler(sink, nil))
	return pt
}

// logSink echoes log lines to the test log while the test runs.
type logSink struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done {
		s.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (s *logSink) close() {
	s.mu.Lock()
	s.done = true
	s.mu.Unlock()
}

// own gives path to the postgres user.
func (pt *pgTest) own(path string) {
	if os.Geteuid() == 0 {
		if err := os.Chown(path, pt.user.UID, pt.user.GID); err != nil {
			pt.t.Fatal(err)
		}
	}
}

// pgServer is a running postgres under test.
type pgServer struct {
	inst *postgres.Instance
	port int
	name string
}

func (s *pgServer) connInfo() postgres.ConnInfo {
	return postgres.ConnInfo{Host: "127.0.0.1", Port: s.port, User: "postgres", Password: testPassword, Database: "postgres"}
}

func (s *pgServer) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := postgres.Connect(ctx, s.connInfo())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %s: %v", s.name, sql, err)
	}
}

func (s *pgServer) query(t *testing.T, sql string, dst ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := postgres.Connect(ctx, s.connInfo())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql).Scan(dst...); err != nil {
		t.Fatalf("%s: %s: %v", s.name, sql, err)
	}
}

// switchAndWaitArchived ends the current WAL segment and waits until
// postgres has archived it.
func (s *pgServer) switchAndWaitArchived(t *testing.T) string {
	t.Helper()
	var seg string
	s.query(t, "SELECT pg_walfile_name(pg_switch_wal())", &seg)
	waitFor(t, 60*time.Second, "segment "+seg+" archived", func() (bool, string) {
		var last string
		var failed int64
		s.query(t, "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver", &last, &failed)
		return last >= seg, fmt.Sprintf("last archived %q, %d failures", last, failed)
	})
	return seg
}

// newInstance configures data directory name (which must hold a cluster
// unless init) with extra settings in postgresql.auto.conf, and starts it.
// With recovery, recovery.signal is created first.
func (pt *pgTest) start(name string, init, recovery bool, conf map[string]string) *pgServer {
	t := pt.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := &pgServer{name: name, port: freePort(t)}
	s.inst = postgres.New(postgres.Config{Bin: pt.bin, DataDir: filepath.Join(pt.dir, name), User: pt.user, Logger: pt.log.With("member", name)})
	if init {
		if err := s.inst.InitDB(ctx, testPassword); err != nil {
			t.Fatalf("InitDB: %v", err)
		}
	}
	if err := s.inst.Configure(postgres.Settings{Name: name, ListenAddr: "127.0.0.1", Port: s.port}); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	// The settings go to postgresql.auto.conf, which wins over pgfleet's
	// configuration; a restored copy gets its own, not its source's.
	var b strings.Builder
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(conf[k], "'", "''"))
	}
	auto := filepath.Join(s.inst.DataDir(), "postgresql.auto.conf")
	if err := os.WriteFile(auto, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	pt.own(auto)
	if recovery {
		sig := filepath.Join(s.inst.DataDir(), "recovery.signal")
		if err := os.WriteFile(sig, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		pt.own(sig)
	}
	if err := s.inst.Start(ctx); err != nil {
		t.Fatalf("Start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := s.inst.Stop(30 * time.Second); err != nil {
			t.Errorf("Stop %s: %v", name, err)
		}
	})
	return s
}

// basebackup runs `pg_basebackup -D - -Ft -X none` against s as the postgres
// user and returns its standard output and its Wait.
func (pt *pgTest) basebackup(ctx context.Context, s *pgServer) (io.Reader, func() error) {
	t := pt.t
	t.Helper()
	pass := filepath.Join(pt.dir, "pgpass-"+s.name)
	if err := os.WriteFile(pass, []byte(fmt.Sprintf("127.0.0.1:%d:*:postgres:%s\n", s.port, testPassword)), 0o600); err != nil {
		t.Fatal(err)
	}
	pt.own(pass)
	cmd := exec.CommandContext(ctx, pt.bin.Path("pg_basebackup"), "-h", "127.0.0.1", "-p", fmt.Sprint(s.port), "-U", "postgres",
		"--no-password", "-D", "-", "-Ft", "-X", "none", "--checkpoint=fast")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "PGPASSFILE="+pass, "PGSSLMODE=require", "HOME="+pt.user.Home, "LC_ALL=C")
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(pt.user.UID), Gid: uint32(pt.user.GID)}}
	}
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return out, func() error {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("pg_basebackup: %w: %s", err, stderr.String())
		}
		return nil
	}
}

// PushWAL and FetchWAL on segments a real postgres wrote: round trip,
// idempotence, refusal to overwrite, corruption, encryption.
func TestWALRealSegments(t *testing.T) {
	pt := newPGTest(t)
	src := pt.start("source", true, false, nil)
	const marker = "plaintext marker 5e1d"
	src.exec(t, "CREATE TABLE t (i int, note text)")
	src.exec(t, "INSERT INTO t SELECT g, $1 FROM generate_series(1, 2000) g", marker)
	first := src.switchWAL(t)
	src.exec(t, "INSERT INTO t SELECT g, 'more' FROM generate_series(1, 2000) g")
	second := src.switchWAL(t)

	walDir := filepath.Join(src.inst.DataDir(), "pg_wal")
	segA, err := os.ReadFile(filepath.Join(walDir, first))
	if err != nil {
		t.Fatal(err)
	}
	if len(segA) != DefaultWALSegmentSize || !bytes.Contains(segA, []byte(marker)) {
		t.Fatalf("segment %s: %d bytes, marker %v: not the segment the test expects", first, len(segA), bytes.Contains(segA, []byte(marker)))
	}
	// Copies, so that postgres recycling its segments does not change them.
	work := t.TempDir()
	cp := func(name, as string) string {
		b, err := os.ReadFile(filepath.Join(walDir, name))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(work, as)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pathA := cp(first, first)
	pathB := cp(second, second)
	impostor := cp(second, "impostor/"+first) // B's content under A's name

	storeDir := filepath.Join(t.TempDir(), "store")
	ctx := context.Background()
	for _, encrypted := range []bool{false, true} {
		var key *Key
		if encrypted {
			key = testKey(t)
		}
		a, err := NewArchive(openStore(t, fileURL(storeDir)), fmt.Sprintf("c-%v", encrypted), key)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{pathA, pathB, pathA} {
			if err := a.PushWAL(ctx, p); err != nil {
				t.Fatalf("encrypted %v: PushWAL(%s): %v", encrypted, filepath.Base(p), err)
			}
		}
		if err := a.PushWAL(ctx, impostor); !errors.Is(err, ErrConflict) {
			t.Errorf("encrypted %v: PushWAL(other segment under %s) = %v, want ErrConflict", encrypted, first, err)
		}
		key0 := filepath.Join(storeDir, filepath.FromSlash(a.walKey(walFile{name: first})))
		fi, err := os.Stat(key0)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("encrypted %v: a 16 MiB segment is stored in %d bytes", encrypted, fi.Size())
		dest := filepath.Join(work, "RECOVERYXLOG")
		for _, name := range []string{first, second} {
			if err := a.FetchWAL(ctx, name, dest); err != nil {
				t.Fatalf("FetchWAL(%s): %v", name, err)
			}
			want, _ := os.ReadFile(filepath.Join(work, name))
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, want) {
				t.Fatalf("FetchWAL(%s) differs from the segment pushed", name)
			}
		}
		stored, _ := os.ReadFile(key0)
		if encrypted && bytes.Contains(stored, []byte(marker)) {
			t.Errorf("the encrypted object contains the marker")
		}

		// Damage the stored object: fetching it fails and writes nothing.
		stored[len(stored)/3] ^= 0x10
		os.WriteFile(key0, stored, 0o600)
		os.Remove(dest)
		if err := a.FetchWAL(ctx, first, dest); !errors.Is(err, ErrCorrupt) {
			t.Errorf("encrypted %v: FetchWAL(corrupted) = %v, want ErrCorrupt", encrypted, err)
		}
		if _, err := os.Stat(dest); err == nil {
			t.Errorf("encrypted %v: FetchWAL(corrupted) wrote its destination", encrypted)
		}
		// Pushing the segment again does not paper over the damage.
		if err := a.PushWAL(ctx, pathA); err == nil {
			t.Errorf("encrypted %v: PushWAL over a corrupted copy succeeded", encrypted)
		}
	}
}

// switchWAL ends the current segment and returns its name. Without
// archiving, it stays in pg_wal until a checkpoint recycles it.
func (s *pgServer) switchWAL(t *testing.T) string {
	t.Helper()
	var seg string
	s.query(t, "SELECT pg_walfile_name(pg_switch_wal())", &seg)
	return seg
}

// A base backup from a real postgres through PutBackup, restored with
// GetBackup and replayed through restore_command, to the latest WAL and to
// a point in time; WAL archived by archive_command into a real S3 server,
// encrypted.
func TestBackupRestorePostgres(t *testing.T) {
	pt := newPGTest(t)
	s3 := startS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	storeURL := s3.url("backups")
	keyFile := filepath.Join(pt.dir, "backup.key")
	if _, err := WriteNewKey(keyFile); err != nil {
		t.Fatal(err)
	}
	pt.own(keyFile)
	a, err := OpenArchive(ctx, storeURL, "demo", keyFile)
	if err != nil {
		t.Fatal(err)
	}

	src := pt.start("primary", true, false, map[string]string{
		"archive_mode":    "on",
		"archive_command": withS3Creds(ArchiveCommand(pt.helper, storeURL, "demo", keyFile)),
	})
	const marker = "marker row 93c2e7"
	src.exec(t, "CREATE TABLE t (batch int, note text)")
	src.exec(t, "INSERT INTO t SELECT 1, $1 FROM generate_series(1, 1000)", marker)
	src.switchAndWaitArchived(t)

	out, wait := pt.basebackup(ctx, src)
	m, err := a.PutBackup(ctx, NewBackupID(time.Now()), out, BackupInfo{Member: "primary", Wait: wait})
	if err != nil {
		t.Fatalf("PutBackup: %v", err)
	}
	t.Logf("backup %s: %s..%s on timeline %d, %d bytes stored of %d", m.ID, m.StartLSN, m.StopLSN, m.Timeline, m.StoredBytes, m.RawBytes)
	if m.Timeline != 1 || m.StopTimeline != 1 || m.StartLSN == 0 || m.StopLSN <= m.StartLSN || m.StartWAL != segmentName(1, lsnSegNo(m.StartLSN, DefaultWALSegmentSize), DefaultWALSegmentSize) || !m.Encrypted() {
		t.Errorf("manifest = %+v", m)
	}
	// What postgres says about the backup agrees: the backup history file
	// pg_backup_stop wrote (and archive_command archived) names the same
	// start and stop as backup_label and backup_manifest did.
	hist := segmentName(1, lsnSegNo(m.StartLSN, DefaultWALSegmentSize), DefaultWALSegmentSize) + fmt.Sprintf(".%08X.backup", uint64(m.StartLSN)%DefaultWALSegmentSize)
	waitFor(t, time.Minute, hist+" archived", func() (bool, string) {
		names, err := a.ListWAL(ctx)
		return err == nil && strings.Contains(strings.Join(names, " "), hist), fmt.Sprint(names, err)
	})
	histPath := filepath.Join(t.TempDir(), hist)
	if err := a.FetchWAL(ctx, hist, histPath); err != nil {
		t.Fatal(err)
	}
	histText, _ := os.ReadFile(histPath)
	mustContain(t, hist, string(histText),
		fmt.Sprintf("START WAL LOCATION: %s (file %s)", m.StartLSN, m.StartWAL),
		fmt.Sprintf("STOP WAL LOCATION: %s (file", m.StopLSN))

	src.exec(t, "INSERT INTO t SELECT 2, 'after the backup' FROM generate_series(1, 100)")
	var mid time.Time
	src.query(t, "SELECT clock_timestamp()", &mid)
	src.exec(t, "INSERT INTO t SELECT 3, 'after the target time' FROM generate_series(1, 10)")
	src.switchAndWaitArchived(t)

	rep, err := a.Verify(ctx, m.ID)
	if err != nil || !rep.OK() {
		t.Errorf("Verify = %+v, %v; problems: %v", rep, err, rep.Summary())
	}

	// Nothing in the store holds the marker in plain text.
	assertNoMarker(t, s3.dir, marker)

	restore := func(name string, target Target, archive bool) *pgServer {
		t.Helper()
		backups, err := a.ListBackups(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, err := PickBackup(backups, target, time.Now())
		if err != nil {
			t.Fatalf("PickBackup(%v): %v", target, err)
		}
		if _, err := a.GetBackup(ctx, b.ID, filepath.Join(pt.dir, name), &Owner{UID: pt.user.UID, GID: pt.user.GID}); err != nil {
			t.Fatalf("GetBackup: %v", err)
		}
		conf, err := RecoverySettings(target, withS3Creds(RestoreCommand(pt.helper, storeURL, "demo", keyFile)))
		if err != nil {
			t.Fatal(err)
		}
		conf["archive_mode"] = "off"
		if archive {
			conf["archive_mode"] = "on"
			conf["archive_command"] = withS3Creds(ArchiveCommand(pt.helper, storeURL, "demo", keyFile))
		}
		s := pt.start(name, false, true, conf)
		waitFor(t, 2*time.Minute, name+" to finish recovery", func() (bool, string) {
			var inRecovery bool
			s.query(t, "SELECT pg_is_in_recovery()", &inRecovery)
			return !inRecovery, "in recovery"
		})
		return s
	}
	counts := func(s *pgServer) string {
		var c string
		s.query(t, "SELECT string_agg(batch || ':' || n, ' ' ORDER BY batch) FROM (SELECT batch, count(*) n FROM t GROUP BY batch) x", &c)
		return c
	}
	timeline := func(s *pgServer) string {
		var tli string
		s.query(t, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", &tli)
		return tli
	}

	// The primary is lost; a copy restored from the archive takes over
	// and continues the same archive on timeline 2, as a new primary does
	// after a failover.
	if err := src.inst.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	takeover := restore("takeover", Target{Latest: true}, true)
	if got := counts(takeover); got != "1:1000 2:100 3:10" {
		t.Errorf("restored to latest: rows per batch %q, want all of them", got)
	}
	if tli := timeline(takeover); tli != "00000002" {
		t.Errorf("restored cluster is on timeline %s, want 00000002 after its promotion", tli)
	}
	takeover.exec(t, "INSERT INTO t SELECT 4, 'on timeline 2' FROM generate_series(1, 5)")
	takeover.switchAndWaitArchived(t)

	// Verify follows the timeline switch through the archived history file.
	rep, err = a.Verify(ctx, m.ID)
	if err != nil || !rep.OK() || rep.Backups[0].WAL.Timeline != 2 || !strings.HasPrefix(rep.Backups[0].WAL.To, "00000002") {
		t.Errorf("Verify after the switch = %+v, %v; problems: %v", rep, err, rep.Summary())
	}

	// From the same backup, the latest point is now on timeline 2, and a
	// point in time before the switch is still there.
	again := restore("again", Target{Latest: true}, false)
	if got := counts(again); got != "1:1000 2:100 3:10 4:5" {
		t.Errorf("restored to latest across the switch: rows per batch %q, want batches 1 to 4", got)
	}
	if tli := timeline(again); tli != "00000003" {
		t.Errorf("second restore is on timeline %s, want 00000003", tli)
	}
	pitr := restore("pitr", Target{Time: mid}, false)
	if got := counts(pitr); got != "1:1000 2:100" {
		t.Errorf("restored to %v: rows per batch %q, want batches 1 and 2", mid, got)
	}

	// restore_command's exit codes: 1 for a file not in the archive, with a
	// calm message; 2 for a damaged one.
	run := func(args ...string) (int, string) {
		cmd := exec.Command(pt.helper, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), out.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, out.String()
	}
	dest := filepath.Join(t.TempDir(), "x")
	code, msg := run("wal-fetch", "--store", storeURL, "--cluster", "demo", "--key-file", keyFile, "00000009.history", dest)
	if code != 1 || strings.Contains(msg, "error") {
		t.Errorf("wal-fetch of a missing file: exit %d, %q; want exit 1 without an error", code, msg)
	}
	code, msg = run("wal-fetch", "--store", storeURL, "--cluster", "demo", m.StartWAL, dest)
	if code != 2 || !strings.Contains(msg, "no key was given") {
		t.Errorf("wal-fetch without the key: exit %d, %q; want exit 2 saying a key is needed", code, msg)
	}
}

// withS3Creds gives a command postgres runs the test store's credentials:
// postgres gets none of the test's environment (pgfleet's agent serves WAL
// to it over a socket instead; this test runs the direct mode).
func withS3Creds(cmd string) string {
	return "AWS_ACCESS_KEY_ID=" + testAccessKey + " AWS_SECRET_ACCESS_KEY=" + testSecretKey + " " + cmd
}
