package ha

import (
	"fmt"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// OrphanGrace is how long a replication slot must have had no member in
// the spec before the primary drops it: one store read that somehow lacks a
// member never costs that member its slot.
const OrphanGrace = 10 * time.Second

// Slot is a physical replication slot on the primary.
type Slot struct {
	Name   string
	Active bool // a walsender streams through it now
}

// SlotInput is what the orphan slot decision needs.
type SlotInput struct {
	Now     time.Time
	Self    string             // the primary's member id
	Members []fleet.MemberSpec // the cluster's members, as the spec has them now
	Slots   []Slot             // the primary's physical slots
	// SlotName is how a member's id names its slot.
	SlotName func(member string) string
	// OrphanSince is when each slot was first seen without a member, as
	// the previous decision returned it.
	OrphanSince map[string]time.Time
}

// SlotDrop is a slot to drop, with the member it was for and why.
type SlotDrop struct {
	Slot, Member, Why string
}

// OrphanSlots returns the slots the primary should drop: those named after
// a member of this cluster that is no longer in the spec, once they have
// been so for OrphanGrace and no walsender uses them. A slot keeps every
// WAL segment its standby has not received, so a slot whose standby is gone
// for good fills the primary's disk; a member that is still in the spec
// keeps its slot however long it is down (max_slot_wal_keep_size bounds
// that instead). Slots named otherwise are someone else's (a logical
// decoding consumer, a tool) and are never touched. With a member list that
// lacks the primary itself, which no consistent read of a live cluster
// gives, nothing is dropped.
//
// It also returns when each current orphan was first seen, for the next
// call.
func OrphanSlots(in SlotInput) ([]SlotDrop, map[string]time.Time) {
	since := map[string]time.Time{}
	cluster := ""
	current := map[string]bool{}
	for _, m := range in.Members {
		current[in.SlotName(m.ID)] = true
		if m.ID == in.Self {
			cluster = m.Cluster
		}
	}
	if cluster == "" {
		return nil, since
	}
	// Every slot name a member of this cluster could have.
	possible := map[string]string{}
	for n := 1; n <= fleet.MaxMembers; n++ {
		id := fleet.MemberID(cluster, n)
		possible[in.SlotName(id)] = id
	}
	var drop []SlotDrop
	for _, s := range in.Slots {
		member, ours := possible[s.Name]
		if !ours || current[s.Name] {
			continue
		}
		first, seen := in.OrphanSince[s.Name]
		if !seen {
			first = in.Now
		}
		since[s.Name] = first
		if s.Active || in.Now.Sub(first) < OrphanGrace {
			continue
		}
		drop = append(drop, SlotDrop{Slot: s.Name, Member: member,
			Why: fmt.Sprintf("%s is no longer a member of cluster %s (for %s), and its slot would keep WAL on %s until the disk fills", member, cluster, in.Now.Sub(first).Round(time.Second), in.Self)})
	}
	return drop, since
}
