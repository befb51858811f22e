package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func connect(t *testing.T, ci ConnInfo) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := Connect(ctx, ci)
	if err != nil {
		t.Fatalf("Connect(%s): %v", ci, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryStatus(t *testing.T, conn *pgx.Conn) Status {
	t.Helper()
	st, err := QueryStatus(context.Background(), conn)
	if err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	return st
}

// TestPrimaryAndStandby builds a primary, clones a standby from it through a
// replication slot, checks that writes reach the standby and that both report
// sensible status, then promotes the standby.
func TestPrimaryAndStandby(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	primary := startPrimary(t, "demo-1")
	if !strings.Contains(primary.logs.String(), "database system is ready to accept connections") {
		t.Errorf("postgres output was not logged; got:\n%s", primary.logs.String())
	}
	pconn := connect(t, primary.superuser())

	// The password has characters that need escaping in a passfile.
	const replPassword = `repl:pass\word 'x'`
	for range 2 {
		if err := EnsureRole(ctx, pconn, "replicator", replPassword, true); err != nil {
			t.Fatalf("EnsureRole: %v", err)
		}
	}
	var verifier string
	if err := pconn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'").Scan(&verifier); err != nil {
		t.Fatal(err)
	}
	if err := EnsureRole(ctx, pconn, "replicator", replPassword, true); err != nil {
		t.Fatalf("EnsureRole: %v", err)
	}
	var again string
	if err := pconn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'").Scan(&again); err != nil {
		t.Fatal(err)
	}
	if again != verifier {
		t.Errorf("EnsureRole with an unchanged password rewrote it: %q -> %q", verifier, again)
	}

	slot := SlotName("demo-2")
	for range 2 {
		if err := EnsureSlots(ctx, pconn, []string{slot}); err != nil {
			t.Fatalf("EnsureSlots: %v", err)
		}
	}
	var reserved bool
	if err := pconn.QueryRow(ctx, "SELECT restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&reserved); err != nil {
		t.Fatalf("slot %s: %v", slot, err)
	}
	if !reserved {
		t.Errorf("slot %s reserves no WAL", slot)
	}

	repl := ConnInfo{Host: "127.0.0.1", Port: primary.port, User: "replicator", Password: replPassword}
	standby := newTestInstance(t, "demo-2")
	parent := filepath.Dir(standby.DataDir())

	t.Run("failed basebackup leaves nothing", func(t *testing.T) {
		bad := repl
		bad.Password = "wrong"
		err := standby.BaseBackup(ctx, bad, slot, nil)
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Fatalf("BaseBackup with a wrong password = %v, want an authentication error", err)
		}
		if entries, _ := os.ReadDir(parent); len(entries) != 0 {
			t.Errorf("failed BaseBackup left %v in %s", entries, parent)
		}
	})

	var calls int
	var lastDone, lastTotal int64
	err := standby.BaseBackup(ctx, repl, slot, func(done, total int64) {
		calls++
		lastDone, lastTotal = done, total
	})
	if err != nil {
		t.Fatalf("BaseBackup: %v", err)
	}
	if calls == 0 || lastDone <= 0 || lastTotal < lastDone {
		t.Errorf("progress called %d times, last (%d, %d); want calls ending with done == total > 0", calls, lastDone, lastTotal)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 {
		t.Errorf("after BaseBackup %s holds %v, want only the data directory", parent, entries)
	}

	err = standby.Configure(Settings{
		Name: "demo-2", ListenAddr: "127.0.0.1", Port: standby.port,
		Follow: &repl, SlotName: slot,
	})
	if err != nil {
		t.Fatalf("Configure(standby): %v", err)
	}
	// No file in the data directory may hold the replication password.
	filepath.WalkDir(standby.DataDir(), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".conf") {
			return err
		}
		if strings.Contains(readFile(t, path), replPassword) {
			t.Errorf("%s contains the replication password", path)
		}
		return nil
	})
	if err := standby.Start(ctx); err != nil {
		t.Fatalf("Start(standby): %v", err)
	}
	sconn := connect(t, standby.superuser())

	if _, err := pconn.Exec(ctx, "CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 100)"); err != nil {
		t.Fatalf("insert: %v", err)
	}
	pst := queryStatus(t, pconn)
	if pst.InRecovery || pst.Timeline != 1 || pst.WriteLSN == 0 || pst.ReplayLSN != pst.WriteLSN {
		t.Errorf("primary QueryStatus = %+v, want not in recovery, timeline 1, ReplayLSN = WriteLSN > 0", pst)
	}

	waitFor(t, 30*time.Second, "100 rows on the standby", func() (bool, string) {
		var n int
		if err := sconn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
			return false, err.Error()
		}
		return n == 100, fmt.Sprintf("%d rows", n)
	})
	var sst Status
	waitFor(t, 30*time.Second, "standby streaming and caught up", func() (bool, string) {
		st, err := QueryStatus(ctx, sconn)
		if err != nil {
			return false, err.Error()
		}
		sst = st
		return st.InRecovery && st.Streaming && st.ReplayLSN >= pst.WriteLSN && st.ReceiveLSN >= pst.WriteLSN,
			fmt.Sprintf("%+v, primary wrote %s", st, pst.WriteLSN)
	})
	if sst.Timeline != 1 || sst.Upstream != "127.0.0.1" || sst.WriteLSN != 0 {
		t.Errorf("standby QueryStatus = %+v, want timeline 1, upstream 127.0.0.1, no WriteLSN", sst)
	}
	// A parameter change reaches the running primary on Reload.
	s := primary.settings()
	s.Params = map[string]string{"work_mem": "7MB"}
	if err := primary.Configure(s); err != nil {
		t.Fatalf("Configure(primary): %v", err)
	}
	if err := primary.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	waitFor(t, 10*time.Second, "work_mem = 7MB after Reload", func() (bool, string) {
		var v string
		if err := pconn.QueryRow(ctx, "SHOW work_mem").Scan(&v); err != nil {
			return false, err.Error()
		}
		return v == "7MB", v
	})

	var app, slotUsed string
	err = pconn.QueryRow(ctx, `SELECT r.application_name, s.slot_name FROM pg_stat_replication r
		JOIN pg_replication_slots s ON s.active_pid = r.pid`).Scan(&app, &slotUsed)
	if err != nil || app != "demo-2" || slotUsed != slot {
		t.Errorf("pg_stat_replication on the primary: application %q slot %q (%v); want demo-2 on %s", app, slotUsed, err, slot)
	}

	// Promotion: the old primary is stopped first, as a supervisor would.
	// Its sessions are closed so the smart shutdown need not wait for them.
	pconn.Close(ctx)
	if err := primary.Stop(30 * time.Second); err != nil {
		t.Fatalf("Stop(primary): %v", err)
	}
	for range 2 { // the second call finds a primary and does nothing
		if err := standby.Promote(ctx, standby.superuser()); err != nil {
			t.Fatalf("Promote: %v", err)
		}
	}
	st := queryStatus(t, sconn)
	if st.InRecovery || st.Timeline != 2 || st.WriteLSN < pst.WriteLSN {
		t.Errorf("after Promote QueryStatus = %+v, want a primary on timeline 2 at or after %s", st, pst.WriteLSN)
	}
	if _, err := sconn.Exec(ctx, "INSERT INTO t VALUES (101)"); err != nil {
		t.Errorf("write after Promote: %v", err)
	}

	// Remove refuses a running instance, then deletes the data directory and
	// the passfile, also from an Instance that never ran Configure.
	if err := standby.Remove(); err == nil {
		t.Errorf("Remove() of a running instance = nil, want error")
	}
	sconn.Close(ctx)
	if err := standby.Stop(30 * time.Second); err != nil {
		t.Fatalf("Stop(standby): %v", err)
	}
	if _, err := os.Stat(standby.PassfilePath("demo-2")); err != nil {
		t.Fatalf("passfile before Remove: %v", err)
	}
	fresh := New(Config{Bin: standby.cfg.Bin, DataDir: standby.DataDir(), User: standby.cfg.User})
	if err := fresh.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("after Remove %s holds %v", parent, entries)
	}
}

