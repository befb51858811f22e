package ha

import (
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func TestElect(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	spec := fleet.ClusterSpec{Name: "db", PrimaryRegion: "iad", MaxLagOnFailover: 1000}
	members := []fleet.MemberSpec{
		{ID: "db-1", Region: "iad", Role: fleet.RolePrimary},
		{ID: "db-2", Region: "iad", Role: fleet.RoleStandby},
		{ID: "db-3", Region: "iad", Role: fleet.RoleStandby},
		{ID: "db-4", Region: "ams", Role: fleet.RoleReplica},
	}
	cand := func(id string, lsn uint64, lag int64) fleet.Candidacy {
		return fleet.Candidacy{Member: id, LSN: lsn, LagBytes: lag, Timeline: 1, At: now.Add(-time.Second)}
	}
	tests := []struct {
		name  string
		cands []fleet.Candidacy
		sw    *fleet.Switchover
		want  string
	}{
		{"most advanced wins", []fleet.Candidacy{cand("db-2", 100, 0), cand("db-3", 200, 0)}, nil, "db-3"},
		{"tie goes to lower id", []fleet.Candidacy{cand("db-3", 200, 0), cand("db-2", 200, 0)}, nil, "db-2"},
		{"replica never wins", []fleet.Candidacy{cand("db-2", 100, 0), cand("db-4", 900, 0)}, nil, "db-2"},
		{"only a replica: no one", []fleet.Candidacy{cand("db-4", 900, 0)}, nil, ""},
		{"too far behind", []fleet.Candidacy{cand("db-2", 100, 5000)}, nil, ""},
		{"lagging one excluded, other wins", []fleet.Candidacy{cand("db-2", 100, 5000), cand("db-3", 90, 10)}, nil, "db-3"},
		{"unknown member ignored", []fleet.Candidacy{cand("db-9", 900, 0), cand("db-2", 100, 0)}, nil, "db-2"},
		{"stale candidacy ignored", []fleet.Candidacy{{Member: "db-3", LSN: 900, At: now.Add(-10 * time.Second)}, cand("db-2", 100, 0)}, nil, "db-2"},
		{"no candidates", nil, nil, ""},
		{"placed primary may win after it rejoined", []fleet.Candidacy{cand("db-1", 300, 0), cand("db-2", 100, 0)}, nil, "db-1"},
		{"switchover waits for the old primary to stop", []fleet.Candidacy{cand("db-2", 100, 0)}, &fleet.Switchover{From: "db-1", To: "db-2", Requested: now}, ""},
		{"switchover waits for the target to catch up", []fleet.Candidacy{cand("db-2", 100, 0), cand("db-3", 300, 0)}, &fleet.Switchover{From: "db-1", To: "db-2", LSN: 200, Requested: now}, ""},
		{"switchover target wins once caught up", []fleet.Candidacy{cand("db-2", 200, 0), cand("db-3", 300, 0)}, &fleet.Switchover{From: "db-1", To: "db-2", LSN: 200, Requested: now}, "db-2"},
		{"stalled switchover falls back to an election", []fleet.Candidacy{cand("db-2", 100, 0), cand("db-3", 300, 0)}, &fleet.Switchover{From: "db-1", To: "db-2", Requested: now.Add(-time.Minute)}, "db-3"},
	}
	syncSpec := spec
	syncSpec.Sync = fleet.SyncOn
	both := &fleet.SyncState{Primary: "db-1", Members: []string{"db-2", "db-3"}}
	syncTests := []struct {
		name  string
		cands []fleet.Candidacy
		sync  *fleet.SyncState
		want  string
	}{
		{"sync: waits for every sync member", []fleet.Candidacy{cand("db-2", 900, 0)}, both, ""},
		{"sync: most advanced sync member wins", []fleet.Candidacy{cand("db-2", 900, 0), cand("db-3", 950, 0)}, both, "db-3"},
		{"sync: lag limit does not apply", []fleet.Candidacy{cand("db-2", 900, 5000), cand("db-3", 100, 0)}, both, "db-2"},
		{"sync: a non-member does not count", []fleet.Candidacy{cand("db-2", 900, 0), cand("db-1", 990, 0)}, &fleet.SyncState{Members: []string{"db-2"}}, "db-2"},
		{"sync without published state: async rules", []fleet.Candidacy{cand("db-2", 900, 0)}, nil, "db-2"},
	}
	for _, tt := range syncTests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := Elect(ElectionInput{Now: now, Spec: syncSpec, Members: members, Candidates: tt.cands, Sync: tt.sync})
			if got != tt.want {
				t.Fatalf("Elect(%+v, sync %+v) = %q (%s), want %q", tt.cands, tt.sync, got, why, tt.want)
			}
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := Elect(ElectionInput{Now: now, Spec: spec, Members: members, Candidates: tt.cands, Switchover: tt.sw})
			if got != tt.want {
				t.Fatalf("Elect(%+v, switchover %+v) = %q (%s), want %q", tt.cands, tt.sw, got, why, tt.want)
			}
			if why == "" {
				t.Fatal("Elect gave no reason")
			}
		})
	}
}

func TestFenceDeadline(t *testing.T) {
	sent := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		ttl      time.Duration
		wantLeft time.Duration
	}{
		{3 * time.Second, 2250 * time.Millisecond},
		{1 * time.Second, 700 * time.Millisecond},
		{10 * time.Second, 7500 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := FenceDeadline(sent, tt.ttl).Sub(sent); got != tt.wantLeft {
			t.Errorf("FenceDeadline(sent, %s) = sent+%s, want sent+%s", tt.ttl, got, tt.wantLeft)
		}
		if !FenceDeadline(sent, tt.ttl).Before(sent.Add(tt.ttl)) {
			t.Errorf("FenceDeadline(sent, %s) is not before the lease can expire", tt.ttl)
		}
	}
}
