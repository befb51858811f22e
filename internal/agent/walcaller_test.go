package agent

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// TestCallerOf checks how the WAL socket tells whose process a caller of
// the postgres OS user is, on a made-up process tree: agent 100 runs the
// postmasters 200 (demo-1) and 300 (other-1) and pg_rewind 400.
func TestCallerOf(t *testing.T) {
	parents := map[int]int{
		200: 100, 300: 100, 400: 100, 100: 1,
		210: 200, 211: 210, 212: 211, // demo-1's archiver, its shell, pgfleet wal push
		310: 300, 311: 310, 312: 311, // a backend of other-1 running COPY ... TO PROGRAM
		411: 400, 412: 411, // pg_rewind's restore_command
		900: 1, 901: 900, // a process outside the agent's tree
	}
	ppid := func(p int) (int, error) {
		if pp, ok := parents[p]; ok {
			return pp, nil
		}
		return 0, errors.New("no such process")
	}
	pms := map[int]memberRef{200: {"demo", "demo-1"}, 300: {"other", "other-1"}}
	for _, tt := range []struct {
		pid     int
		want    memberRef
		byAgent bool
		err     string
	}{
		{pid: 212, want: memberRef{"demo", "demo-1"}},
		{pid: 312, want: memberRef{"other", "other-1"}},
		{pid: 412, byAgent: true},
		{pid: 901, err: "descends from no member"},
		{pid: 5000, err: "no such process"},
	} {
		ref, byAgent, err := callerOf(tt.pid, 100, pms, ppid)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("callerOf(%d) = %v, %v, %v; want an error with %q", tt.pid, ref, byAgent, err, tt.err)
			}
			continue
		}
		if err != nil || ref != tt.want || byAgent != tt.byAgent {
			t.Errorf("callerOf(%d) = %v, %v, %v; want %v, %v", tt.pid, ref, byAgent, err, tt.want, tt.byAgent)
		}
	}
}

// TestProcPPid reads this test's own parent from /proc.
func TestProcPPid(t *testing.T) {
	got, err := procPPid(os.Getpid())
	if err != nil || got != os.Getppid() {
		t.Fatalf("procPPid(self) = %d, %v; want %d", got, err, os.Getppid())
	}
}