func TestStartAddressInUse(t *testing.T) {
	ti := newTestInstance(t, "busy")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := ti.InitDB(ctx, testPassword); err != nil {
		t.Fatalf("InitDB: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := ti.settings()
	s.Port = ln.Addr().(*net.TCPAddr).Port
	if err := ti.Configure(s); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	err = ti.Start(ctx)
	if err == nil || !errors.Is(err, ErrAddrInUse) || !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("Start on a busy port = %v, want ErrAddrInUse with postgres' message", err)
	}
	if pid := ti.Pid(); pid != 0 {
		t.Errorf("Pid() = %d after a failed Start, want 0", pid)
	}
}

// TestStartCancel starts a standby that can never accept connections
// (hot_standby off) and expects Start to give up with ctx and stop it.
func TestStartCancel(t *testing.T) {
	ti := newTestInstance(t, "never-ready")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := ti.InitDB(ctx, testPassword); err != nil {
		t.Fatalf("InitDB: %v", err)
	}
	s := ti.settings()
	s.Follow = &ConnInfo{Host: "127.0.0.1", Port: freePort(t), User: "replicator", Password: "x"}
	s.Params = map[string]string{"hot_standby": "off"}
	if err := ti.Configure(s); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if err := ti.Start(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start of a never-ready standby = %v, want context.DeadlineExceeded", err)
	}
	select {
	case <-ti.Done():
	default:
		t.Errorf("Start returned on ctx but postgres (pid %d) still runs", ti.Pid())
	}
}

func TestStartNotInitialized(t *testing.T) {
	ti := newTestInstance(t, "empty")
	if err := ti.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "InitDB") {
		t.Errorf("Start without a cluster = %v, want an error pointing at InitDB", err)
	}
}

