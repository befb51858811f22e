package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// init lets the test binary stand in for `pgfleet wal-push` and
// `pgfleet wal-fetch --socket` (same arguments, same exit codes), as
// TestMain lets it stand in for fence-watch: the agents under test run in
// this process, and their members' archive_command and restore_command run
// this process' executable as the postgres OS user. It runs before TestMain.
func init() {
	if len(os.Args) > 1 && (os.Args[1] == "wal-push" || os.Args[1] == "wal-fetch") {
		os.Exit(walCommand(os.Args[1], os.Args[2:]))
	}
}

func walCommand(cmd string, args []string) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	socket := fs.String("socket", "", "")
	cluster := fs.String("cluster", "", "")
	member := fs.String("member", "", "")
	from := fs.String("from", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := agent.NewWALClient(*socket)
	r := agent.WALRequest{Cluster: *cluster, Member: *member, From: *from}
	switch {
	case cmd == "wal-push" && fs.NArg() == 1:
		if err := cl.Push(ctx, r, fs.Arg(0)); err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			return 1
		}
	case cmd == "wal-fetch" && fs.NArg() == 2:
		err := cl.Fetch(ctx, r, fs.Arg(0), fs.Arg(1))
		if errors.Is(err, agent.ErrNotArchived) {
			fmt.Fprintf(os.Stderr, "pgfleet wal-fetch: %s is not in the archive\n", fs.Arg(0))
			return 1
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			return 2
		}
	default:
		fmt.Fprintln(os.Stderr, "error: bad arguments", args)
		return 2
	}
	return 0
}

// runAs runs this test binary as uid:gid with args and returns its exit
// status and standard error.
func runAs(t *testing.T, uid, gid int, args ...string) (int, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Dir = "/"
	cmd.Env = []string{}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run %v as %d:%d: %v", args, uid, gid, err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// letPostgresRunTestBinary opens the directories that hold this test binary
// (go test's 0700 build directory under the temporary directory) to the
// postgres OS user, which runs it as archive_command, and checks that it can.
func letPostgresRunTestBinary(t *testing.T, pg postgres.OSUser) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(exe); strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
	if code, stderr := runAs(t, pg.UID, pg.GID, "wal-fetch"); code != 2 || !strings.Contains(stderr, "bad arguments") {
		t.Fatalf("the %s OS user cannot run the test binary %s as archive_command would (exit %d: %s)", pg.Name, exe, code, stderr)
	}
}

// checkEnviron fails the test if vars, a member's environment as what
// names it found it, holds the sentinel the agent's environment had or any
// AWS_ variable.
func checkEnviron(t *testing.T, what string, vars []string, sentinel string) {
	t.Helper()
	var names []string
	path := false
	for _, kv := range vars {
		if kv == "" {
			continue
		}
		name, _, _ := strings.Cut(kv, "=")
		names = append(names, name)
		path = path || name == "PATH"
		if strings.Contains(kv, sentinel) || strings.HasPrefix(name, "AWS_") {
			t.Errorf("%s: postgres' environment holds %s, which only the agent's should", what, name)
		}
	}
	if !path {
		t.Errorf("%s: no PATH among %v: not an environment", what, names)
	}
	t.Logf("%s: %s", what, strings.Join(names, " "))
}

