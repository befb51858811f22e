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
		// A former primary on timeline 1 that wrote past the fork has more
		// bytes than the member promoted onto timeline 2: the newer
		// timeline wins, or its acknowledged commits would be discarded.
		{"newer timeline beats more WAL", []fleet.Candidacy{cand("db-1", 0x3000100, 0), onTL(cand("db-2", 0x3000000, 0), 2)}, nil, "db-2"},
		{"same timeline: most WAL", []fleet.Candidacy{onTL(cand("db-1", 0x3000100, 0), 2), onTL(cand("db-2", 0x3000000, 0), 2)}, nil, "db-1"},
	}
	// The cluster's primary announced timeline 3: members left on older
	// timelines are out in asynchronous mode.
	tlTests := []struct {
		name  string
		cands []fleet.Candidacy
		want  string
	}{
		{"behind the cluster's timeline: out", []fleet.Candidacy{onTL(cand("db-2", 900, 0), 2), onTL(cand("db-3", 100, 0), 3)}, "db-3"},
		{"only members behind: no one", []fleet.Candidacy{onTL(cand("db-2", 900, 0), 2)}, ""},
		{"ahead of the record: in", []fleet.Candidacy{onTL(cand("db-2", 900, 0), 4), onTL(cand("db-3", 950, 0), 3)}, "db-2"},
	}
	for _, tt := range tlTests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := Elect(ElectionInput{Now: now, Spec: spec, Members: members, Candidates: tt.cands, Timeline: 3})
			if got != tt.want {
				t.Fatalf("Elect(%+v, timeline 3) = %q (%s), want %q", tt.cands, got, why, tt.want)
			}
		})
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
		{"sync without published state: async rules", []fleet.Candidacy{onTL(cand("db-2", 900, 0), 2)}, nil, "db-2"},
		{"sync: newer timeline wins", []fleet.Candidacy{cand("db-2", 990, 0), onTL(cand("db-3", 950, 0), 2)}, both, "db-3"},
	}
	for _, tt := range syncTests {
		t.Run(tt.name, func(t *testing.T) {
			// The sync set counts whatever the timeline record says.
			got, why := Elect(ElectionInput{Now: now, Spec: syncSpec, Members: members, Candidates: tt.cands, Sync: tt.sync, Timeline: 2})
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

func onTL(c fleet.Candidacy, tl int64) fleet.Candidacy {
	c.Timeline = tl
	return c
}

// TestCandidacyClock: a candidacy is as old as the time since its revision
// last changed here, whatever clock its candidate stamped it with.
func TestCandidacyClock(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	skewed := t0.Add(-time.Hour) // the candidate's clock is an hour behind
	var k CandidacyClock
	at := func(cands []fleet.Candidacy, now time.Time) map[string]time.Time {
		m := map[string]time.Time{}
		for _, c := range k.Date(now, cands) {
			m[c.Member] = c.At
		}
		return m
	}
	got := at([]fleet.Candidacy{{Member: "a", Rev: 10, At: skewed}, {Member: "b", Rev: 11, At: skewed}}, t0)
	if !got["a"].Equal(t0) || !got["b"].Equal(t0) {
		t.Fatalf("Date(first sight) = %v, want both at %v", got, t0)
	}
	// a republished, b did not.
	got = at([]fleet.Candidacy{{Member: "a", Rev: 12, At: skewed}, {Member: "b", Rev: 11, At: skewed}}, t0.Add(2*time.Second))
	if !got["a"].Equal(t0.Add(2*time.Second)) || !got["b"].Equal(t0) {
		t.Fatalf("Date(a republished) = %v, want a at t0+2s and b at t0", got)
	}
	// b went away and came back: seen anew.
	at([]fleet.Candidacy{{Member: "a", Rev: 12}}, t0.Add(3*time.Second))
	got = at([]fleet.Candidacy{{Member: "b", Rev: 11}}, t0.Add(4*time.Second))
	if !got["b"].Equal(t0.Add(4 * time.Second)) {
		t.Fatalf("Date(b back) = %v, want b at t0+4s", got)
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
