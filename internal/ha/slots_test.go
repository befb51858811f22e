package ha

import (
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func TestOrphanSlots(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	members := []fleet.MemberSpec{{ID: "db-1", Cluster: "db"}, {ID: "db-2", Cluster: "db"}}
	slotName := func(id string) string { return strings.ReplaceAll(id, "-", "_") }
	long := now.Add(-OrphanGrace)
	tests := []struct {
		name    string
		self    string
		members []fleet.MemberSpec
		slots   []Slot
		since   map[string]time.Time
		drop    string // slots dropped, comma-separated
		orphans string // slots tracked as orphans, comma-separated
	}{
		{name: "members' slots stay", self: "db-1", members: members, slots: []Slot{{Name: "db_1"}, {Name: "db_2"}}},
		{name: "a removed member's slot is first only noted", self: "db-1", members: members, slots: []Slot{{Name: "db_2"}, {Name: "db_3"}}, orphans: "db_3"},
		{name: "dropped after the grace", self: "db-1", members: members, slots: []Slot{{Name: "db_3"}}, since: map[string]time.Time{"db_3": long}, drop: "db_3", orphans: "db_3"},
		{name: "not within the grace", self: "db-1", members: members, slots: []Slot{{Name: "db_3"}}, since: map[string]time.Time{"db_3": now.Add(-OrphanGrace + time.Second)}, orphans: "db_3"},
		{name: "not while a walsender uses it", self: "db-1", members: members, slots: []Slot{{Name: "db_3", Active: true}}, since: map[string]time.Time{"db_3": long}, orphans: "db_3"},
		{name: "someone else's slots stay", self: "db-1", members: members, slots: []Slot{{Name: "cdc"}, {Name: "db_x"}, {Name: "db_01"}, {Name: "other_3"}}, since: map[string]time.Time{"cdc": long}},
		{name: "a member back in the spec keeps its slot", self: "db-1", members: append(members, fleet.MemberSpec{ID: "db-3", Cluster: "db"}), slots: []Slot{{Name: "db_3"}}, since: map[string]time.Time{"db_3": long}},
		{name: "a read without the primary itself drops nothing", self: "db-1", members: members[1:], slots: []Slot{{Name: "db_3"}, {Name: "db_1"}}, since: map[string]time.Time{"db_3": long}},
		{name: "no members: nothing", self: "db-1", slots: []Slot{{Name: "db_2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			drop, since := OrphanSlots(SlotInput{Now: now, Self: tt.self, Members: tt.members, Slots: tt.slots, SlotName: slotName, OrphanSince: tt.since})
			var got, tracked []string
			for _, d := range drop {
				got = append(got, d.Slot)
				if d.Member == "" || !strings.Contains(d.Why, "no longer a member") {
					t.Errorf("OrphanSlots drop %+v: want the member and why", d)
				}
			}
			for _, s := range tt.slots {
				if _, ok := since[s.Name]; ok {
					tracked = append(tracked, s.Name)
				}
			}
			if g := strings.Join(got, ","); g != tt.drop {
				t.Errorf("OrphanSlots(%v) drops %q, want %q", tt.slots, g, tt.drop)
			}
			if g := strings.Join(tracked, ","); g != tt.orphans {
				t.Errorf("OrphanSlots(%v) tracks %q as orphans, want %q", tt.slots, g, tt.orphans)
			}
		})
	}
}
