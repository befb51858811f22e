package ha

import (
	"fmt"
	"sort"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// CloneMember is what the clone decision knows of one member of the
// cluster, from its published status.
type CloneMember struct {
	ID     string
	Region string
	// Streaming reports whether the member is a standby or replica that
	// receives WAL from the primary now, and says it is healthy.
	Streaming bool
	// Leaving reports whether the member is on its way out of the cluster
	// (fleet.MemberSpec.Leaving): it may be gone before a copy ends.
	Leaving bool
	// LagBytes is its replay distance to the primary; -1 when unknown.
	LagBytes int64
	// ReplayLSN is the last WAL position it replayed; 0 when unknown.
	ReplayLSN uint64
}

// CloneInput is what CloneSource decides from.
type CloneInput struct {
	Self    fleet.MemberSpec // the member that needs a copy
	Primary CloneMember      // the member holding the leader key, running as primary
	Members []CloneMember    // the cluster's other members
	// MaxLag is the most replay lag, in bytes, a member may have and still
	// be copied from.
	MaxLag int64
	// SlotLSN is the restart LSN of Self's replication slot on the
	// primary, from which the primary keeps WAL for Self; 0 when the
	// primary holds no such slot with WAL reserved (or it could not be
	// read).
	SlotLSN uint64
	// StandbyFailed reports whether Self's last clone was from a standby
	// and failed.
	StandbyFailed bool
}

// CloneMaxLag is how far behind the primary, in bytes of replayed WAL, a
// standby may be and still be copied from: one WAL segment. A copy from a
// standby is as old as the standby's replay; what it lacks the new member
// streams from the primary after.
const CloneMaxLag = 16 << 20

// CloneSource chooses the member a member without data copies it from,
// and says why. A standby or replica spares the primary the copy's reads,
// and one in Self's own region spares the copy a trip across regions (a
// replica added in ams copies from ams, not from the primary in iad).
//
// A member qualifies when it streams from the primary and is healthy, is
// not leaving the cluster, has replayed to within MaxLag of the primary,
// and has replayed at least to SlotLSN. A copy from a standby cannot go
// through Self's slot, which lives on the primary; pg_basebackup's
// temporary slot on the standby keeps the WAL the copy itself needs, and
// the copy ends at or past the standby's replay position, so the primary's
// slot, reserved from SlotLSN, still holds every WAL segment Self must
// stream from the primary after. Hence no standby qualifies while the
// primary holds no slot for Self (SlotLSN 0).
//
// The order: a qualifying member in Self's region; then the primary when
// it is in Self's region (a copy within the region beats sparing the
// primary); then a qualifying member in another region; then the primary.
// Within a tier the least lag wins, then the lowest id. After a failed
// copy from a standby (StandbyFailed) the next comes from the primary, so
// one standby that cannot serve a copy never keeps a member without data.
func CloneSource(in CloneInput) (string, string) {
	primary := in.Primary.ID
	switch {
	case in.StandbyFailed:
		return primary, "the last copy from a standby failed; copying from primary " + primary
	case in.SlotLSN == 0:
		return primary, fmt.Sprintf("primary %s holds no slot for %s yet, which a copy from a standby needs; copying from the primary", primary, in.Self.ID)
	}
	var fit []CloneMember
	for _, m := range in.Members {
		if m.ID == in.Self.ID || m.ID == primary || !m.Streaming || m.Leaving ||
			m.LagBytes < 0 || m.LagBytes > in.MaxLag || m.ReplayLSN < in.SlotLSN {
			continue
		}
		fit = append(fit, m)
	}
	sort.Slice(fit, func(i, j int) bool {
		a, b := fit[i], fit[j]
		if la, lb := a.Region == in.Self.Region, b.Region == in.Self.Region; la != lb {
			return la
		}
		if a.LagBytes != b.LagBytes {
			return a.LagBytes < b.LagBytes
		}
		return a.ID < b.ID
	})
	switch {
	case len(fit) > 0 && fit[0].Region == in.Self.Region:
		return fit[0].ID, fmt.Sprintf("%s streams in %s, %s's region, %s behind the primary", fit[0].ID, in.Self.Region, in.Self.ID, fleet.FormatBytes(fit[0].LagBytes))
	case in.Primary.Region == in.Self.Region:
		return primary, fmt.Sprintf("no standby fit to copy from in %s, the primary's region", in.Self.Region)
	case len(fit) > 0:
		return fit[0].ID, fmt.Sprintf("no standby fit to copy from in %s; %s streams in %s, %s behind the primary", in.Self.Region, fit[0].ID, fit[0].Region, fleet.FormatBytes(fit[0].LagBytes))
	}
	return primary, fmt.Sprintf("no standby streams within %s of the primary to copy from", fleet.FormatBytes(in.MaxLag))
}
