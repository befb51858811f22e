package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrNotRunning is returned by calls that need the postmaster started by this
// Instance.
var ErrNotRunning = errors.New("postgres not running")

// ErrWALGone is returned by Start when a standby that is not yet consistent
// learns from its upstream that the WAL it needs has been removed there: it
// can never become ready from that upstream, and has to be cloned afresh.
var ErrWALGone = errors.New("the primary no longer has the WAL this standby needs")

// A standby's walreceiver logs walReceiveFailed followed by its upstream's
// answer; walGoneMessage ends the answer of a walsender asked for a segment it
// has recycled (walsender.c: "requested WAL segment %s has already been
// removed"). The upstream logs that answer too, without the first part.
const (
	walReceiveFailed = "could not receive data from WAL stream"
	walGoneMessage   = "has already been removed"
)

// ErrDiverged is wrapped into Start's error when postgres refused to start
// because its data's history does not continue the timeline it was asked
// to follow, or it could not find the checkpoint its WAL should start from:
// data that only a rewind or a fresh copy can bring back.
var ErrDiverged = errors.New("the data's history left the primary's")

// divergedMessages are postgres' words for ErrDiverged (xlogrecovery.c,
// xlog.c).
var divergedMessages = []string{
	"is not a child of this server's history",
	"is not in this server's history",
	"could not locate a valid checkpoint record",
	"could not locate required checkpoint record",
}

// ErrAddrInUse is wrapped into Start's error when postgres could not bind its
// address, so a caller can report the port conflict rather than a generic
// start failure.
var ErrAddrInUse = errors.New("address already in use")

// outputGrace bounds how long we keep reading a child's output after it
// exits. Postgres backends inherit the postmaster's stderr, and after a
// SIGKILL they may hold it open for a moment before noticing postmaster death;
// the agent must not wait on them to learn that the postmaster is gone.
const outputGrace = 2 * time.Second

// Config says where an Instance's data lives and how to run it.
type Config struct {
	Bin     Bin
	DataDir string // PGDATA; its parent exists, is managed by the caller and must be traversable by User
	User    OSUser
	Logger  *slog.Logger // postgres' output lines are logged here, one record per line, attr "pg" = the line
	// Exe is the binary that runs the dead man's switch (DeadManCommand);
	// empty means this process' own executable.
	Exe string
}

// Instance is one local PostgreSQL data directory and, while running, its
// postmaster, which is always a direct child of this process. Keeping it a
// child (rather than daemonizing through pg_ctl) lets us reap it, see its exit
// status the moment it dies, and have the kernel kill it if the agent dies,
// so a postgres is never left running without a supervisor that can fence it.
type Instance struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	proc     *process // current or last postmaster; nil before the first Start
	settings *Settings
	fenced   bool // Fence ran and AllowWrites has not: no writable start, no promotion
	// tlsInstalled: the fleet's certificate is in place (InstallTLS), and
	// no self-signed one is made.
	tlsInstalled bool
}

