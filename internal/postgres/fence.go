package postgres

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fenceTimeout bounds how long Fence waits for the instance's processes to
// be gone. SIGKILL ends a process at once unless it is stuck in the kernel.
const fenceTimeout = 5 * time.Second

// ErrFenced is returned by Start for data that would run as a primary, and
// by Promote, while the instance is fenced: a primary whose lease ran out
// must not come back writable until it holds a lease again.
var ErrFenced = errors.New("fenced: this member may not accept writes until it holds the leader key again")

// Fence stops every process of the instance at once: the postmaster and
// every backend, auxiliary process and archiver shell, found by their working
// directory (the data directory) whoever their parent is by now, even when
// they are stopped (SIGSTOP). It returns once none of them is left, so no
// transaction of the instance commits after Fence returns nil; the next start
// runs crash recovery. From then on the instance refuses to start writable or
// to promote until AllowWrites.
//
// Killing the postmaster alone is not a fence: each backend runs in a
// session of its own and finishes the statement it is in, a COMMIT included,
// before it notices that the postmaster is gone.
func (i *Instance) Fence() error {
	i.mu.Lock()
	i.fenced = true
	p := i.running()
	i.mu.Unlock()
	if p != nil {
		p.stopping.Store(true)
	}
	n, err := killAll(instanceDirs(i.cfg.DataDir), fenceTimeout)
	if p != nil {
		// The reaper sees our child's SIGKILL at once; waiting for it keeps
		// Pid and Done true to what runs.
		select {
		case <-p.done:
		case <-time.After(fenceTimeout):
			err = errors.Join(err, fmt.Errorf("fence %s: postmaster pid %d not reaped", i.cfg.DataDir, p.cmd.Process.Pid))
		}
	}
	if err != nil {
		return fmt.Errorf("fence %s: %w", i.cfg.DataDir, err)
	}
	if n > 0 {
		i.log.Info("fenced: killed every process of the instance", "processes", n)
	}
	return nil
}

// AllowWrites lifts Fence's ban on starting writable and promoting. The
// caller holds the leader key under a fresh lease.
func (i *Instance) AllowWrites() {
	i.mu.Lock()
	i.fenced = false
	i.mu.Unlock()
}

// Fenced reports whether the instance is fenced.
func (i *Instance) Fenced() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.fenced
}

// DeadManCommand is the first argument that makes the pgfleet binary (or a
// test binary whose TestMain calls RunDeadMan) run as a dead man's switch.
const DeadManCommand = "fence-watch"

// DeadMan is a fence that runs outside the agent: a separate process that
// kills every process of the instance unless the agent keeps moving its
// deadline. A primary's agent that is stopped (SIGSTOP), starved or hung
// cannot keep its own timers, and one that dies cannot take its postgres'
// backends with it; the switch still fires, at the deadline or as soon as
// the agent's end of its pipe closes without a disarm.
//
// Deadlines cross the pipe as absolute readings of CLOCK_MONOTONIC, which
// every process of the host shares, so a line read late (the switch was
// descheduled, or lines queued up) never moves the deadline past what the
// agent meant.
type DeadMan struct {
	mu       sync.Mutex
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	done     chan struct{}
	disarmed bool
}

// ArmDeadMan starts the switch for the instance with the given deadline. It
// needs no running postgres: a primary arms it before starting, so that no
// moment of its term is unguarded.
func (i *Instance) ArmDeadMan(deadline time.Time) (*DeadMan, error) {
	left := time.Until(deadline)
	if left <= 0 {
		return nil, errors.New("arm fence: the deadline has passed")
	}
	exe := i.cfg.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("arm fence: find the pgfleet binary: %w", err)
		}
	}
	cmd := exec.Command(exe, DeadManCommand, "--data-dir", i.cfg.DataDir, "--deadline", strconv.FormatInt(monoAfter(left), 10))
	// Nothing of the agent's environment (credentials) goes to the switch.
	cmd.Env = []string{}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("arm fence: %w", err)
	}
	out := newOutput(i.log.With("cmd", "fence"), nil)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, and no Pdeathsig: a signal meant for the
	// agent's group (a terminal's Ctrl-Z) must not stop the fence, and the
	// fence must outlive an agent that dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("arm fence: start %s: %w", exe, err)
	}
	d := &DeadMan{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { cmd.Wait(); out.Flush(); close(d.done) }()
	return d, nil
}

