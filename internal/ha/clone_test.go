package ha

import (
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func TestCloneSource(t *testing.T) {
	const slot = 0x3000000
	primary := CloneMember{ID: "db-1", Region: "iad"}
	// stream is a healthy member streaming lag bytes behind, past the slot.
	stream := func(id, region string, lag int64) CloneMember {
		return CloneMember{ID: id, Region: region, Streaming: true, LagBytes: lag, ReplayLSN: slot + 0x100000}
	}
	inAms := fleet.MemberSpec{ID: "db-5", Region: "ams", Role: fleet.RoleReplica}
	inIad := fleet.MemberSpec{ID: "db-5", Region: "iad", Role: fleet.RoleStandby}
	in := func(self fleet.MemberSpec, members ...CloneMember) CloneInput {
		return CloneInput{Self: self, Primary: primary, Members: members, MaxLag: CloneMaxLag, SlotLSN: slot}
	}
	tests := []struct {
		name string
		in   CloneInput
		want string
		why  string // a part of the reason
	}{
		{"no other member: the primary", in(inAms), "db-1", "no standby"},
		{"a replica in its region", in(inAms, stream("db-2", "iad", 0), stream("db-3", "ams", 100)), "db-3", "in ams"},
		{"the least lag in its region", in(inAms, stream("db-3", "ams", 4096), stream("db-4", "ams", 100)), "db-4", "db-4 streams"},
		{"equal lag: the lowest id", in(inAms, stream("db-4", "ams", 0), stream("db-3", "ams", 0)), "db-3", "db-3 streams"},
		{"a standby elsewhere when neither it nor the primary is in the region", in(inAms, stream("db-2", "iad", 0)), "db-2", "in iad"},
		{"the primary in its region beats a standby elsewhere", in(inIad, stream("db-3", "ams", 0)), "db-1", "primary's region"},
		{"a standby in the primary's region", in(inIad, stream("db-2", "iad", 0), stream("db-3", "ams", 0)), "db-2", "in iad"},
		{"not streaming", in(inAms, CloneMember{ID: "db-3", Region: "ams", LagBytes: 0, ReplayLSN: slot}), "db-1", "no standby"},
		{"lag unknown", in(inAms, stream("db-3", "ams", -1)), "db-1", "no standby"},
		{"too far behind", in(inAms, stream("db-3", "ams", CloneMaxLag+1)), "db-1", "no standby"},
		{"at the lag limit", in(inAms, stream("db-3", "ams", CloneMaxLag)), "db-3", "in ams"},
		{"leaving the cluster", in(inAms, func() CloneMember { m := stream("db-3", "ams", 0); m.Leaving = true; return m }()), "db-1", "no standby"},
		{"replayed short of the slot", in(inAms, func() CloneMember { m := stream("db-3", "ams", 0); m.ReplayLSN = slot - 1; return m }()), "db-1", "no standby"},
		{"replayed exactly to the slot", in(inAms, func() CloneMember { m := stream("db-3", "ams", 0); m.ReplayLSN = slot; return m }()), "db-3", "in ams"},
		{"the primary listed among the members is not a standby", in(inAms, CloneMember{ID: "db-1", Region: "ams", Streaming: true, ReplayLSN: slot}), "db-1", "no standby"},
		{"itself is never a source", in(inAms, stream("db-5", "ams", 0)), "db-1", "no standby"},
		{"no slot on the primary yet", func() CloneInput { i := in(inAms, stream("db-3", "ams", 0)); i.SlotLSN = 0; return i }(), "db-1", "holds no slot for db-5"},
		{"after a failed copy from a standby", func() CloneInput { i := in(inAms, stream("db-3", "ams", 0)); i.StandbyFailed = true; return i }(), "db-1", "failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := CloneSource(tt.in)
			if got != tt.want || !strings.Contains(why, tt.why) {
				t.Errorf("CloneSource(%+v) = %q (%s), want %q (saying %q)", tt.in, got, why, tt.want, tt.why)
			}
		})
	}
}
