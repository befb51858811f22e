package fleet

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// A cluster's shape changes after it is made: replicas added in a region
// or removed, standbys added to or removed from the primary region. These
// are the pure decisions behind `pgfleet replica` and `pgfleet ha`; the
// store applies them in one transaction.

// memberNumber is the n of a member id cluster-n; 0 if id is not one.
func memberNumber(cluster, id string) int {
	n, ok := strings.CutPrefix(id, cluster+"-")
	if !ok {
		return 0
	}
	i, err := strconv.Atoi(n)
	if err != nil {
		return 0
	}
	return i
}

// NextMemberNumbers returns k numbers for new members of cluster: past
// every member it has and had (removed, so that a new member never takes
// the id of one whose data a host may still hold), or, once those run out
// at MaxMembers, the lowest numbers no member has now.
func NextMemberNumbers(cluster string, current, removed []string, k int) ([]int, error) {
	used := map[int]bool{}
	top := 0
	for _, id := range current {
		n := memberNumber(cluster, id)
		used[n] = true
		top = max(top, n)
	}
	for _, id := range removed {
		top = max(top, memberNumber(cluster, id))
	}
	var out []int
	for n := top + 1; n <= MaxMembers && len(out) < k; n++ {
		out = append(out, n)
	}
	for n := 1; n <= MaxMembers && len(out) < k; n++ {
		if !used[n] && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) < k {
		return nil, fmt.Errorf("cluster %s has %d members: at most %d are possible", cluster, len(current), MaxMembers)
	}
	return out, nil
}

// PlaceMore chooses hosts in region for n new members of a cluster that
// has members existing: hosts that hold none of them, least loaded first,
// ties by name, as Place does.
func PlaceMore(spec ClusterSpec, existing []MemberSpec, region string, role Role, n int, numbers []int, hosts []Host, load map[string]int) ([]MemberSpec, error) {
	taken := map[string]bool{}
	for _, m := range existing {
		taken[m.Host] = true
	}
	var cands []Host
	var inRegion []string
	for _, h := range hosts {
		if h.Region != region {
			continue
		}
		inRegion = append(inRegion, h.Name)
		if !taken[h.Name] {
			cands = append(cands, h)
		}
	}
	if len(cands) < n {
		if len(inRegion) == 0 {
			return nil, &ErrPlacement{fmt.Sprintf("region %s has no running host: start an agent there (pgfleet agent --region %s) or pick another region", region, region)}
		}
		sort.Strings(inRegion)
		return nil, &ErrPlacement{fmt.Sprintf("region %s has %d host(s) (%s) and cluster %s already has a member on %d of them: %d more member(s) need as many hosts without one; add hosts to %s",
			region, len(inRegion), strings.Join(inRegion, ", "), spec.Name, len(inRegion)-len(cands), n, region)}
	}
	sort.Slice(cands, func(i, j int) bool {
		if load[cands[i].Name] != load[cands[j].Name] {
			return load[cands[i].Name] < load[cands[j].Name]
		}
		return cands[i].Name < cands[j].Name
	})
	if len(numbers) < n {
		return nil, fmt.Errorf("%d member numbers for %d members", len(numbers), n)
	}
	out := make([]MemberSpec, 0, n)
	for i, h := range cands[:n] {
		out = append(out, MemberSpec{ID: MemberID(spec.Name, numbers[i]), Cluster: spec.Name, Host: h.Name, Region: h.Region, Role: role, Port: spec.Port})
	}
	return out, nil
}

// StandbysToRemove picks n members of the primary region to remove when
// a cluster's HA size shrinks: never the primary (leader, whichever member
// was placed as primary). Members already leaving come first (a removal
// that is being retried), then those outside the sync set, then the
// highest numbers, the newest members. A cluster in sync mode keeps one
// standby: with none, its commits would stop being protected.
func StandbysToRemove(spec ClusterSpec, members []MemberSpec, leader string, syncSet []string, n int) ([]string, error) {
	if leader == "" {
		return nil, errNoPrimary(spec.Name)
	}
	var cands []MemberSpec
	for _, m := range members {
		if m.Role != RoleReplica && m.ID != leader {
			cands = append(cands, m)
		}
	}
	rank := func(m MemberSpec) int {
		switch {
		case m.Leaving:
			return 0
		case !slices.Contains(syncSet, m.ID):
			return 1
		}
		return 2
	}
	sort.Slice(cands, func(i, j int) bool {
		if ri, rj := rank(cands[i]), rank(cands[j]); ri != rj {
			return ri < rj
		}
		return memberNumber(spec.Name, cands[i].ID) > memberNumber(spec.Name, cands[j].ID)
	})
	if len(cands) < n {
		return nil, fmt.Errorf("cluster %s has %d standby(s), not %d: the primary stays", spec.Name, len(cands), n)
	}
	if spec.SyncMode() != SyncOff && len(cands) == n {
		return nil, fmt.Errorf("cluster %s is in sync mode (%s), which needs a standby: turn it off first (`pgfleet set %s --sync off`)", spec.Name, spec.SyncMode(), spec.Name)
	}
	out := make([]string, 0, n)
	for _, m := range cands[:n] {
		out = append(out, m.ID)
	}
	return out, nil
}

// CanRemove checks the removal of member id from a cluster whose leader
// is leader: never the primary, never the primary region's last member,
// and in sync mode never its last standby.
func CanRemove(spec ClusterSpec, members []MemberSpec, leader, id string) error {
	var m *MemberSpec
	others := 0
	for i := range members {
		switch {
		case members[i].ID == id:
			m = &members[i]
		case members[i].Role != RoleReplica && members[i].ID != leader:
			others++
		}
	}
	switch {
	case m == nil:
		return fmt.Errorf("cluster %s has no member %s", spec.Name, id)
	case leader == "":
		return errNoPrimary(spec.Name)
	case id == leader:
		return fmt.Errorf("%s is the primary of %s: switch over to another member first (`pgfleet switchover %s`)", id, spec.Name, spec.Name)
	case m.Role == RoleReplica:
		return nil
	case spec.SyncMode() != SyncOff && others == 0:
		return fmt.Errorf("%s is the last standby of %s, which is in sync mode (%s): turn it off first (`pgfleet set %s --sync off`)", id, spec.Name, spec.SyncMode(), spec.Name)
	}
	return nil
}

// errNoPrimary refuses a removal while a cluster has no primary: the
// member it would take may be the one that holds the newest writes.
func errNoPrimary(cluster string) error {
	return fmt.Errorf("cluster %s has no primary right now (an election may be running): a removal could take the member that holds the newest writes; retry once `pgfleet status %s` shows a primary", cluster, cluster)
}