// Extend moves the deadline. An error means the switch is gone (it fired,
// or was disarmed) or the deadline has passed.
func (d *DeadMan) Extend(deadline time.Time) error {
	left := time.Until(deadline)
	if left <= 0 {
		return errors.New("extend fence: the deadline has passed")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.disarmed {
		return errors.New("extend fence: disarmed")
	}
	_, err := io.WriteString(d.stdin, strconv.FormatInt(monoAfter(left), 10)+"\n")
	return err
}

// Disarm stops the switch without firing it and waits for it to exit. Call
// it only once postgres may run on without a lease: it was stopped, or
// another lease guards it.
func (d *DeadMan) Disarm() {
	d.mu.Lock()
	if !d.disarmed {
		d.disarmed = true
		io.WriteString(d.stdin, "disarm\n")
		d.stdin.Close()
	}
	d.mu.Unlock()
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// Fired returns a channel that closes when the switch has exited. Unless
// Disarm was called, that means it fired or was killed: either way the
// instance is no longer guarded and must be fenced.
func (d *DeadMan) Fired() <-chan struct{} { return d.done }

// monoNow reads CLOCK_MONOTONIC, the clock Go's timers use, in nanoseconds.
func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return ts.Nano()
}

func monoAfter(d time.Duration) int64 { return monoNow() + int64(d) }

// deadManLinger is how long a fired switch keeps killing what starts in the
// data directory: a postmaster forked by an agent in the instant before the
// deadline is caught long before it could accept a connection.
const deadManLinger = time.Second

// RunDeadMan is the dead man's switch process (see DeadMan): it reads
// deadlines from stdin, one CLOCK_MONOTONIC reading in nanoseconds a line,
// and exits 0 on the line "disarm". It fires when the deadline passes, when
// stdin ends without a disarm (the agent died), on a line it cannot read, and
// on SIGTERM, SIGINT or SIGHUP; firing kills every process of the instance.
// It returns the process' exit code: 0 disarmed, 1 fired, 2 bad arguments.
func RunDeadMan(args []string, stdin io.Reader, stderr io.Writer) int {
	fs := flag.NewFlagSet(DeadManCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "", "the instance's data directory")
	deadline := fs.Int64("deadline", 0, "CLOCK_MONOTONIC nanoseconds")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !filepath.IsAbs(*dataDir) || *deadline <= 0 || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: pgfleet fence-watch --data-dir ABS-PATH --deadline MONO-NS")
		return 2
	}
	// A write to the agent's closed pipe must not end the switch.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	signal.Ignore(syscall.SIGPIPE)

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- strings.TrimSpace(sc.Text())
		}
		close(lines)
	}()
	fire := func(why string) int {
		dirs := instanceDirs(*dataDir)
		n, err := killAll(dirs, fenceTimeout)
		for end := time.Now().Add(deadManLinger); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			k, kerr := killAll(dirs, fenceTimeout)
			n, err = n+k, errors.Join(err, kerr)
		}
		fmt.Fprintf(stderr, "fence: %s; killed %d processes of %s\n", why, n, *dataDir)
		if err != nil {
			fmt.Fprintf(stderr, "fence: %v\n", err)
		}
		return 1
	}
	for {
		left := time.Duration(*deadline - monoNow())
		if left <= 0 {
			return fire("the deadline passed")
		}
		timer := time.NewTimer(left)
		select {
		case line, ok := <-lines:
			timer.Stop()
			switch {
			case !ok:
				return fire("the agent is gone")
			case line == "disarm":
				return 0
			}
			n, err := strconv.ParseInt(line, 10, 64)
			if err != nil || n <= 0 {
				return fire(fmt.Sprintf("unreadable deadline %q", line))
			}
			*deadline = n
		case <-timer.C:
		case sig := <-sigs:
			timer.Stop()
			return fire("got " + sig.String())
		}
	}
}

