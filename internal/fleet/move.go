package fleet

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Move is a change of a cluster's primary region under way (`pgfleet
// move`), kept in its spec from the first step to the last so that a move
// whose client was interrupted can be resumed or reversed from what the
// store says.
//
// While a move lasts, the standbys of both regions are electable
// (ha.Eligible): the primary switches over into To while the members of
// From may still be promoted, so a switchover that fails falls back to an
// election that the most advanced member wins wherever it is, and in sync
// mode the sync set never names a member that could not be promoted. The
// flip (FlipMove) then makes To the primary region and From's members read
// replicas in one write, once the sync set holds only standbys of To.
type Move struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Added are the members the move placed in To: reversing the move
	// removes them again.
	Added []string `json:"added,omitempty"`
	// Drop are the members removed when the move ends: From's with
	// --drop-old, or the Added of the move a reverse undoes.
	Drop    []string  `json:"drop,omitempty"`
	Started time.Time `json:"started"`
}

// Validate checks a move record read from the store or about to be written.
func (m Move) Validate(cluster string) error {
	if err := ValidateRegion(m.From); err != nil {
		return fmt.Errorf("move from: %w", err)
	}
	if err := ValidateRegion(m.To); err != nil {
		return fmt.Errorf("move to: %w", err)
	}
	if m.From == m.To {
		return fmt.Errorf("move from %s to itself", m.From)
	}
	for _, id := range append(slices.Clone(m.Added), m.Drop...) {
		if err := ValidateMemberID(cluster, id); err != nil {
			return fmt.Errorf("move: %w", err)
		}
	}
	return nil
}

// Moving reports whether region is one of the regions a move under way
// goes between.
func (s ClusterSpec) Moving(region string) bool {
	return s.Move != nil && (region == s.Move.From || region == s.Move.To)
}

// MoveAction is what the next step of a move does.
type MoveAction string

const (
	// MoveBegin writes the move: standbys placed in To (Add) or made of
	// the members it has there (Convert), electable from then on.
	MoveBegin MoveAction = "begin"
	// MoveWait waits for the cluster: a clone, a switchover, the sync set.
	MoveWait MoveAction = "wait"
	// MoveSwitchover switches over to SwitchTo, a standby in To.
	MoveSwitchover MoveAction = "switchover"
	// MoveLeave marks Leave as leaving, so that the sync set lets go of
	// them before they stop being electable.
	MoveLeave MoveAction = "leave"
	// MoveFlip makes To the primary region and the other members read
	// replicas (FlipMove).
	MoveFlip MoveAction = "flip"
	// MoveFinish removes Remove and ends the move (FinishMove).
	MoveFinish MoveAction = "finish"
	// MoveDone: nothing is left to do.
	MoveDone MoveAction = "done"
)

// MoveInput is what deciding a move's next step needs: the cluster as the
// store has it, and what was asked.
type MoveInput struct {
	Spec       ClusterSpec
	Members    []MemberSpec
	Status     map[string]MemberStatus
	Leader     string
	Sync       *SyncState
	Switchover *Switchover
	Hosts      []Host
	Now        time.Time
	// Region is the primary region asked for; "" resumes the move under
	// way. Reverse asks to undo the move under way instead.
	Region  string
	Reverse bool
	DropOld bool
}

// MoveStep is the next step of a move and why, in words for the person
// who runs it.
type MoveStep struct {
	Action MoveAction
	Why    string
	// Move is the record MoveBegin writes; Added is filled in once the new
	// members are placed.
	Move    *Move
	Convert []string
	Add     int
	// SwitchTo is the target of MoveSwitchover.
	SwitchTo string
	Leave    []string
	Remove   []string
}

