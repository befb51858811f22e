package ha

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// moveSim is a cluster that a move walks through: the store as the steps
// of fleet.NextMoveStep leave it, and a primary that follows its
// standbys in sync mode as the supervisor does.
type moveSim struct {
	t  *testing.T
	in fleet.MoveInput
}

func newMoveSim(t *testing.T, sync string) *moveSim {
	in := fleet.MoveInput{
		Spec:   fleet.ClusterSpec{Name: "db", PrimaryRegion: "a", HA: 2, Port: 6000, Sync: sync, Replicas: []string{"c"}},
		Leader: "db-1", Now: time.Unix(0, 0),
		Members: []fleet.MemberSpec{
			{ID: "db-1", Cluster: "db", Host: "a1", Region: "a", Role: fleet.RolePrimary, Port: 6000},
			{ID: "db-2", Cluster: "db", Host: "a2", Region: "a", Role: fleet.RoleStandby, Port: 6000},
			{ID: "db-3", Cluster: "db", Host: "c1", Region: "c", Role: fleet.RoleReplica, Port: 6000},
		},
		Status: map[string]fleet.MemberStatus{},
	}
	for _, h := range []string{"a1", "a2", "b1", "b2", "c1"} {
		in.Hosts = append(in.Hosts, fleet.Host{Name: h, Region: h[:1]})
	}
	s := &moveSim{t: t, in: in}
	s.setStatus()
	s.reconcile()
	return s
}

func (s *moveSim) setStatus() {
	for _, m := range s.in.Members {
		st := fleet.MemberStatus{ID: m.ID, Role: fleet.RoleStandby, State: fleet.StateStreaming, Healthy: true}
		if m.ID == s.in.Leader {
			st = fleet.MemberStatus{ID: m.ID, Role: fleet.RolePrimary, State: fleet.StateRunning, Healthy: true}
		}
		s.in.Status[m.ID] = st
	}
}

// reconcile is the primary's sync rule: the set grows by the streaming
// standbys its commits wait for, then shrinks to them once one has
// flushed (at once, here).
func (s *moveSim) reconcile() {
	if s.in.Spec.SyncMode() == fleet.SyncOff {
		s.in.Sync = nil
		return
	}
	var want []string
	for _, m := range s.in.Members {
		if m.ID != s.in.Leader && SyncEligible(m, s.in.Spec) {
			want = append(want, m.ID)
		}
	}
	grown := &fleet.SyncState{Primary: s.in.Leader, Members: want}
	if s.in.Sync != nil {
		for _, m := range s.in.Sync.Members {
			if !slices.Contains(grown.Members, m) {
				grown.Members = append(grown.Members, m)
			}
		}
	}
	s.in.Sync = grown
	s.check("sync set grown")
	s.in.Sync = &fleet.SyncState{Primary: s.in.Leader, Members: want}
	s.check("sync set shrunk")
}

// check asserts what must hold in every state a move passes through: the
// sync set names only members that can be promoted, and if the primary
// died now an election would promote a member of the region(s) it may.
func (s *moveSim) check(when string) {
	s.t.Helper()
	byID := map[string]fleet.MemberSpec{}
	for _, m := range s.in.Members {
		byID[m.ID] = m
	}
	if _, ok := byID[s.in.Leader]; !ok {
		s.t.Fatalf("%s: the leader %s is not a member", when, s.in.Leader)
	}
	if s.in.Sync != nil {
		for _, id := range s.in.Sync.Members {
			if m, ok := byID[id]; !ok || !Eligible(m, s.in.Spec) {
				s.t.Errorf("%s: sync set %v names %s, which cannot be promoted (%+v): an election would wait for it forever", when, s.in.Sync.Members, id, m)
			}
		}
	}
	var cands []fleet.Candidacy
	for _, m := range s.in.Members {
		if m.ID != s.in.Leader && Eligible(m, s.in.Spec) {
			cands = append(cands, fleet.Candidacy{Member: m.ID, LSN: 100, Timeline: 1, At: s.in.Now})
		}
	}
	if len(cands) == 0 {
		return // a primary alone: nothing to elect
	}
	winner, why := Elect(ElectionInput{Now: s.in.Now, Spec: s.in.Spec, Members: s.in.Members, Candidates: cands, Sync: s.in.Sync, Timeline: 1})
	if winner == "" {
		s.t.Errorf("%s: if the primary died now no member would be elected: %s", when, why)
	} else if r := byID[winner].Region; r != s.in.Spec.PrimaryRegion && !s.in.Spec.Moving(r) {
		s.t.Errorf("%s: the election would promote %s in %s", when, winner, r)
	}
}

