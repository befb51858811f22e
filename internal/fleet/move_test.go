package fleet

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// moveCluster is cluster db with two members in a (db-1 the primary) and
// hosts a1, a2, b1, b2, b3 and c1.
func moveCluster(sync string) MoveInput {
	spec := ClusterSpec{Name: "db", PrimaryRegion: "a", HA: 2, Port: 6000, Sync: sync}
	members := []MemberSpec{
		{ID: "db-1", Cluster: "db", Host: "a1", Region: "a", Role: RolePrimary, Port: 6000},
		{ID: "db-2", Cluster: "db", Host: "a2", Region: "a", Role: RoleStandby, Port: 6000},
	}
	var hosts []Host
	for _, h := range []string{"a1", "a2", "b1", "b2", "b3", "c1"} {
		hosts = append(hosts, Host{Name: h, Region: h[:1]})
	}
	return MoveInput{
		Spec: spec, Members: members, Leader: "db-1", Hosts: hosts,
		Status: map[string]MemberStatus{
			"db-1": {ID: "db-1", Role: RolePrimary, State: StateRunning, Healthy: true},
			"db-2": {ID: "db-2", Role: RoleStandby, State: StateStreaming, Healthy: true},
		},
		Now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Region: "b",
	}
}

// begun is moveCluster after the move to b began: db-3 and db-4 placed
// in b, streaming with the lags given (-1: still cloning).
func begun(sync string, lag3, lag4 int64, drop ...string) MoveInput {
	in := moveCluster(sync)
	in.Spec.Move = &Move{From: "a", To: "b", Added: []string{"db-3", "db-4"}, Drop: drop}
	in.Members = append(in.Members,
		MemberSpec{ID: "db-3", Cluster: "db", Host: "b1", Region: "b", Role: RoleStandby, Port: 6000},
		MemberSpec{ID: "db-4", Cluster: "db", Host: "b2", Region: "b", Role: RoleStandby, Port: 6000})
	for id, lag := range map[string]int64{"db-3": lag3, "db-4": lag4} {
		st := MemberStatus{ID: id, Role: RoleStandby, State: StateStreaming, Healthy: true, LagBytes: lag}
		if lag < 0 {
			st = MemberStatus{ID: id, Role: RoleStandby, State: StateCloning, Progress: "40%", LagBytes: -1}
		}
		in.Status[id] = st
	}
	return in
}

// switched is begun after the switchover to db-3.
func switched(sync string, drop ...string) MoveInput {
	in := begun(sync, 0, 0, drop...)
	in.Leader = "db-3"
	in.Status["db-3"] = MemberStatus{ID: "db-3", Role: RolePrimary, State: StateRunning, Healthy: true}
	in.Status["db-1"] = MemberStatus{ID: "db-1", Role: RoleStandby, State: StateStreaming, Healthy: true}
	return in
}

// flipped is switched after the flip.
func flipped(sync string, drop ...string) MoveInput {
	in := switched(sync, drop...)
	in.Spec, _ = FlipMove(in.Spec, in.Members)
	for i := range in.Members {
		if in.Members[i].Region == "a" {
			in.Members[i].Role = RoleReplica
		}
	}
	return in
}