func TestStop(t *testing.T) {
	ti := startPrimary(t, "stopper")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A smart shutdown waits for sessions to end, so an open session forces
	// the escalation to a fast shutdown.
	conn := connect(t, ti.superuser())
	done := ti.Done()
	if err := ti.Stop(3 * time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-done:
	default:
		t.Fatal("Stop returned before Done was closed")
	}
	logs := ti.logs.String()
	for _, want := range []string{"received smart shutdown request", "received fast shutdown request"} {
		if !strings.Contains(logs, want) {
			t.Errorf("postgres log lacks %q", want)
		}
	}
	if err := ti.ExitErr(); err != nil {
		t.Errorf("ExitErr() after Stop = %v, want nil", err)
	}
	if pid := ti.Pid(); pid != 0 {
		t.Errorf("Pid() after Stop = %d, want 0", pid)
	}
	if err := ti.Stop(time.Second); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
	conn.Close(ctx)

	// An exit nobody asked for is reported.
	if err := ti.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := syscall.Kill(ti.Pid(), syscall.SIGQUIT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ti.Done():
	case <-ctx.Done():
		t.Fatal("postgres did not exit after SIGQUIT")
	}
	if err := ti.ExitErr(); err == nil || !strings.Contains(err.Error(), "exited unexpectedly") {
		t.Errorf("ExitErr() after an external SIGQUIT = %v, want an unexpected exit", err)
	}

	// A postmaster that ignores everything (here: stopped) is killed.
	if err := ti.Start(ctx); err != nil {
		t.Fatalf("Start after crash: %v", err)
	}
	p := ti.proc
	if a := p.cmd.SysProcAttr; a.Pdeathsig != syscall.SIGKILL || !a.Setpgid {
		t.Errorf("SysProcAttr = %+v, want Pdeathsig SIGKILL and Setpgid", a)
	}
	if err := syscall.Kill(ti.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := ti.Stop(600 * time.Millisecond); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("stopped postmaster ended with %v, want killed by SIGKILL", p.cmd.ProcessState)
	}
	if err := ti.ExitErr(); err != nil {
		t.Errorf("ExitErr() after Stop = %v, want nil", err)
	}
}

func TestReloadNotRunning(t *testing.T) {
	ti := newTestInstance(t, "idle")
	if err := ti.Reload(); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Reload() on a stopped instance = %v, want ErrNotRunning", err)
	}
}

// pdeathsigEnv names the data directory for the helper process of
// TestPdeathsig.
const pdeathsigEnv = "PGFLEET_TEST_PDEATHSIG_DATADIR"