// process is one run of the postmaster.
type process struct {
	cmd      *exec.Cmd
	out      *output
	done     chan struct{}
	stopping atomic.Bool  // Stop was called: exiting is expected
	walGone  atomic.Int64 // when the upstream last said the WAL this standby needs is gone (unix ns)
	err      error        // why it exited; set before done is closed
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// New returns an Instance for cfg. It does no I/O. DataDir is made absolute
// because postgres resolves relative paths from inside the data directory.
func New(cfg Config) *Instance {
	if abs, err := filepath.Abs(cfg.DataDir); err == nil {
		cfg.DataDir = abs
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Instance{cfg: cfg, log: log}
}

// DataDir returns the absolute data directory.
func (i *Instance) DataDir() string { return i.cfg.DataDir }

// Initialized reports whether DataDir holds a cluster (PG_VERSION present).
// InitDB and BaseBackup rename a complete directory into place, so a present
// PG_VERSION means a finished one.
func (i *Instance) Initialized() bool {
	_, err := os.Stat(filepath.Join(i.cfg.DataDir, "PG_VERSION"))
	return err == nil
}

// running returns the live process, or nil. Callers hold i.mu.
func (i *Instance) running() *process {
	if i.proc == nil || i.proc.exited() {
		return nil
	}
	return i.proc
}

// Start starts `postgres -D DataDir` as a direct child and returns once it
// accepts connections: postmaster.pid names our child and reports "ready" (or
// "standby" for a hot standby), and a TCP startup handshake on its listen
// address gets an answer other than "the database system is starting up".
//
// The child gets Pdeathsig SIGKILL, so that it dies with the agent and no
// postgres keeps accepting writes without a supervisor that could fence it,
// and its own process group, so that a Ctrl-C at the agent's terminal reaches
// only the agent, which then shuts postgres down in order.
//
// If the child exits before it is ready, the error contains its last log
// lines and wraps ErrAddrInUse when the port was taken. If ctx ends first, the
// child is stopped and ctx's error returned. A standby that never reaches a
// consistent state is never ready, so ctx should carry a deadline.
func (i *Instance) Start(ctx context.Context) error {
	if i.Pid() == 0 {
		// Backends of an earlier postmaster (one killed with the agent
		// before it) would keep its shared memory and refuse the start.
		if n, err := killAll(instanceDirs(i.cfg.DataDir), fenceTimeout); err != nil {
			return fmt.Errorf("start postgres in %s: %w", i.cfg.DataDir, err)
		} else if n > 0 {
			i.log.Warn("killed processes left by an earlier postmaster", "processes", n)
		}
	}
	p, err := i.spawn()
	if err != nil {
		return fmt.Errorf("start postgres in %s: %w", i.cfg.DataDir, err)
	}
	pid := p.cmd.Process.Pid

	// Poll quickly while postgres starts up; back off once it answers
	// "not accepting connections", because each refused probe is a FATAL
	// line in its log.
	interval := 100 * time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-p.done:
			err := fmt.Errorf("start postgres in %s: exited before accepting connections (%v); last output:%s",
				i.cfg.DataDir, p.cmd.ProcessState, p.out.tailText())
			if tailContains(p.out, "Address already in use") {
				err = fmt.Errorf("%w: %w", ErrAddrInUse, err)
			}
			for _, m := range divergedMessages {
				if tailContains(p.out, m) {
					err = fmt.Errorf("%w: %w", ErrDiverged, err)
					break
				}
			}
			return err
		case <-ctx.Done():
			i.stop(p, 15*time.Second, syscall.SIGINT, syscall.SIGQUIT)
			return fmt.Errorf("start postgres in %s: %w", i.cfg.DataDir, ctx.Err())
		case <-timer.C:
		}
		if p.walGone.Load() != 0 {
			i.stop(p, 15*time.Second, syscall.SIGINT, syscall.SIGQUIT)
			return fmt.Errorf("start postgres in %s: %w", i.cfg.DataDir, ErrWALGone)
		}
		ready, refused := i.ready(ctx, pid)
		if ready {
			i.log.Info("postgres ready", "pid", pid)
			return nil
		}
		if refused {
			interval = min(2*interval, time.Second)
		}
		timer.Reset(interval)
	}
}

// spawn starts the postmaster and the goroutine that reaps it.
func (i *Instance) spawn() (*process, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if p := i.running(); p != nil {
		return nil, fmt.Errorf("already running (pid %d)", p.cmd.Process.Pid)
	}
	if !i.Initialized() {
		return nil, fmt.Errorf("no cluster in %s: run InitDB or BaseBackup first", i.cfg.DataDir)
	}
	if _, err := os.Stat(filepath.Join(i.cfg.DataDir, "standby.signal")); i.fenced && err != nil {
		return nil, ErrFenced
	}

	p := &process{done: make(chan struct{})}
	out := newOutput(i.log, func(line string) bool {
		if strings.Contains(line, walReceiveFailed) && strings.Contains(line, walGoneMessage) {
			p.walGone.Store(time.Now().UnixNano())
		}
		return false
	})
	cmd := exec.Command(i.cfg.Bin.Path("postgres"), "-D", i.cfg.DataDir)
	cmd.Dir = i.cfg.DataDir
	// Every session can read the postmaster's environment
	// (pg_read_file('/proc/self/environ')), and so can archive_command:
	// it gets the allowlist of childEnv, never the agent's credentials.
	cmd.Env = childEnv(i.cfg.User)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.WaitDelay = outputGrace
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: credential(i.cfg.User),
	}
	p.cmd, p.out = cmd, out

	// Linux sends Pdeathsig when the thread that forked the child exits,
	// not the process, and the Go runtime ends a thread when a goroutine
	// locked to it returns without unlocking. Forking and reaping from one
	// goroutine that holds its thread for the child's whole life keeps that
	// thread alive exactly as long as it must be.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.reap(i.log)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	i.proc = p
	i.log.Info("postgres started", "pid", cmd.Process.Pid, "data_dir", i.cfg.DataDir)
	return p, nil
}