// TestWALThroughAgent: postgres runs without the agent's credentials in
// its environment, as a superuser session can see; it still archives WAL
// (encrypted with the cluster's key) and a restore still fetches it, both
// through the agent's WAL socket; the postgres OS user can read no file
// that holds the backup key, and the socket serves it but nobody else.
func TestWALThroughAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an agent, a cluster and a restored copy")
	}
	b := make([]byte, 8)
	rand.Read(b)
	sentinel := "sentinel-" + hex.EncodeToString(b)
	// The agents run in this process: these are their environment.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKID"+sentinel)
	t.Setenv("AWS_SECRET_ACCESS_KEY", sentinel)
	t.Setenv("PGFLEET_TEST_SECRET", sentinel)
	pg, err := postgres.CurrentOrPostgres()
	if err != nil {
		t.Fatal(err)
	}
	letPostgresRunTestBinary(t, pg)

	f := labtest.StartFleet(t, "iad")
	ctx := context.Background()
	c := f.Client
	storeURL := "file://" + filepath.Join(labtest.TestDir(t), "store")
	if _, err := c.Create(ctx, api.CreateRequest{Name: "demo", PrimaryRegion: "iad", BackupStore: storeURL, BackupEncrypt: true}); err != nil {
		t.Fatalf("Create(demo): %v", err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 2*time.Minute, "cluster demo ready", func() (bool, string) {
		if v, err = c.Cluster(ctx, "demo"); err != nil {
			return false, err.Error()
		}
		return clusterReady(v)
	})
	u, err := c.URL(ctx, "demo", v.Primary)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, u.URL)
	if err != nil {
		t.Fatalf("connect to demo: %v", err)
	}
	defer conn.Close(ctx)

	// (a) What a superuser session can see of postgres' environment: the
	// postmaster's, in /proc (a backend's own is overwritten by its process
	// title), and what a program it runs inherits.
	var pidFile string
	if err := conn.QueryRow(ctx, "SELECT pg_read_file('postmaster.pid')").Scan(&pidFile); err != nil {
		t.Fatalf("pg_read_file('postmaster.pid'): %v", err)
	}
	postmaster, _, _ := strings.Cut(pidFile, "\n")
	var environ []byte
	// With a length: /proc files report a size of 0, which is all postgres
	// reads of them otherwise.
	if err := conn.QueryRow(ctx, "SELECT pg_read_binary_file('/proc/' || $1 || '/environ', 0, 1048576)", postmaster).Scan(&environ); err != nil {
		t.Fatalf("pg_read_binary_file('/proc/%s/environ'): %v", postmaster, err)
	}
	checkEnviron(t, "pg_read_binary_file('/proc/<postmaster>/environ')", strings.Split(string(environ), "\x00"), sentinel)
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE env (line text)"); err != nil {
		t.Fatal(err)
	}
	// Fields and quotes no environment holds: one line, one row.
	if _, err := conn.Exec(ctx, `COPY env FROM PROGRAM 'env' WITH (FORMAT csv, DELIMITER E'\x01', QUOTE E'\x02')`); err != nil {
		t.Fatalf("COPY FROM PROGRAM 'env': %v", err)
	}
	var lines []string
	if err := conn.QueryRow(ctx, "SELECT array_agg(line) FROM env").Scan(&lines); err != nil {
		t.Fatal(err)
	}
	checkEnviron(t, "COPY FROM PROGRAM 'env'", lines, sentinel)

	// (b) Archiving through the socket: a switched segment reaches the
	// store, encrypted with the cluster's key.
	socket := agent.WALSocketPath(f.DataDir("iad-1"))
	var archiveCommand, restoreCommand string
	conn.QueryRow(ctx, "SELECT current_setting('archive_command'), current_setting('restore_command')").Scan(&archiveCommand, &restoreCommand)
	for _, cmd := range []string{archiveCommand, restoreCommand} {
		if !strings.Contains(cmd, "--socket "+socket) || !strings.Contains(cmd, "--member "+v.Primary) || strings.Contains(cmd, "--store") || strings.Contains(cmd, "--key-file") {
			t.Errorf("command %q: want it through the agent's socket %s, without a store URL or a key file", cmd, socket)
		}
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE marks (n int, note text)"); err != nil {
		t.Fatal(err)
	}
	seg := switchAndWaitArchived(t, conn)
	archive, err := backup.OpenArchiveKey(ctx, storeURL, "demo", "")
	if err != nil {
		t.Fatal(err)
	}
	names, err := archive.ListWAL(ctx)
	if err != nil || !slices.Contains(names, seg) {
		t.Fatalf("ListWAL() = %v, %v; want %s among them", names, err, seg)
	}
	if err := archive.FetchWAL(ctx, seg, filepath.Join(t.TempDir(), seg)); !errors.Is(err, backup.ErrWrongKey) {
		t.Errorf("FetchWAL(%s) without the key = %v, want ErrWrongKey: the agent must encrypt with the cluster's key", seg, err)
	}

	// wal-fetch as postgres runs it: a segment comes back whole, a file
	// the archive does not hold exits 1 quietly.
	fetched := labtest.TestDir(t)
	if err := os.Chown(fetched, pg.UID, pg.GID); err != nil {
		t.Fatal(err)
	}
	fetchArgs := []string{"wal-fetch", "--socket", socket, "--cluster", "demo", "--member", v.Primary}
	if code, stderr := runAs(t, pg.UID, pg.GID, append(fetchArgs, seg, filepath.Join(fetched, "RECOVERYXLOG"))...); code != 0 {
		t.Errorf("wal-fetch %s as %s: exit %d: %s", seg, pg.Name, code, stderr)
	} else if fi, err := os.Stat(filepath.Join(fetched, "RECOVERYXLOG")); err != nil || fi.Size() != 16<<20 {
		t.Errorf("wal-fetch %s wrote %v (%v), want a 16 MiB segment", seg, fi, err)
	}
	if code, stderr := runAs(t, pg.UID, pg.GID, append(fetchArgs, "00000009.history", filepath.Join(fetched, "RECOVERYHISTORY"))...); code != 1 || !strings.Contains(stderr, "is not in the archive") {
		t.Errorf("wal-fetch of a file not archived: exit %d: %q; want 1, is not in the archive", code, stderr)
	}

	// A restore fetches through the socket too: rows written after the
	// base backup come back only by replaying archived WAL.
	breq, err := c.CreateBackup(ctx, "demo")
	if err != nil {
		t.Fatalf("CreateBackup(demo): %v", err)
	}
	labtest.WaitFor(t, 2*time.Minute, "backup "+breq.ID+" of demo", func() (bool, string) {
		bv, err := c.Backups(ctx, "demo")
		if err != nil {
			return false, err.Error()
		}
		done := slices.ContainsFunc(bv.Backups, func(m backup.Manifest) bool { return m.ID == breq.ID })
		return done && bv.Running == nil, fmt.Sprintf("%d backups, running %v", len(bv.Backups), bv.Running)
	})
	if _, err := conn.Exec(ctx, "INSERT INTO marks SELECT g, 'after the backup' FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}
	afterBackup := switchAndWaitArchived(t, conn)
	if _, err := c.Create(ctx, api.CreateRequest{Name: "copy", PrimaryRegion: "iad", BackupStore: "none", Restore: &api.RestoreRequest{From: "demo", Latest: true}}); err != nil {
		t.Fatalf("Create(copy restored from demo): %v", err)
	}
	var cv api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, "cluster copy restored", func() (bool, string) {
		if cv, err = c.Cluster(ctx, "copy"); err != nil {
			return false, err.Error()
		}
		return clusterReady(cv)
	})
	cu, err := c.URL(ctx, "copy", cv.Primary)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := pgx.Connect(ctx, cu.URL)
	if err != nil {
		t.Fatalf("connect to copy: %v", err)
	}
	defer cc.Close(ctx)
	var n int
	if err := cc.QueryRow(ctx, "SELECT count(*) FROM marks WHERE note = 'after the backup'").Scan(&n); err != nil || n != 100 {
		t.Errorf("copy holds %d rows written after the backup (%v), want 100: replayed from the archive through the socket", n, err)
	}
	agentLog, err := os.ReadFile(filepath.Join(f.Dir, "iad-1.log"))
	if err != nil {
		t.Fatal(err)
	}
	fetches := 0
	for _, l := range strings.Split(string(agentLog), "\n") {
		if strings.Contains(l, `msg="fetched WAL"`) && strings.Contains(l, "member="+cv.Primary) && strings.Contains(l, "from=demo") {
			fetches++
		}
	}
	if fetches == 0 {
		t.Errorf("the agent's log shows no WAL fetched for %s from demo's archive", cv.Primary)
	}
	t.Logf("the restore fetched %d WAL files through the socket", fetches)

	// Both clusters' postgres run as the same OS user on this host: a
	// superuser session of copy that runs the WAL client posing as demo's
	// member is refused, by its process tree; as copy's own member it may.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fromCopy := func(args ...string) error {
		cmd := strings.Join(append([]string{exe, "wal-fetch", "--socket", socket}, args...), " ")
		_, err := cc.Exec(ctx, "COPY (SELECT 1) TO PROGRAM '"+strings.ReplaceAll(cmd, "'", "''")+"'")
		return err
	}
	stolen := filepath.Join(fetched, "STOLEN")
	if err := fromCopy("--cluster", "demo", "--member", v.Primary, seg, stolen); err == nil {
		t.Errorf("copy's superuser fetched demo's WAL through the socket posing as %s", v.Primary)
	}
	if _, err := os.Stat(stolen); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused fetch wrote %s (%v)", stolen, err)
	}
	agentLog, err = os.ReadFile(filepath.Join(f.Dir, "iad-1.log"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "belongs to member " + cv.Primary + " of cluster copy"; !strings.Contains(string(agentLog), want) {
		t.Errorf("the agent's log does not say why it refused the posing fetch (%q)", want)
	}
	if err := fromCopy("--cluster", "copy", "--member", cv.Primary, "--from", "demo", afterBackup, filepath.Join(fetched, "OWN")); err != nil {
		t.Errorf("copy's own member fetching from the archive it was restored from: %v", err)
	}

	// (c) The postgres OS user reads no file that holds the backup key,
	// and only it and root may use the socket.
	sec, err := f.Store("iad-1").Secrets(ctx, "demo")
	if err != nil || sec.BackupKey == "" {
		t.Fatalf("Secrets(demo) = %v; want a backup key", err)
	}
	if _, err := os.Lstat(filepath.Join(f.DataDir("iad-1"), "members", v.Primary, "backup.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the member directory holds a backup.key (%v), want none", err)
	}
	if os.Geteuid() != 0 {
		t.Log("not root: postgres runs as this user, which holds the key anyway; skipping the checks of other users")
		return
	}
	held := 0
	filepath.WalkDir(f.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil || !bytes.Contains(b, []byte(sec.BackupKey)) {
			return nil
		}
		held++
		cmd := exec.Command("/bin/cat", path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(pg.UID), Gid: uint32(pg.GID)}}
		if err := cmd.Run(); err == nil {
			fi, _ := os.Stat(path)
			t.Errorf("the %s OS user can read %s (mode %v), which holds the backup key", pg.Name, path, fi.Mode())
		}
		return nil
	})
	t.Logf("%d files hold the backup key; the %s OS user can read none", held, pg.Name)

	for _, c := range []struct {
		path string
		mode fs.FileMode
	}{{filepath.Dir(socket), fs.ModeDir | 0o710}, {socket, fs.ModeSocket | 0o660}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != c.mode || st.Uid != 0 || int(st.Gid) != pg.GID {
			t.Errorf("%s: mode %v, owner %d:%d; want %v, 0:%d", c.path, fi.Mode(), st.Uid, st.Gid, c.mode, pg.GID)
		}
	}
	const nobody = 65534
	// In the postgres group, so the modes let it through: the peer check
	// refuses it.
	if code, stderr := runAs(t, nobody, pg.GID, append(fetchArgs, seg, "/dev/null")...); code != 2 || !strings.Contains(stderr, "may not use the WAL socket") {
		t.Errorf("wal-fetch as uid %d in group %d: exit %d: %q; want 2, may not use the WAL socket", nobody, pg.GID, code, stderr)
	}
	// Outside it, the directory keeps it away from the socket.
	if code, stderr := runAs(t, nobody, nobody, append(fetchArgs, seg, "/dev/null")...); code != 2 || !strings.Contains(stderr, "permission denied") {
		t.Errorf("wal-fetch as uid %d: exit %d: %q; want 2, permission denied", nobody, code, stderr)
	}
}

// switchAndWaitArchived writes a little, ends the current WAL segment and
// waits until postgres has archived it, with no failure on the way.
func switchAndWaitArchived(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	ctx := context.Background()
	var seg string
	if err := conn.QueryRow(ctx, "INSERT INTO marks VALUES (0, 'switch') RETURNING pg_walfile_name(pg_current_wal_lsn())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, time.Minute, "segment "+seg+" archived", func() (bool, string) {
		var last, lastFailed string
		var failed int64
		if err := conn.QueryRow(ctx, "SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver").Scan(&last, &failed, &lastFailed); err != nil {
			return false, err.Error()
		}
		if failed > 0 {
			t.Fatalf("archiving failed %d times (last %s)", failed, lastFailed)
		}
		return last >= seg, fmt.Sprintf("last archived %q", last)
	})
	return seg
}
