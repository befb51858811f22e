package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// memberRef names one member of one cluster.
type memberRef struct{ Cluster, Member string }

// walCallerDepth bounds the walk up a caller's ancestors: postgres runs
// archive_command and restore_command through a shell, so the caller is
// two or three processes below its postmaster.
const walCallerDepth = 8

// callerOf tells whose process pid is, by walking up its parents: the
// first one that is a member's postmaster (postmasters, by pid) names the
// member it works for; reaching the agent (agentPID) first means a process
// the agent runs itself (pg_rewind, which runs restore_command). Every
// cluster's postgres on a host runs as the same OS user, so the user alone
// cannot tell one cluster's archive_command from another cluster's
// superuser session posing as it (COPY ... TO PROGRAM); the process tree
// can, and a process cannot choose its parent.
func callerOf(pid, agentPID int, postmasters map[int]memberRef, ppid func(int) (int, error)) (ref memberRef, byAgent bool, err error) {
	p := pid
	for range walCallerDepth {
		if p == agentPID {
			return memberRef{}, true, nil
		}
		if ref, ok := postmasters[p]; ok {
			return ref, false, nil
		}
		if p <= 1 {
			break
		}
		if p, err = ppid(p); err != nil {
			return memberRef{}, false, fmt.Errorf("process %d's parent: %w", pid, err)
		}
	}
	return memberRef{}, false, fmt.Errorf("process %d descends from no member's postgres on this host", pid)
}

// procPPid reads a process's parent from /proc/<pid>/stat.
func procPPid(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, errors.New("unreadable /proc stat")
	}
	return strconv.Atoi(f[1])
}

// postmasters returns the pid of every running postmaster of this host's
// members. The WAL server calls it from its own goroutines.
func (a *Agent) postmasters() map[int]memberRef {
	a.supsMu.RLock()
	defer a.supsMu.RUnlock()
	out := map[int]memberRef{}
	for _, r := range a.sups {
		if pid := r.sup.inst.Pid(); pid > 0 {
			out[pid] = memberRef{Cluster: r.sup.spec.Cluster, Member: r.sup.spec.ID}
		}
	}
	return out
}
