package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// openTx opens a session on ti, begins a transaction that inserts a row
// into fenced(note), and stops (SIGSTOP) its backend, as a starved or
// stopped host would leave it. It returns the session and the backend's pid.
func openTx(t *testing.T, ti *testInstance, note string) (*pgx.Conn, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := connect(t, ti.superuser())
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatalf("backend pid: %v", err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS fenced (note text)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatalf("begin: %v", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO fenced VALUES ($1)", note); err != nil {
		t.Fatalf("insert: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP backend %d: %v", pid, err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return conn, pid
}

// commitFails asserts that the session's COMMIT is not acknowledged.
func commitFails(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, "COMMIT")
	if err == nil {
		t.Fatal("COMMIT on the fenced instance's backend succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("COMMIT hung until the test's deadline: the backend still exists (%v)", err)
	}
}

// noProcesses asserts that nothing runs in ti's data directory.
func noProcesses(t *testing.T, ti *testInstance) {
	t.Helper()
	if pids := procsIn(instanceDirs(ti.DataDir())); len(pids) > 0 {
		t.Fatalf("processes still running in %s: %v", ti.DataDir(), pids)
	}
}

func gone(pid int) func() (bool, string) {
	return func() (bool, string) { return !alive(pid), fmt.Sprintf("pid %d alive", pid) }
}

// TestFence: a fence kills every process of the instance, a stopped backend
// in the middle of a transaction included, whose COMMIT then fails; a fenced
// instance refuses to start writable until AllowWrites.
func TestFence(t *testing.T) {
	ti := startPrimary(t, "fence")
	conn, backend := openTx(t, ti, "after the fence")
	postmaster := ti.Pid()
	if err := syscall.Kill(postmaster, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := ti.Fence(); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Fence took %s", took)
	}
	if alive(backend) || alive(postmaster) {
		t.Fatalf("after Fence: backend alive %v, postmaster alive %v", alive(backend), alive(postmaster))
	}
	noProcesses(t, ti)
	commitFails(t, conn)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ti.Start(ctx); !errors.Is(err, ErrFenced) {
		t.Fatalf("Start after Fence = %v, want ErrFenced", err)
	}
	ti.AllowWrites()
	if err := ti.Start(ctx); err != nil {
		t.Fatalf("Start after AllowWrites: %v", err)
	}
	var n int
	if err := connect(t, ti.superuser()).QueryRow(ctx, "SELECT count(*) FROM fenced").Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows of the fenced transaction = %d, %v; want 0", n, err)
	}
}

// TestStopKillsStragglers: backends outlive a postmaster killed with
// SIGKILL (each runs in a session of its own); the next stop or start kills
// them, so none can commit and the new postmaster is not refused for the old
// one's shared memory.
func TestStopKillsStragglers(t *testing.T) {
	ti := startPrimary(t, "stragglers")
	conn, backend := openTx(t, ti, "straggler")
	if err := syscall.Kill(ti.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-ti.Done()
	if !alive(backend) {
		t.Fatal("the stopped backend died with its postmaster; the test shows nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ti.Start(ctx); err != nil {
		t.Fatalf("Start after the postmaster was killed: %v", err)
	}
	if alive(backend) {
		t.Fatal("the old postmaster's backend survived the start")
	}
	commitFails(t, conn)

	// A stop kills what a crashed postmaster left, too.
	conn, backend = openTx(t, ti, "straggler 2")
	if err := syscall.Kill(ti.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-ti.Done()
	if err := ti.Stop(5 * time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	// Stop returns nil at once for an exited postmaster; Fence is what the
	// agent calls before it gives the key up.
	if err := ti.Fence(); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	waitFor(t, time.Second, "the straggler gone", gone(backend))
	commitFails(t, conn)
}

// TestDeadMan checks the fence that runs outside the agent: fed, it keeps
// postgres alive; left alone past its deadline it kills the postmaster and
// every backend, a stopped one in a transaction included; disarmed, it exits
// without killing.
func TestDeadMan(t *testing.T) {
	ti := startPrimary(t, "deadman")
	d, err := ti.ArmDeadMan(time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range 6 { // 1.5 s of feeding, longer than the first deadline
		time.Sleep(250 * time.Millisecond)
		if err := d.Extend(time.Now().Add(time.Second)); err != nil {
			t.Fatalf("Extend: %v", err)
		}
	}
	select {
	case <-ti.Done():
		t.Fatal("postgres exited although the fence was fed")
	case <-d.Fired():
		t.Fatal("the fence exited although it was fed")
	default:
	}
	conn, backend := openTx(t, ti, "after the deadline")
	last := time.Now()
	select {
	case <-d.Fired():
	case <-time.After(10 * time.Second):
		t.Fatal("the fence still waits 10 s after its deadline")
	}
	fired := time.Since(last)
	if fired < 700*time.Millisecond || fired > 2500*time.Millisecond {
		t.Errorf("fence fired %s after the last feed, want about 1 s (plus its 1 s linger)", fired)
	}
	waitFor(t, time.Second, "the postmaster reaped", func() (bool, string) { return ti.Pid() == 0, "running" })
	if alive(backend) {
		t.Fatal("the stopped backend survived the dead man's switch")
	}
	noProcesses(t, ti)
	commitFails(t, conn)

	// Disarmed, it leaves a running postgres alone.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ti.Start(ctx); err != nil {
		t.Fatal(err)
	}
	d, err = ti.ArmDeadMan(time.Now().Add(300 * time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	d.Disarm()
	select {
	case <-ti.Done():
		t.Fatal("a disarmed fence killed postgres")
	case <-time.After(time.Second):
	}
}

// TestDeadManAgentGone: when the agent's end of the pipe closes without a
// disarm (the agent died), the switch fires at once; so does a deadline a
// hair away, which a fence with a rounded timeout would miss.
func TestDeadManAgentGone(t *testing.T) {
	ti := startPrimary(t, "orphan")
	d, err := ti.ArmDeadMan(time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	_, backend := openTx(t, ti, "orphaned")
	d.stdin.Close() // what the kernel does when the agent dies
	select {
	case <-d.Fired():
	case <-time.After(10 * time.Second):
		t.Fatal("the fence still waits 10 s after its agent went away")
	}
	waitFor(t, time.Second, "the backend gone", gone(backend))
	noProcesses(t, ti)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ti.Start(ctx); err != nil {
		t.Fatal(err)
	}
	d, err = ti.ArmDeadMan(time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Extend(time.Now().Add(200 * time.Microsecond)); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	select {
	case <-d.Fired():
	case <-time.After(10 * time.Second):
		t.Fatal("a deadline 200 µs away did not fire in 10 s")
	}
	noProcesses(t, ti)
}

// TestDeadManBadInput: the switch refuses arguments it cannot act on, and
// fires on a line it cannot read rather than guess.
func TestDeadManBadInput(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--data-dir", "relative", "--deadline", "5"},
		{"--data-dir", "/x", "--deadline", "0"},
		{"--data-dir", "/x", "--deadline", "5", "extra"},
	} {
		var out discard
		if code := RunDeadMan(args, nil, &out); code != 2 {
			t.Errorf("RunDeadMan(%q) = %d, want 2", args, code)
		}
	}
	dir := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() { fmt.Fprintln(w, "soon"); w.Close() }()
	var out discard
	if code := RunDeadMan([]string{"--data-dir", filepath.Clean(dir), "--deadline", fmt.Sprint(monoAfter(time.Minute))}, r, &out); code != 1 {
		t.Errorf("RunDeadMan with an unreadable line = %d, want 1 (fired)", code)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestShutdownCheckpoint: after a fast shutdown pg_control says the server
// shut down cleanly, and the checkpoint it names is the last record; after
// an immediate one (what a fast shutdown escalates to) it does not, so a
// switchover must not trust the position.
func TestShutdownCheckpoint(t *testing.T) {
	ti := startPrimary(t, "handover")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ti.StopFast(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	lsn, clean, err := ti.ShutdownCheckpoint(ctx)
	if err != nil || !clean || lsn == 0 {
		t.Fatalf("ShutdownCheckpoint after a fast shutdown = %s, %v, %v; want a position, clean", lsn, clean, err)
	}
	if err := ti.Start(ctx); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, ti.superuser())
	if _, err := conn.Exec(ctx, "CREATE TABLE after_checkpoint (i int); INSERT INTO after_checkpoint VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	// What StopFast escalates to when the fast shutdown hangs.
	if err := ti.Stop(0); err != nil {
		t.Fatal(err)
	}
	_, clean, err = ti.ShutdownCheckpoint(ctx)
	if err != nil || clean {
		t.Fatalf("ShutdownCheckpoint after an immediate stop = clean %v, %v; want not clean", clean, err)
	}
}
