package fleet

import (
	"slices"
	"strings"
	"testing"
)

func TestNextMemberNumbers(t *testing.T) {
	for _, tt := range []struct {
		name             string
		current, removed []string
		k                int
		want             []int
		err              string
	}{
		{"after the highest", []string{"db-1", "db-2"}, nil, 1, []int{3}, ""},
		{"past removed ones", []string{"db-1", "db-2"}, []string{"db-3", "db-5"}, 2, []int{6, 7}, ""},
		{"reuse once past the last", []string{"db-1", "db-25"}, nil, 2, []int{2, 3}, ""},
		{"full", numbered(25), nil, 1, nil, "at most 25"},
	} {
		got, err := NextMemberNumbers("db", tt.current, tt.removed, tt.k)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: %v, %v; want an error with %q", tt.name, got, err, tt.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
}

func numbered(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, MemberID("db", i))
	}
	return out
}

func TestPlaceMore(t *testing.T) {
	spec := ClusterSpec{Name: "db", PrimaryRegion: "iad", HA: 2, Port: 6000}
	hosts := []Host{{Name: "iad-1", Region: "iad"}, {Name: "iad-2", Region: "iad"}, {Name: "iad-3", Region: "iad"}, {Name: "ams-1", Region: "ams"}, {Name: "ams-2", Region: "ams"}}
	existing := []MemberSpec{{ID: "db-1", Host: "iad-1"}, {ID: "db-2", Host: "iad-2"}}
	got, err := PlaceMore(spec, existing, "ams", RoleReplica, 1, []int{3}, hosts, map[string]int{"ams-1": 2})
	if err != nil || len(got) != 1 || got[0].Host != "ams-2" || got[0].ID != "db-3" || got[0].Role != RoleReplica || got[0].Port != 6000 {
		t.Errorf("PlaceMore(ams) = %+v, %v; want db-3 on the less loaded ams-2", got, err)
	}
	if _, err := PlaceMore(spec, existing, "iad", RoleStandby, 2, []int{3, 4}, hosts, nil); err == nil || !strings.Contains(err.Error(), "already has a member on 2") {
		t.Errorf("PlaceMore(iad, 2) = %v; want refused, naming the hosts taken", err)
	}
	if _, err := PlaceMore(spec, existing, "syd", RoleReplica, 1, []int{3}, hosts, nil); err == nil || !strings.Contains(err.Error(), "no running host") {
		t.Errorf("PlaceMore(syd) = %v; want refused: no host there", err)
	}
}

func TestStandbysToRemove(t *testing.T) {
	spec := ClusterSpec{Name: "db", Sync: SyncOff}
	members := []MemberSpec{
		{ID: "db-1", Role: RolePrimary}, {ID: "db-2", Role: RoleStandby}, {ID: "db-3", Role: RoleStandby}, {ID: "db-4", Role: RoleReplica},
	}
	// db-2 leads after a failover: the member placed as primary may go.
	if got, err := StandbysToRemove(spec, members, "db-2", nil, 2); err != nil || !slices.Equal(got, []string{"db-3", "db-1"}) {
		t.Errorf("StandbysToRemove(2) = %v, %v; want [db-3 db-1]", got, err)
	}
	// Outside the sync set first; one already leaving before anything.
	if got, err := StandbysToRemove(spec, members, "db-1", []string{"db-3"}, 1); err != nil || !slices.Equal(got, []string{"db-2"}) {
		t.Errorf("StandbysToRemove with db-3 in the sync set = %v, %v; want [db-2]", got, err)
	}
	leaving := slices.Clone(members)
	leaving[2].Leaving = true
	if got, err := StandbysToRemove(spec, leaving, "db-1", []string{"db-3"}, 1); err != nil || !slices.Equal(got, []string{"db-3"}) {
		t.Errorf("StandbysToRemove with db-3 leaving = %v, %v; want [db-3]", got, err)
	}
	if _, err := StandbysToRemove(spec, members, "db-1", nil, 3); err == nil || !strings.Contains(err.Error(), "the primary stays") {
		t.Errorf("StandbysToRemove(3) = %v; want refused", err)
	}
	if _, err := StandbysToRemove(spec, members, "", nil, 1); err == nil || !strings.Contains(err.Error(), "no primary right now") {
		t.Errorf("StandbysToRemove without a primary = %v; want refused", err)
	}
	if err := CanRemove(spec, members, "", "db-3"); err == nil || !strings.Contains(err.Error(), "no primary right now") {
		t.Errorf("CanRemove without a primary = %v; want refused", err)
	}
	spec.Sync = SyncOn
	if _, err := StandbysToRemove(spec, members, "db-1", nil, 2); err == nil || !strings.Contains(err.Error(), "sync mode") {
		t.Errorf("StandbysToRemove of every standby in sync mode = %v; want refused, saying why", err)
	}
}