// Rewind makes a former primary's data follow src again with pg_rewind, so
// it can rejoin as a standby without a full copy. Postgres must not run. The
// source's superuser password goes through a temporary passfile. It reports
// whether pg_rewind changed anything: "no rewind required" is the answer
// for data whose history is a prefix of the source's, and also, wrongly,
// for data on a timeline whose number another history used too. With
// fromArchive, WAL the target no longer has is fetched with the
// restore_command of its configuration.
func (i *Instance) Rewind(ctx context.Context, src ConnInfo, fromArchive bool) (changed bool, err error) {
	if i.Pid() != 0 {
		return false, fmt.Errorf("rewind %s: postgres is running", i.cfg.DataDir)
	}
	passfile, cleanup, err := i.secretFile(pgpassLine(src))
	if err != nil {
		return false, fmt.Errorf("rewind %s: %w", i.cfg.DataDir, err)
	}
	defer cleanup()
	// A server promoted moments ago still names its old timeline in
	// pg_control until its first checkpoint; pg_rewind reads the timeline
	// from there and would find "no rewind required" for data that
	// diverged. A checkpoint first makes the source tell the truth.
	if err := checkpoint(ctx, src); err != nil {
		return false, fmt.Errorf("rewind %s: checkpoint the source %s first: %w", i.cfg.DataDir, src, err)
	}
	conninfo := strings.Join(append([]string{"host=" + conninfoValue(src.Host), "port=" + strconv.Itoa(src.Port),
		"user=" + conninfoValue(src.User), "dbname=postgres", "connect_timeout=10"}, src.libpqSSL()...), " ")
	args := []string{"--target-pgdata=" + i.cfg.DataDir, "--source-server=" + conninfo, "--progress"}
	if fromArchive {
		// The WAL back to the last common checkpoint may have been
		// recycled here; the archive still has it.
		args = append(args, "--restore-target-wal")
	}
	env := []string{"PGPASSFILE=" + passfile, "PGAPPNAME=pgfleet_rewind"}
	noop := false
	onLine := func(line string) bool {
		noop = noop || strings.Contains(line, "no rewind required")
		return false
	}
	if err := i.runTool(ctx, "pg_rewind", args, env, onLine); err != nil {
		return false, fmt.Errorf("rewind %s from %s: %w", i.cfg.DataDir, src, err)
	}
	return !noop, nil
}

// ShutdownCheckpoint reads from pg_control whether the server was shut
// down cleanly and the latest checkpoint's location. After a clean shutdown
// that checkpoint is the shutdown checkpoint, the last record the server
// wrote, and a standby that has received past it has everything. After an
// unclean one (a fast shutdown that had to be escalated, a crash) WAL may go
// on past the latest checkpoint, and the location proves nothing: clean is
// false.
func (i *Instance) ShutdownCheckpoint(ctx context.Context) (lsn LSN, clean bool, err error) {
	cmd := exec.CommandContext(ctx, i.cfg.Bin.Path("pg_controldata"), "-D", i.cfg.DataDir)
	cmd.Env = append(childEnv(i.cfg.User), "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		return 0, false, fmt.Errorf("pg_controldata %s: %w", i.cfg.DataDir, err)
	}
	var state string
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Latest checkpoint location:"); ok {
			if lsn, err = ParseLSN(strings.TrimSpace(v)); err != nil {
				return 0, false, fmt.Errorf("pg_controldata %s: %w", i.cfg.DataDir, err)
			}
			found = true
		}
		if v, ok := strings.CutPrefix(line, "Database cluster state:"); ok {
			state = strings.TrimSpace(v)
		}
	}
	if !found {
		return 0, false, fmt.Errorf("pg_controldata %s: no checkpoint location in its output", i.cfg.DataDir)
	}
	// "shut down in recovery" is a standby's clean stop; a primary's is
	// "shut down".
	return lsn, state == "shut down", nil
}

func checkpoint(ctx context.Context, ci ConnInfo) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	conn, err := Connect(ctx, ci)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CHECKPOINT")
	return err
}
