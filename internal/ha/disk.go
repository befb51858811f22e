package ha

import (
	"fmt"
	"sort"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// DiskInput is what the disk guard decision needs.
type DiskInput struct {
	// Guard is the threshold in percent of free space
	// (ClusterSpec.DiskGuardPercent); 0 turns the guard off.
	Guard int
	// Active reports whether the cluster is read-only because of the guard
	// now: it then needs DiskGuardResume points more to write again.
	Active  bool
	Members []fleet.MemberSpec
	Status  map[string]fleet.MemberStatus // by member id, as published
}

// DiskVerdict is the disk guard's decision for a cluster.
type DiskVerdict struct {
	ReadOnly bool
	// Reason says, when ReadOnly, which member is short of space, how
	// short, and how much to free; people read it in events and status.
	Reason string
}

// DiskGuard decides whether a cluster must stop taking writes because a
// member's data filesystem is nearly full. Every member counts, not only
// the primary: a standby or replica whose disk fills stops with a PANIC on
// the next WAL it replays, and in sync mode the commits waiting for it stop
// too. Stopping the writes stops the WAL that fills them all. A member whose
// status is missing or carries no measurement is left out: its disk is
// unknown, and a host that is down writes nothing.
func DiskGuard(in DiskInput) DiskVerdict {
	if in.Guard <= 0 {
		return DiskVerdict{}
	}
	limit := float64(in.Guard)
	if in.Active {
		limit += fleet.DiskGuardResume
	}
	type short struct {
		st  fleet.MemberStatus
		pct float64
	}
	var low []short
	for _, m := range in.Members {
		st, ok := in.Status[m.ID]
		if !ok || st.DiskSize <= 0 {
			continue
		}
		pct := 100 * float64(st.DiskFree) / float64(st.DiskSize)
		if pct < limit {
			low = append(low, short{st, pct})
		}
	}
	if len(low) == 0 {
		return DiskVerdict{}
	}
	sort.Slice(low, func(i, j int) bool {
		if low[i].pct != low[j].pct {
			return low[i].pct < low[j].pct
		}
		return low[i].st.ID < low[j].st.ID
	})
	w := low[0]
	// Enough to clear the threshold with the resume margin, or the cluster
	// would be read-only again at the next checkpoint.
	target := int64(float64(w.st.DiskSize) * float64(in.Guard+fleet.DiskGuardResume) / 100)
	need := max(target-w.st.DiskFree, 1)
	reason := fmt.Sprintf("member %s on host %s has %s free of %s (%.1f %%), below the disk guard's %d %%: free %s there (or grow the disk) and writes resume by themselves",
		w.st.ID, w.st.Host, fleet.FormatBytes(w.st.DiskFree), fleet.FormatBytes(w.st.DiskSize), w.pct, in.Guard, fleet.FormatBytes(need))
	if len(low) > 1 {
		reason += fmt.Sprintf(" (%d members are short of space)", len(low))
	}
	return DiskVerdict{ReadOnly: true, Reason: reason}
}