// reap waits for the postmaster to exit, records why, and closes done.
func (p *process) reap(log *slog.Logger) {
	cmd := p.cmd
	err := cmd.Wait()
	p.out.Flush()
	if errors.Is(err, exec.ErrWaitDelay) {
		// The postmaster exited cleanly; only orphaned backends held its
		// output open.
		err = nil
	}
	pid := cmd.Process.Pid
	switch {
	case p.stopping.Load():
		p.err = nil
	case err != nil:
		p.err = fmt.Errorf("postgres (pid %d) exited unexpectedly: %w; last output:%s", pid, err, p.out.tailText())
	default:
		p.err = fmt.Errorf("postgres (pid %d) exited unexpectedly with status 0; last output:%s", pid, p.out.tailText())
	}
	log.Info("postgres exited", "pid", pid, "status", cmd.ProcessState.String(), "requested", p.stopping.Load())
	close(p.done)
}

func tailContains(o *output, s string) bool {
	for _, l := range o.Tail() {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// pidFile holds the postmaster.pid lines Start looks at. See
// src/include/utils/pidfile.h: line 1 pid, 4 port, 6 first listen address,
// 8 status.
type pidFile struct {
	pid        int
	port       int
	listenAddr string
	status     string
}

func readPidFile(dataDir string) (pidFile, error) {
	data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return pidFile{}, err
	}
	lines := strings.Split(string(data), "\n")
	field := func(n int) string {
		if n <= len(lines) {
			return strings.TrimSpace(lines[n-1])
		}
		return ""
	}
	var pf pidFile
	pf.pid, _ = strconv.Atoi(field(1))
	pf.port, _ = strconv.Atoi(field(4))
	pf.listenAddr = field(6)
	pf.status = field(8)
	return pf, nil
}

// ready reports whether the postmaster with pid accepts connections, and
// whether it was asked and refused. A stale postmaster.pid from an earlier
// crash names another pid and is ignored.
func (i *Instance) ready(ctx context.Context, pid int) (ready, refused bool) {
	pf, err := readPidFile(i.cfg.DataDir)
	if err != nil || pf.pid != pid || pf.port == 0 {
		return false, false
	}
	// "standby" also covers a standby with hot_standby off, which never
	// accepts connections; the probe below tells.
	if pf.status != "ready" && pf.status != "standby" {
		return false, false
	}
	host := pf.listenAddr
	switch host {
	case "":
		// listen_addresses is empty: nothing to probe over TCP; the
		// postmaster's own status has to do.
		return true, false
	case "*", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	ok := probe(ctx, net.JoinHostPort(host, strconv.Itoa(pf.port)))
	return ok, !ok
}

// probe reports whether a server at addr answers a startup packet with
// anything but "the database system is starting up" (SQLSTATE 57P03), which
// is what libpq's PQping calls accepting connections. It hangs up at the
// authentication request, which postgres does not log, and needs no password.
func probe(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))

	params := "user\x00postgres\x00database\x00postgres\x00\x00"
	msg := binary.BigEndian.AppendUint32(nil, uint32(8+len(params)))
	msg = binary.BigEndian.AppendUint32(msg, 196608) // protocol 3.0
	msg = append(msg, params...)
	if _, err := c.Write(msg); err != nil {
		return false
	}

	// Read the whole first message: closing with unread data would reset
	// the connection, which the server logs.
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return false
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > 64<<10 {
		return false
	}
	reply := make([]byte, n)
	if _, err := io.ReadFull(c, reply); err != nil {
		return false
	}
	switch hdr[0] {
	case 'R', 'v': // authentication request, protocol negotiation: accepting
		return true
	case 'E':
		for _, f := range bytes.Split(reply, []byte{0}) {
			if len(f) > 0 && f[0] == 'C' {
				return string(f[1:]) != "57P03"
			}
		}
		return true
	}
	return false
}

// WALGone reports whether, within the last window, the running
// postmaster's walreceiver was told by its upstream that WAL it needs has
// been removed there. Such a standby cannot catch up by streaming from that
// upstream; the window keeps one old refusal from condemning a standby that
// has streamed since.
func (i *Instance) WALGone(window time.Duration) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	p := i.running()
	if p == nil {
		return false
	}
	at := p.walGone.Load()
	return at != 0 && time.Since(time.Unix(0, at)) < window
}