// NextMoveStep decides the next step of a move of a cluster's primary
// region, from the cluster as it is: so a move is resumed, after its
// client was killed or the primary failed over, by asking again. The
// steps, each safe to stop after:
//
//  1. begin: HA standbys in To (members it has there become standbys, new
//     ones are placed for the rest), electable beside From's;
//  2. wait until every standby in To streams within the failover lag limit;
//  3. switch over to the standby of To with the least lag, through the
//     proxies' hold; a switchover that does not finish gives way to an
//     election among both regions, which the member with the most WAL wins;
//  4. in sync mode, mark the members outside To leaving and wait until the
//     sync set holds only standbys of To, which then have every
//     acknowledged commit;
//  5. flip: To is the primary region, every other member a read replica;
//  6. finish: remove the members to drop and end the move.
//
// A reverse is a move back to From that removes the members the move
// added. An error is a request to refuse, with what to do instead.
func NextMoveStep(in MoveInput) (MoveStep, error) {
	spec, mv := in.Spec, in.Spec.Move
	name := spec.Name
	if mv == nil {
		switch {
		case in.Reverse:
			return MoveStep{}, fmt.Errorf("cluster %s has no move under way to reverse: move it back with `pgfleet move %s --primary-region REGION`", name, name)
		case in.Region == "":
			return MoveStep{}, fmt.Errorf("cluster %s has no move under way: say where its primary goes with --primary-region", name)
		case in.Region == spec.PrimaryRegion:
			return MoveStep{Action: MoveDone, Why: fmt.Sprintf("nothing to do: %s is already the primary region of %s", in.Region, name)}, nil
		case in.Leader == "":
			return MoveStep{}, fmt.Errorf("cluster %s has no primary right now (an election may be running): a move starts from a running primary; retry once `pgfleet status %s` shows one", name, name)
		case spec.SyncMode() != SyncOff && spec.HA < 2:
			return MoveStep{}, fmt.Errorf("cluster %s is in sync mode (%s) with ha 1: in %s its primary would have no standby to wait for; raise ha first (`pgfleet ha %s --size 2`) or turn sync off (`pgfleet set %s --sync off`)", name, spec.SyncMode(), in.Region, name, name)
		}
		var drop []string
		if in.DropOld {
			for _, m := range in.Members {
				if m.Region == spec.PrimaryRegion {
					drop = append(drop, m.ID)
				}
			}
		}
		return beginMove(in, Move{From: spec.PrimaryRegion, To: in.Region, Drop: drop, Started: in.Now})
	}

	target := in.Region
	if in.Reverse {
		target = mv.From
	}
	switch target {
	case "", mv.To:
		if in.DropOld && !slices.ContainsFunc(in.Members, func(m MemberSpec) bool { return m.Region == mv.From && slices.Contains(mv.Drop, m.ID) }) {
			return MoveStep{}, fmt.Errorf("the move of %s to %s under way keeps the members in %s (it began without --drop-old): resume it without --drop-old and remove them afterwards with `pgfleet replica remove`", name, mv.To, mv.From)
		}
		return moveOn(in, *mv)
	case mv.From:
		if in.DropOld {
			return MoveStep{}, fmt.Errorf("--drop-old does not go with a reverse: a reverse removes the members the move added (%s) and keeps the others", strings.Join(mv.Added, ", "))
		}
		return beginMove(in, Move{From: mv.To, To: mv.From, Drop: mv.Added, Started: in.Now})
	}
	return MoveStep{}, fmt.Errorf("a move of %s from %s to %s is under way: resume it (`pgfleet move %s --primary-region %s`) or reverse it (`pgfleet move %s --reverse`) before moving it elsewhere", name, mv.From, mv.To, name, mv.To, name)
}

// beginMove is the first step of mv: the members of To become standbys
// and as many more are placed there as it takes to make the primary
// region's size.
func beginMove(in MoveInput, mv Move) (MoveStep, error) {
	spec := in.Spec
	var convert []string
	have := 0
	for _, m := range in.Members {
		if m.Region != mv.To {
			continue
		}
		have++
		if m.Role == RoleReplica || m.Leaving {
			convert = append(convert, m.ID)
		}
	}
	add := max(0, spec.HA-have)
	if add > 0 {
		if err := moveHosts(spec, in.Hosts, in.Members, mv.To, add); err != nil {
			return MoveStep{}, err
		}
	}
	why := fmt.Sprintf("move %s from %s to %s:", spec.Name, mv.From, mv.To)
	if add > 0 {
		why += fmt.Sprintf(" %d standby(s) placed in %s", add, mv.To)
	}
	if len(convert) > 0 {
		why += fmt.Sprintf(" %s made standby(s)", strings.Join(convert, ", "))
	}
	if add == 0 && len(convert) == 0 {
		why += " its members there are standbys already"
	}
	return MoveStep{Action: MoveBegin, Why: why, Move: &mv, Convert: convert, Add: add}, nil
}

