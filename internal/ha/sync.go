package ha

import (
	"slices"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// InitialSync is the sync state a new primary starts its term with, before
// its first commit: S, the standbys its commits wait for (any one of them),
// and K, the sync set it publishes, which must hold every member that may
// have an acknowledged commit no other member has.
//
// S is the eligible members whose postgres runs as a standby now (streaming
// or catching up): only they can acknowledge anything soon, and a member
// that cannot start (or whose host is gone) would only make commits wait for
// nothing. K is S plus the previous term's K (prev), minus this member:
// those may hold the previous term's last commits until a member of S has
// flushed past the start of this term, which reconcileSync checks before it
// shrinks K. Putting every eligible member in K instead, as a safe-looking
// default, deadlocks the next election when one of them cannot start: it
// would wait for a member that never acknowledged anything.
//
// With strict mode and no running standby, S is every eligible member, so
// that commits wait rather than go unprotected. Off: nothing.
func InitialSync(spec fleet.ClusterSpec, members []fleet.MemberSpec, status map[string]fleet.MemberStatus, prev *fleet.SyncState, self string) (s, k []string) {
	mode := spec.SyncMode()
	if mode == fleet.SyncOff {
		return nil, nil
	}
	var all []string
	for _, m := range members {
		if m.ID == self || !SyncEligible(m, spec) {
			continue
		}
		all = append(all, m.ID)
		if st, ok := status[m.ID]; ok && (st.State == fleet.StateStreaming || st.State == fleet.StateCatchingUp) {
			s = append(s, m.ID)
		}
	}
	if len(s) == 0 && mode == fleet.SyncStrict {
		s = all
	}
	k = slices.Clone(s)
	if prev != nil {
		for _, m := range prev.Members {
			if m != self && slices.Contains(all, m) && !slices.Contains(k, m) {
				k = append(k, m)
			}
		}
	}
	slices.Sort(s)
	slices.Sort(k)
	return s, k
}