// Done returns a channel that is closed when the postmaster started by the
// last Start exits, whether asked to or not; ExitErr then tells why. Before
// any Start the channel is already closed.
func (i *Instance) Done() <-chan struct{} {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return i.proc.done
}

// ExitErr tells why the last postmaster exited: nil while it runs, when it
// never ran, or when Stop asked it to exit; otherwise an error with its exit
// status and last output lines.
func (i *Instance) ExitErr() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil || !i.proc.exited() {
		return nil
	}
	return i.proc.err
}

// Pid is the postmaster's pid, 0 if not running.
func (i *Instance) Pid() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	if p := i.running(); p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// Reload sends SIGHUP to the running postmaster so it rereads its
// configuration files, which is enough for primary_conninfo, pg_hba.conf and
// most parameters; listen_addresses, port and a few others need a restart.
func (i *Instance) Reload() error {
	i.mu.Lock()
	p := i.running()
	i.mu.Unlock()
	if p == nil {
		return fmt.Errorf("reload postgres in %s: %w", i.cfg.DataDir, ErrNotRunning)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload postgres in %s: %w", i.cfg.DataDir, err)
	}
	return nil
}

// Stop shuts the postmaster down, escalating when a mode does not finish
// within timeout/3: SIGTERM (smart: wait for sessions to end), SIGINT (fast:
// roll back and disconnect sessions, checkpoint), SIGQUIT (immediate: no
// checkpoint, crash recovery at next start), then SIGKILL. It returns once the
// child is reaped; it is a no-op when nothing runs.
func (i *Instance) Stop(timeout time.Duration) error {
	i.mu.Lock()
	p := i.running()
	i.mu.Unlock()
	if p == nil {
		return nil
	}
	return i.stop(p, timeout, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
}

// StopFast shuts the postmaster down without waiting for sessions to end:
// SIGINT (fast), then SIGQUIT (immediate), then SIGKILL, each after half of
// timeout. It is what an agent uses: a smart shutdown waits for every client
// to disconnect, which an application's connection pool never does.
func (i *Instance) StopFast(timeout time.Duration) error {
	i.mu.Lock()
	p := i.running()
	i.mu.Unlock()
	if p == nil {
		return nil
	}
	return i.stop(p, timeout, syscall.SIGINT, syscall.SIGQUIT)
}

// stop sends each signal in turn, giving each an equal share of timeout,
// then SIGKILL, and waits for the reaper. It returns once no process of the
// instance is left: a postmaster that was killed leaves its backends
// running, and they must not outlive the stop.
func (i *Instance) stop(p *process, timeout time.Duration, sigs ...syscall.Signal) error {
	p.stopping.Store(true)
	step := timeout / time.Duration(len(sigs))
	pid := p.cmd.Process.Pid
	for _, sig := range sigs {
		if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("stop postgres (pid %d): %s: %w", pid, sig, err)
		}
		t := time.NewTimer(step)
		select {
		case <-p.done:
			t.Stop()
			return i.killStragglers(pid)
		case <-t.C:
		}
		i.log.Warn("postgres did not stop in time, escalating", "pid", pid, "signal", sig.String(), "waited", step)
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop postgres (pid %d): kill: %w", pid, err)
	}
	<-p.done
	return i.killStragglers(pid)
}

// killStragglers kills what is left of the instance after its postmaster
// (pid) exited.
func (i *Instance) killStragglers(pid int) error {
	n, err := killAll(instanceDirs(i.cfg.DataDir), fenceTimeout)
	if err != nil {
		return fmt.Errorf("stop postgres (pid %d): %w", pid, err)
	}
	if n > 0 {
		i.log.Warn("killed processes the postmaster left behind", "pid", pid, "processes", n)
	}
	return nil
}

// Remove deletes DataDir, leftovers of interrupted InitDB or BaseBackup
// runs, and the replication passfile; it is how a destroyed member's disk is
// freed. It refuses while postgres runs.
func (i *Instance) Remove() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if p := i.running(); p != nil {
		return fmt.Errorf("remove %s: postgres is running (pid %d)", i.cfg.DataDir, p.cmd.Process.Pid)
	}
	paths := []string{i.passfilePathLocked(), i.CertPath(), i.KeyPath(), i.cfg.DataDir, i.cfg.DataDir + initSuffix, i.cfg.DataDir + backupSuffix}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	i.settings = nil
	return syncDir(filepath.Dir(i.cfg.DataDir))
}