// moveHosts checks that region has n hosts that hold no member of the
// cluster, and says which hosts the fleet has when it does not.
func moveHosts(spec ClusterSpec, hosts []Host, members []MemberSpec, region string, n int) error {
	taken := map[string]bool{}
	for _, m := range members {
		taken[m.Host] = true
	}
	byRegion := map[string][]Host{}
	free := 0
	for _, h := range hosts {
		byRegion[h.Region] = append(byRegion[h.Region], h)
		if h.Region == region && !taken[h.Name] {
			free++
		}
	}
	if free >= n {
		return nil
	}
	if len(byRegion[region]) == 0 {
		return placementError(spec, region, n, nil, byRegion)
	}
	var names []string
	for _, h := range byRegion[region] {
		names = append(names, h.Name)
	}
	sort.Strings(names)
	return &ErrPlacement{fmt.Sprintf("cluster %s has ha %d: moving it to %s needs %d more host(s) there without a member of it, and %s has %d host(s) (%s) of which %d free; add hosts to %s (pgfleet agent --region %s) or lower ha first (`pgfleet ha %s --size N`)",
		spec.Name, spec.HA, region, n, region, len(names), strings.Join(names, ", "), free, region, region, spec.Name)}
}

// moveOn decides the step after begin.
func moveOn(in MoveInput, mv Move) (MoveStep, error) {
	spec := in.Spec
	if in.Leader == "" {
		return MoveStep{Action: MoveWait, Why: "no primary right now (an election is running): waiting for one"}, nil
	}
	leader, ok := memberByID(in.Members, in.Leader)
	if !ok {
		return MoveStep{Action: MoveWait, Why: fmt.Sprintf("the leader %s is not a member: waiting", in.Leader)}, nil
	}
	var standbys, behind []string
	for _, m := range in.Members {
		if m.Region != mv.To || m.Role == RoleReplica || m.ID == in.Leader {
			continue
		}
		standbys = append(standbys, m.ID)
		st, ok := in.Status[m.ID]
		switch {
		case !ok:
			behind = append(behind, m.ID+" pending")
		case st.State != StateStreaming || !st.Healthy || st.LagBytes < 0:
			note := string(st.State)
			if st.Progress != "" {
				note += " " + st.Progress
			}
			behind = append(behind, m.ID+" "+note)
		case st.LagBytes > spec.MaxLag():
			behind = append(behind, fmt.Sprintf("%s %s behind", m.ID, FormatBytes(st.LagBytes)))
		}
	}
	if len(behind) > 0 {
		return MoveStep{Action: MoveWait, Why: fmt.Sprintf("waiting for the standbys in %s to stream: %s", mv.To, strings.Join(behind, ", "))}, nil
	}

	if leader.Region != mv.To {
		if sw := in.Switchover; sw != nil {
			return MoveStep{Action: MoveWait, Why: fmt.Sprintf("waiting for the switchover from %s to %s", sw.From, sw.To)}, nil
		}
		if len(standbys) == 0 {
			return MoveStep{Action: MoveWait, Why: fmt.Sprintf("no standby in %s yet", mv.To)}, nil
		}
		best := standbys[0]
		for _, id := range standbys[1:] {
			if in.Status[id].LagBytes < in.Status[best].LagBytes {
				best = id
			}
		}
		return MoveStep{Action: MoveSwitchover, SwitchTo: best, Why: fmt.Sprintf("switch over from %s to %s (%s behind); clients through the proxies wait, they do not fail", in.Leader, best, FormatBytes(in.Status[best].LagBytes))}, nil
	}
	// Until the new primary runs, the old region's members may hold WAL
	// that no other member of To has: they stay electable meanwhile.
	if st := in.Status[in.Leader]; st.State != StateRunning {
		return MoveStep{Action: MoveWait, Why: fmt.Sprintf("waiting for %s to run as primary (%s)", in.Leader, st.State)}, nil
	}

	// Every member outside To that is still electable must be out of the
	// sync set before it stops being electable: an election in sync mode
	// waits for every member of the set.
	var leaving, stay []string
	for _, m := range in.Members {
		if m.Region == mv.To || m.Role == RoleReplica {
			continue
		}
		stay = append(stay, m.ID)
		if !m.Leaving {
			leaving = append(leaving, m.ID)
		}
	}
	if spec.SyncMode() != SyncOff {
		if len(leaving) > 0 {
			return MoveStep{Action: MoveLeave, Leave: leaving, Why: fmt.Sprintf("%s leave the sync set: commits wait for the standbys in %s", strings.Join(leaving, ", "), mv.To)}, nil
		}
		if held := outside(in.Sync, standbys); len(held) > 0 {
			return MoveStep{Action: MoveWait, Why: fmt.Sprintf("waiting for the sync set to let go of %s: it keeps them until a standby in %s has every acknowledged commit", strings.Join(held, ", "), mv.To)}, nil
		}
	}
	if spec.PrimaryRegion != mv.To || len(stay) > 0 {
		return MoveStep{Action: MoveFlip, Why: fmt.Sprintf("%s is the primary region of %s; the members outside it are read replicas", mv.To, spec.Name)}, nil
	}
	var remove []string
	for _, id := range mv.Drop {
		if _, ok := memberByID(in.Members, id); ok && id != in.Leader {
			remove = append(remove, id)
		}
	}
	why := fmt.Sprintf("the move of %s to %s is done", spec.Name, mv.To)
	if len(remove) > 0 {
		why = fmt.Sprintf("%s removed (their data is deleted, their slots dropped); %s", strings.Join(remove, ", "), why)
	}
	return MoveStep{Action: MoveFinish, Remove: remove, Why: why}, nil
}

