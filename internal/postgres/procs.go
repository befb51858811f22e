package postgres

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// An instance's processes are found by their working directory. The
// postmaster changes into its data directory before it forks anything, and
// every backend, auxiliary process and archive_command shell inherits that
// directory, while none of them keeps the postmaster as its process group
// (each child calls setsid) or, once the postmaster is gone, as its parent.
// The working directory is the one mark that every one of them carries for
// its whole life, whoever its parent is by then.

// instanceDirs are the paths an instance's processes report as their working
// directory: the data directory as configured and with symlinks resolved.
func instanceDirs(dataDir string) []string {
	dirs := []string{dataDir}
	if real, err := filepath.EvalSymlinks(dataDir); err == nil && real != dataDir {
		dirs = append(dirs, real)
	}
	return dirs
}

// procsIn returns the live processes whose working directory is one of dirs.
// Zombies have no readable working directory and are left out: they run no
// code and hold no connection.
func procsIn(dirs []string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd")
		if err != nil {
			continue
		}
		cwd = strings.TrimSuffix(cwd, " (deleted)")
		for _, d := range dirs {
			if cwd == d {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// alive reports whether pid still runs code: it exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain spaces and parentheses.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}

// ErrStragglers is returned when processes of an instance outlived every
// attempt to kill them (a process stuck in uninterruptible I/O, or one owned
// by another user that this process may not signal).
var ErrStragglers = errors.New("processes of the instance are still running")

// killAll kills every process whose working directory is one of dirs and
// returns once none is left, or after timeout. It first stops them all
// (SIGSTOP), so that a postmaster cannot fork a replacement for a child it
// sees die, then kills them (SIGKILL, which also ends stopped processes), and
// scans again until a scan finds nothing. A SIGKILLed process runs no more
// user code, so once killAll returns no transaction of the instance commits.
func killAll(dirs []string, timeout time.Duration) (killed int, err error) {
	deadline := time.Now().Add(timeout)
	for {
		pids := procsIn(dirs)
		if len(pids) == 0 {
			return killed, nil
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGSTOP)
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
		for {
			left := slices.DeleteFunc(slices.Clone(pids), func(pid int) bool { return !alive(pid) })
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return killed, fmt.Errorf("%w: pids %v in %s", ErrStragglers, left, dirs[0])
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}
