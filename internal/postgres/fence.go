package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StopImmediate stops postgres at once: SIGQUIT makes the postmaster and
// every backend exit without a checkpoint (crash recovery on the next
// start), SIGKILL follows after timeout. It is how a primary fences itself:
// no transaction commits after it returns.
func (i *Instance) StopImmediate(timeout time.Duration) error {
	i.mu.Lock()
	p := i.running()
	i.mu.Unlock()
	if p == nil {
		return nil
	}
	return i.stop(p, timeout, syscall.SIGQUIT)
}

// deadManScript waits for lines on stdin, each the number of seconds left
// until the fence deadline. When a wait times out, it kills the postmaster's
// whole process group; when stdin closes (the agent disarmed it, or died and
// took postgres with it), it exits quietly.
const deadManScript = `t=$1; pgid=$2
while :; do
	read -r -t "$t" next; rc=$?
	if [ "$rc" -gt 128 ]; then kill -KILL -- "-$pgid"; echo "fence: deadline passed, killed postgres process group $pgid"; exit 0; fi
	[ "$rc" -ne 0 ] && exit 0
	t=$next
done`

// DeadMan is a fence that runs outside the agent: a separate process that
// kills postgres unless the agent keeps telling it the leader lease is
// still safely held. A primary's agent that is stopped (SIGSTOP), starved or
// hung cannot keep its own timers; the dead man's switch still fires, so an
// old primary never accepts writes after its lease has expired.
type DeadMan struct {
	mu    sync.Mutex
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

// ArmDeadMan starts the switch for the running postmaster with left until
// the deadline. It fails when postgres is not running.
func (i *Instance) ArmDeadMan(left time.Duration) (*DeadMan, error) {
	pid := i.Pid()
	if pid == 0 {
		return nil, fmt.Errorf("arm fence: %w", ErrNotRunning)
	}
	if left <= 0 {
		return nil, errors.New("arm fence: the deadline has passed")
	}
	cmd := exec.Command("bash", "-c", deadManScript, "pgfleet-fence", seconds(left), strconv.Itoa(pid))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("arm fence: %w", err)
	}
	out := newOutput(i.log.With("cmd", "fence"), nil)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group: a signal meant for the agent's group (a
	// terminal's Ctrl-Z) must not stop the fence too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("arm fence: start bash: %w", err)
	}
	d := &DeadMan{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { cmd.Wait(); close(d.done) }()
	return d, nil
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }

// Extend moves the deadline to left from now. An error means the switch is
// gone (it fired, or was disarmed).
func (d *DeadMan) Extend(left time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if left <= 0 {
		return errors.New("extend fence: the deadline has passed")
	}
	_, err := io.WriteString(d.stdin, seconds(left)+"\n")
	return err
}

// Disarm stops the switch without firing it and waits for it to exit.
func (d *DeadMan) Disarm() {
	d.mu.Lock()
	d.stdin.Close()
	d.mu.Unlock()
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// Fired returns a channel that closes when the switch has exited.
func (d *DeadMan) Fired() <-chan struct{} { return d.done }

// Rewind makes a former primary's data follow src again with pg_rewind, so
// it can rejoin as a standby without a full copy. Postgres must not run. The
// source's superuser password goes through a temporary passfile.
func (i *Instance) Rewind(ctx context.Context, src ConnInfo) error {
	if i.Pid() != 0 {
		return fmt.Errorf("rewind %s: postgres is running", i.cfg.DataDir)
	}
	passfile, cleanup, err := i.secretFile(pgpassLine(src))
	if err != nil {
		return fmt.Errorf("rewind %s: %w", i.cfg.DataDir, err)
	}
	defer cleanup()
	conninfo := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=require connect_timeout=10",
		conninfoValue(src.Host), src.Port, conninfoValue(src.User))
	args := []string{"--target-pgdata=" + i.cfg.DataDir, "--source-server=" + conninfo, "--progress"}
	env := []string{"PGPASSFILE=" + passfile, "PGAPPNAME=pgfleet_rewind"}
	if err := i.runTool(ctx, "pg_rewind", args, env, nil); err != nil {
		return fmt.Errorf("rewind %s from %s: %w", i.cfg.DataDir, src, err)
	}
	return nil
}

// CheckpointLSN reads the latest checkpoint's location from pg_control. After
// a clean shutdown it is the shutdown checkpoint, the last record the server
// wrote: a standby that has received past it has everything.
func (i *Instance) CheckpointLSN(ctx context.Context) (LSN, error) {
	out, err := exec.CommandContext(ctx, i.cfg.Bin.Path("pg_controldata"), "-D", i.cfg.DataDir).Output()
	if err != nil {
		return 0, fmt.Errorf("pg_controldata %s: %w", i.cfg.DataDir, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Latest checkpoint location:"); ok {
			return ParseLSN(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("pg_controldata %s: no checkpoint location in its output", i.cfg.DataDir)
}