// apply carries out one step as the API and the store do, the clones and
// the switchover included.
func (s *moveSim) apply(st fleet.MoveStep) {
	in := &s.in
	switch st.Action {
	case fleet.MoveBegin:
		mv := *st.Move
		for i, m := range in.Members {
			if slices.Contains(st.Convert, m.ID) {
				in.Members[i].Role, in.Members[i].Leaving = fleet.RoleStandby, false
			}
		}
		taken := map[string]bool{}
		for _, m := range in.Members {
			taken[m.Host] = true
		}
		for _, h := range in.Hosts {
			if len(mv.Added) == st.Add {
				break
			}
			if h.Region == mv.To && !taken[h.Name] {
				id := fleet.MemberID("db", len(in.Members)+1)
				mv.Added = append(mv.Added, id)
				in.Members = append(in.Members, fleet.MemberSpec{ID: id, Cluster: "db", Host: h.Name, Region: h.Region, Role: fleet.RoleStandby, Port: 6000})
			}
		}
		in.Spec.Move = &mv
	case fleet.MoveSwitchover:
		// The election that ends a switchover promotes only its target,
		// and only an electable one.
		for _, m := range in.Members {
			if m.ID == st.SwitchTo && !Eligible(m, in.Spec) {
				s.t.Fatalf("switchover to %s, which cannot be promoted (%s in %s)", m.ID, m.Role, m.Region)
			}
		}
		in.Leader = st.SwitchTo
		_, k := InitialSync(in.Spec, in.Members, in.Status, in.Sync, in.Leader)
		in.Sync = &fleet.SyncState{Primary: in.Leader, Members: k}
	case fleet.MoveLeave:
		for i, m := range in.Members {
			if slices.Contains(st.Leave, m.ID) {
				in.Members[i].Leaving = true
			}
		}
	case fleet.MoveFlip:
		spec, changed := fleet.FlipMove(in.Spec, in.Members)
		in.Spec = spec
		for _, c := range changed {
			for i := range in.Members {
				if in.Members[i].ID == c.ID {
					in.Members[i] = c
				}
			}
		}
	case fleet.MoveFinish:
		in.Spec = fleet.FinishMove(in.Spec, in.Members, st.Remove)
		in.Members = slices.DeleteFunc(in.Members, func(m fleet.MemberSpec) bool { return slices.Contains(st.Remove, m.ID) })
	}
	if err := in.Spec.ValidateStored(); err != nil {
		s.t.Fatalf("after %s: the spec does not validate: %v", st.Action, err)
	}
	s.check(fmt.Sprintf("after %s", st.Action))
	s.setStatus()
	s.reconcile()
}

// run takes steps until the move ends or stop steps were taken; it
// returns the actions taken.
func (s *moveSim) run(region string, reverse, dropOld bool, stop int) []fleet.MoveAction {
	s.t.Helper()
	var actions []fleet.MoveAction
	for i := 0; i < 20 && (stop < 0 || len(actions) < stop); i++ {
		s.in.Region, s.in.Reverse, s.in.DropOld = region, reverse, dropOld
		st, err := fleet.NextMoveStep(s.in)
		if err != nil {
			s.t.Fatalf("step %d: %v", i, err)
		}
		if st.Action == fleet.MoveWait {
			s.t.Fatalf("step %d waits in a cluster that is ready: %s", i, st.Why)
		}
		actions = append(actions, st.Action)
		if st.Action == fleet.MoveDone {
			return actions
		}
		s.apply(st)
		if st.Action == fleet.MoveFinish {
			return actions
		}
		region, reverse = "", false // resumed, as the CLI does
		dropOld = dropOld && s.in.Spec.Move != nil && len(s.in.Spec.Move.Drop) > 0
	}
	return actions
}

func (s *moveSim) regions() map[string][]string {
	out := map[string][]string{}
	for _, m := range s.in.Members {
		out[m.Region] = append(out[m.Region], m.ID+":"+string(m.Role))
	}
	return out
}

// TestMoveWalk walks moves through every step, and reverses them after
// each, in both replication modes, checking at every state that the sync
// set holds only members that can be promoted and that an election would
// promote a member where it may.
func TestMoveWalk(t *testing.T) {
	for _, sync := range []string{fleet.SyncOff, fleet.SyncOn} {
		t.Run("sync "+sync, func(t *testing.T) {
			s := newMoveSim(t, sync)
			got := s.run("b", false, false, -1)
			t.Logf("steps: %v", got)
			if s.in.Spec.PrimaryRegion != "b" || s.in.Spec.Move != nil || s.in.Spec.HA != 2 || !slices.Equal(s.in.Spec.Replicas, []string{"c", "a"}) {
				t.Errorf("after the move: %+v; want primary region b, ha 2, replicas c, a, no move", s.in.Spec)
			}
			for _, m := range s.in.Members {
				if e := Eligible(m, s.in.Spec); e != (m.Region == "b") {
					t.Errorf("after the move %s in %s (%s) electable %v", m.ID, m.Region, m.Role, e)
				}
			}
			if !slices.Contains([]string{"db-4", "db-5"}, s.in.Leader) {
				t.Errorf("after the move the primary is %s; want one in b", s.in.Leader)
			}

			// And back again, dropping b's members: only a's and c's are left.
			s.run("a", false, true, -1)
			if s.in.Spec.PrimaryRegion != "a" || len(s.in.Members) != 3 {
				t.Errorf("after moving back with --drop-old: %+v, members %v", s.in.Spec, s.regions())
			}
		})
		// Every state short of the end: once finished, a move is undone by
		// another move.
		steps := len(newMoveSim(t, sync).run("b", false, false, -1))
		for stop := 1; stop < steps; stop++ {
			t.Run(fmt.Sprintf("sync %s reversed after %d steps", sync, stop), func(t *testing.T) {
				s := newMoveSim(t, sync)
				s.run("b", false, false, stop)
				s.run("", true, false, -1)
				regions := s.regions()
				if s.in.Spec.PrimaryRegion != "a" || s.in.Spec.Move != nil || len(regions["b"]) != 0 || len(regions["a"]) != 2 {
					t.Errorf("reversed after %d steps: %+v, members %v; want primary region a, a's two members, none in b", stop, s.in.Spec, regions)
				}
			})
		}
	}
}