// TestPdeathsig starts postgres from a helper process, kills the helper with
// SIGKILL (no chance to clean up) and expects postgres to die with it.
func TestPdeathsig(t *testing.T) {
	if dir := os.Getenv(pdeathsigEnv); dir != "" {
		runPdeathsigHelper(t, dir)
		return
	}
	ti := newTestInstance(t, "orphan")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := ti.InitDB(ctx, testPassword); err != nil {
		t.Fatalf("InitDB: %v", err)
	}
	if err := ti.Configure(ti.settings()); err != nil {
		t.Fatalf("Configure: %v", err)
	}

	helper := exec.Command(os.Args[0], "-test.run=^TestPdeathsig$", "-test.v")
	helper.Env = append(os.Environ(), pdeathsigEnv+"="+ti.DataDir())
	helper.Stderr = ti.logs
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Wait()
	defer helper.Process.Kill()

	pidc := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "POSTMASTER_PID="); ok {
				pid, _ := strconv.Atoi(s)
				pidc <- pid
			}
		}
	}()
	var pid int
	select {
	case pid = <-pidc:
	case <-ctx.Done():
		t.Fatal("helper did not report a postmaster pid")
	}

	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	waitFor(t, 10*time.Second, fmt.Sprintf("postmaster %d to die with its parent", pid), func() (bool, string) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true, "gone"
		}
		// Fields after the ")" that ends the command name: state first.
		_, rest, _ := strings.Cut(string(stat), ") ")
		return strings.HasPrefix(rest, "Z"), "state " + rest[:1]
	})
}

// runPdeathsigHelper starts postgres in dir, reports its pid on stdout and
// waits to be killed.
func runPdeathsigHelper(t *testing.T, dir string) {
	log, _ := testLogger(t)
	inst := New(Config{Bin: testBin(t), DataDir: dir, User: testUser(t), Logger: log})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := inst.Start(ctx); err != nil {
		t.Fatalf("helper Start: %v", err)
	}
	fmt.Printf("POSTMASTER_PID=%d\n", inst.Pid())
	<-inst.Done()
	t.Fatalf("helper: postgres exited: %v", inst.ExitErr())
}

// TestStandbyWALGone: a standby whose upstream recycled the WAL it needs
// (no slot held it) learns so from its walreceiver, which WALGone reports, so
// that its supervisor can clone it afresh instead of waiting forever.
func TestStandbyWALGone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary := startPrimary(t, "gone-1")
	pconn := connect(t, primary.superuser())
	const replPassword = "repl-secret"
	if err := EnsureRole(ctx, pconn, "replicator", replPassword, true); err != nil {
		t.Fatalf("EnsureRole: %v", err)
	}
	repl := ConnInfo{Host: "127.0.0.1", Port: primary.port, User: "replicator", Password: replPassword}
	standby := newTestInstance(t, "gone-2")
	if err := standby.BaseBackup(ctx, repl, "", nil); err != nil {
		t.Fatalf("BaseBackup: %v", err)
	}
	// The primary moves on by several segments and recycles the old ones
	// while the standby is down.
	for range 4 {
		if _, err := pconn.Exec(ctx, "CREATE TABLE IF NOT EXISTS filler (i int); INSERT INTO filler SELECT 1; SELECT pg_switch_wal(); CHECKPOINT"); err != nil {
			t.Fatalf("advance WAL: %v", err)
		}
	}
	err := standby.Configure(Settings{Name: "gone-2", ListenAddr: "127.0.0.1", Port: standby.port, Follow: &repl})
	if err != nil {
		t.Fatalf("Configure(standby): %v", err)
	}
	if standby.WALGone(time.Minute) {
		t.Fatalf("WALGone before start = true")
	}
	// The backup holds what the standby needs to be consistent, so it
	// starts; streaming from the primary then fails.
	if err := standby.Start(ctx); err != nil && !errors.Is(err, ErrWALGone) {
		t.Fatalf("Start(standby) = %v, want nil or ErrWALGone", err)
	}
	if standby.Pid() == 0 {
		return // Start saw it first and stopped the standby: also right
	}
	waitFor(t, 30*time.Second, "WALGone", func() (bool, string) {
		return standby.WALGone(time.Minute), "walreceiver has not reported removed WAL"
	})
}