// outside lists the members of the published sync set that are not in
// keep.
func outside(sync *SyncState, keep []string) []string {
	if sync == nil {
		return nil
	}
	var out []string
	for _, m := range sync.Members {
		if !slices.Contains(keep, m) {
			out = append(out, m)
		}
	}
	return out
}

func memberByID(members []MemberSpec, id string) (MemberSpec, bool) {
	for _, m := range members {
		if m.ID == id {
			return m, true
		}
	}
	return MemberSpec{}, false
}

// FlipMove returns the spec and the member records that change as the
// flip of the cluster's move leaves them: To is the primary region, HA
// its standbys, every member outside it a read replica (no longer
// leaving), and From, where members stay, a replica region.
func FlipMove(spec ClusterSpec, members []MemberSpec) (ClusterSpec, []MemberSpec) {
	mv := spec.Move
	spec.PrimaryRegion = mv.To
	spec.HA = 0
	var changed []MemberSpec
	for _, m := range members {
		switch {
		case m.Region == mv.To && m.Role != RoleReplica:
			spec.HA++
		case m.Region != mv.To && m.Role != RoleReplica:
			m.Role, m.Leaving = RoleReplica, false
			changed = append(changed, m)
		}
	}
	spec.Replicas = replicaRegions(spec, members, nil)
	return spec, changed
}

// FinishMove returns the spec once the move has ended and the members
// remove are gone: no move, and the replica regions those that still hold
// a member.
func FinishMove(spec ClusterSpec, members []MemberSpec, remove []string) ClusterSpec {
	spec.Move = nil
	spec.Replicas = replicaRegions(spec, members, remove)
	return spec
}

// replicaRegions is the spec's replica regions kept in their order, less
// the primary region and regions left without members, with the regions
// that gained members outside the primary region after them.
func replicaRegions(spec ClusterSpec, members []MemberSpec, gone []string) []string {
	held := map[string]bool{}
	var order []string
	for _, m := range members {
		if slices.Contains(gone, m.ID) || m.Region == spec.PrimaryRegion || held[m.Region] {
			continue
		}
		held[m.Region] = true
		order = append(order, m.Region)
	}
	out := []string{}
	for _, r := range spec.Replicas {
		if held[r] && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	for _, r := range order {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}
