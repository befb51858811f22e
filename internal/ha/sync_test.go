package ha

import (
	"fmt"
	"slices"
	"testing"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func TestInitialSync(t *testing.T) {
	spec := fleet.ClusterSpec{Name: "db", PrimaryRegion: "iad", Sync: fleet.SyncOn}
	members := []fleet.MemberSpec{
		{ID: "db-1", Region: "iad", Role: fleet.RolePrimary},
		{ID: "db-2", Region: "iad", Role: fleet.RoleStandby},
		{ID: "db-3", Region: "iad", Role: fleet.RoleStandby},
		{ID: "db-4", Region: "ams", Role: fleet.RoleReplica},
	}
	st := func(states ...string) map[string]fleet.MemberStatus {
		m := map[string]fleet.MemberStatus{}
		for i := 0; i+1 < len(states); i += 2 {
			m[states[i]] = fleet.MemberStatus{State: fleet.State(states[i+1])}
		}
		return m
	}
	strict := spec
	strict.Sync = fleet.SyncStrict
	off := spec
	off.Sync = fleet.SyncOff
	tests := []struct {
		name   string
		spec   fleet.ClusterSpec
		status map[string]fleet.MemberStatus
		prev   *fleet.SyncState
		wantS  string
		wantK  string
	}{
		{"both standbys run", spec, st("db-1", "catching-up", "db-3", "streaming", "db-4", "streaming"), nil, "[db-1 db-3]", "[db-1 db-3]"},
		// db-1 was fenced and cannot start: commits must not wait for
		// it, and the next election must not wait for it either.
		{"a member that cannot start is left out", spec, st("db-1", "starting", "db-3", "catching-up"), &fleet.SyncState{Primary: "db-1", Members: []string{"db-2", "db-3"}}, "[db-3]", "[db-3]"},
		// db-1 may hold the previous term's last commits: it stays in K
		// until a member of S has flushed past this term's start.
		{"the previous sync set stays", spec, st("db-3", "catching-up"), &fleet.SyncState{Primary: "db-2", Members: []string{"db-1", "db-3"}}, "[db-3]", "[db-1 db-3]"},
		{"replicas never count", spec, st("db-4", "streaming"), &fleet.SyncState{Members: []string{"db-4"}}, "[]", "[]"},
		{"on with no running standby: asynchronous", spec, st("db-1", "failed"), nil, "[]", "[]"},
		{"strict with no running standby waits for every one", strict, st("db-1", "failed"), nil, "[db-1 db-3]", "[db-1 db-3]"},
		{"off", off, st("db-1", "streaming"), nil, "[]", "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, k := InitialSync(tt.spec, members, tt.status, tt.prev, "db-2")
			if got := fmt.Sprint(s); got != tt.wantS && !(got == "[]" && tt.wantS == "[]") {
				t.Errorf("InitialSync() S = %v, want %s", s, tt.wantS)
			}
			if got := fmt.Sprint(k); got != tt.wantK {
				t.Errorf("InitialSync() K = %v, want %s", k, tt.wantK)
			}
		})
	}
	// A member on its way out of the cluster is no synchronous standby,
	// but may still be elected: it may hold commits alone until the sync
	// set lets go of it.
	leaving := slices.Clone(members)
	leaving[2].Leaving = true
	if s, k := InitialSync(spec, leaving, st("db-1", "streaming", "db-3", "streaming"), nil, "db-2"); fmt.Sprint(s) != "[db-1]" || fmt.Sprint(k) != "[db-1]" {
		t.Errorf("InitialSync() with db-3 leaving: S = %v, K = %v; want [db-1] for both", s, k)
	}
	if !Eligible(leaving[2], spec) || SyncEligible(leaving[2], spec) {
		t.Error("a leaving standby must stay eligible for elections and not for the sync set")
	}
}