func TestNextMoveStep(t *testing.T) {
	for _, tt := range []struct {
		name   string
		in     func() MoveInput
		action MoveAction
		want   string // in Why, or in the error
		check  func(t *testing.T, s MoveStep)
	}{
		{"already there", func() MoveInput { in := moveCluster(""); in.Region = "a"; return in }, MoveDone, "nothing to do: a is already the primary region", nil},
		{"unknown region", func() MoveInput { in := moveCluster(""); in.Region = "syd"; return in }, "", `unknown region "syd"`, nil},
		{"too few hosts", func() MoveInput { in := moveCluster(""); in.Region = "c"; return in }, "", "c has 1 host(s) (c1)", nil},
		{"no primary", func() MoveInput { in := moveCluster(""); in.Leader = ""; return in }, "", "has no primary right now", nil},
		{"sync with ha 1", func() MoveInput { in := moveCluster(SyncOn); in.Spec.HA = 1; return in }, "", "raise ha first", nil},
		{"no region asked, no move", func() MoveInput { in := moveCluster(""); in.Region = ""; return in }, "", "--primary-region", nil},
		{"reverse without a move", func() MoveInput { in := moveCluster(""); in.Reverse = true; return in }, "", "no move under way to reverse", nil},
		{"begin", func() MoveInput { return moveCluster("") }, MoveBegin, "2 standby(s) placed in b", func(t *testing.T, s MoveStep) {
			if s.Add != 2 || s.Move.From != "a" || s.Move.To != "b" || len(s.Move.Drop) != 0 {
				t.Errorf("begin = %+v, move %+v; want 2 added, a to b, nothing dropped", s, s.Move)
			}
		}},
		{"begin --drop-old", func() MoveInput { in := moveCluster(""); in.DropOld = true; return in }, MoveBegin, "", func(t *testing.T, s MoveStep) {
			if !slices.Equal(s.Move.Drop, []string{"db-1", "db-2"}) {
				t.Errorf("begin --drop-old drops %v; want db-1, db-2", s.Move.Drop)
			}
		}},
		{"begin where a replica is", func() MoveInput {
			in := moveCluster("")
			in.Members = append(in.Members, MemberSpec{ID: "db-3", Cluster: "db", Host: "b1", Region: "b", Role: RoleReplica, Port: 6000})
			return in
		}, MoveBegin, "db-3 made standby", func(t *testing.T, s MoveStep) {
			if s.Add != 1 || !slices.Equal(s.Convert, []string{"db-3"}) {
				t.Errorf("begin = %+v; want db-3 converted and 1 added", s)
			}
		}},
		{"cloning", func() MoveInput { return begun("", 0, -1) }, MoveWait, "to stream: db-4 cloning 40%", nil},
		{"far behind", func() MoveInput { return begun("", 0, 64<<20) }, MoveWait, "db-4 64.0 MB behind", nil},
		{"no primary mid-move", func() MoveInput { in := begun("", 0, 0); in.Leader = ""; return in }, MoveWait, "no primary right now", nil},
		{"switchover to the least behind", func() MoveInput { return begun("", 300, 200) }, MoveSwitchover, "from db-1 to db-4", func(t *testing.T, s MoveStep) {
			if s.SwitchTo != "db-4" {
				t.Errorf("switchover to %s; want db-4", s.SwitchTo)
			}
		}},
		{"switchover under way", func() MoveInput {
			in := begun("", 0, 0)
			in.Switchover = &Switchover{From: "db-1", To: "db-3"}
			return in
		}, MoveWait, "switchover from db-1 to db-3", nil},
		{"async: flip after the switchover", func() MoveInput { return switched("") }, MoveFlip, "b is the primary region", nil},
		{"the new primary still promoting", func() MoveInput {
			in := switched("")
			in.Status["db-3"] = MemberStatus{ID: "db-3", Role: RoleStandby, State: StateCatchingUp}
			return in
		}, MoveWait, "waiting for db-3 to run as primary", nil},
		{"sync: a leaves the sync set", func() MoveInput { return switched(SyncOn) }, MoveLeave, "db-1, db-2 leave", func(t *testing.T, s MoveStep) {
			if !slices.Equal(s.Leave, []string{"db-1", "db-2"}) {
				t.Errorf("leave %v; want db-1, db-2", s.Leave)
			}
		}},
		{"sync: set still holds a member of a", func() MoveInput {
			in := switched(SyncOn)
			in.Members[0].Leaving, in.Members[1].Leaving = true, true
			in.Sync = &SyncState{Primary: "db-3", Members: []string{"db-2", "db-4"}}
			return in
		}, MoveWait, "let go of db-2", nil},
		{"sync: set within b, flip", func() MoveInput {
			in := switched(SyncOn)
			in.Members[0].Leaving, in.Members[1].Leaving = true, true
			in.Sync = &SyncState{Primary: "db-3", Members: []string{"db-4"}}
			return in
		}, MoveFlip, "", nil},
		{"finish, keeping a", func() MoveInput { return flipped("") }, MoveFinish, "the move of db to b is done", func(t *testing.T, s MoveStep) {
			if len(s.Remove) != 0 {
				t.Errorf("finish removes %v; want none", s.Remove)
			}
		}},
		{"finish, dropping a", func() MoveInput { in := flipped("", "db-1", "db-2"); in.DropOld = true; return in }, MoveFinish, "db-1, db-2 removed", func(t *testing.T, s MoveStep) {
			if !slices.Equal(s.Remove, []string{"db-1", "db-2"}) {
				t.Errorf("finish removes %v; want db-1, db-2", s.Remove)
			}
		}},
		{"resume with --drop-old a move that keeps", func() MoveInput { in := begun("", 0, 0); in.DropOld = true; return in }, "", "began without --drop-old", nil},
		{"elsewhere during a move", func() MoveInput { in := begun("", 0, 0); in.Region = "c"; return in }, "", "reverse it (`pgfleet move db --reverse`)", nil},
		{"resume without a region", func() MoveInput { in := begun("", 0, 0); in.Region = ""; return in }, MoveSwitchover, "", nil},
		{"reverse before the switchover", func() MoveInput { in := begun(SyncOn, 0, 0); in.Region, in.Reverse = "", true; return in }, MoveBegin, "move db from b to a", func(t *testing.T, s MoveStep) {
			if s.Move.From != "b" || s.Move.To != "a" || !slices.Equal(s.Move.Drop, []string{"db-3", "db-4"}) || s.Add != 0 {
				t.Errorf("reverse = %+v, move %+v; want b to a dropping db-3, db-4, nothing added", s, s.Move)
			}
		}},
		{"reverse after the flip", func() MoveInput { in := flipped(""); in.Region = "a"; return in }, MoveBegin, "db-1, db-2 made standby", func(t *testing.T, s MoveStep) {
			if !slices.Equal(s.Convert, []string{"db-1", "db-2"}) || !slices.Equal(s.Move.Drop, []string{"db-3", "db-4"}) {
				t.Errorf("reverse = %+v, move %+v; want db-1, db-2 standbys again, db-3, db-4 dropped", s, s.Move)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NextMoveStep(tt.in())
			if tt.action == "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("NextMoveStep = %+v, %v; want refused, saying %q", s, err, tt.want)
				}
				return
			}
			if err != nil || s.Action != tt.action || !strings.Contains(s.Why, tt.want) {
				t.Fatalf("NextMoveStep = %s %q, %v; want %s, saying %q", s.Action, s.Why, err, tt.action, tt.want)
			}
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}

func TestFlipMove(t *testing.T) {
	in := switched("")
	in.Spec.Replicas = []string{"b", "c"}
	in.Members = append(in.Members, MemberSpec{ID: "db-5", Cluster: "db", Host: "c1", Region: "c", Role: RoleReplica, Port: 6000})
	in.Members[1].Leaving = true
	spec, changed := FlipMove(in.Spec, in.Members)
	if spec.PrimaryRegion != "b" || spec.HA != 2 || !slices.Equal(spec.Replicas, []string{"c", "a"}) {
		t.Errorf("FlipMove spec: primary region %s, ha %d, replicas %v; want b, 2, [c a]", spec.PrimaryRegion, spec.HA, spec.Replicas)
	}
	if len(changed) != 2 {
		t.Fatalf("FlipMove changed %+v; want db-1 and db-2", changed)
	}
	for _, m := range changed {
		if m.Region != "a" || m.Role != RoleReplica || m.Leaving {
			t.Errorf("FlipMove left %s as %s, leaving %v; want a replica, not leaving", m.ID, m.Role, m.Leaving)
		}
	}
	if err := spec.ValidateStored(); err != nil {
		t.Errorf("FlipMove spec does not validate: %v", err)
	}
	done := FinishMove(spec, in.Members, []string{"db-1", "db-2"})
	if done.Move != nil || !slices.Equal(done.Replicas, []string{"c"}) {
		t.Errorf("FinishMove dropping a: move %+v, replicas %v; want none, [c]", done.Move, done.Replicas)
	}
}
