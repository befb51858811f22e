package ha

import (
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func TestDiskGuard(t *testing.T) {
	const gib = int64(1 << 30)
	members := []fleet.MemberSpec{{ID: "db-1", Host: "a"}, {ID: "db-2", Host: "b"}, {ID: "db-3", Host: "c"}}
	status := func(free ...int64) map[string]fleet.MemberStatus {
		out := map[string]fleet.MemberStatus{}
		for i, f := range free {
			if f < 0 {
				continue // no status: the host is down
			}
			m := members[i]
			out[m.ID] = fleet.MemberStatus{ID: m.ID, Host: m.Host, DiskFree: f, DiskSize: 10 * gib}
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		guard    int
		active   bool
		status   map[string]fleet.MemberStatus
		readOnly bool
		reason   []string
	}{
		{name: "room everywhere", guard: 10, status: status(5*gib, 5*gib, 5*gib)},
		{name: "guard off", guard: 0, status: status(0, 0, 0)},
		{name: "primary short", guard: 10, status: status(gib/2, 5*gib, 5*gib), readOnly: true,
			reason: []string{"member db-1 on host a has 512.0 MB free of 10.0 GB (5.0 %)", "below the disk guard's 10 %", "free 716.8 MB there"}},
		{name: "a replica short counts too", guard: 10, status: status(5*gib, 5*gib, gib/2), readOnly: true, reason: []string{"member db-3 on host c"}},
		{name: "the shortest is named", guard: 10, status: status(gib/2, gib/4, 5*gib), readOnly: true, reason: []string{"member db-2", "(2 members are short of space)"}},
		{name: "just above the threshold", guard: 10, status: status(gib+1, 5*gib, 5*gib)},
		{name: "still inside the resume margin", guard: 10, active: true, status: status(gib+gib/10, 5*gib, 5*gib), readOnly: true,
			reason: []string{"(11.0 %)", "free 102.4 MB there"}},
		{name: "past the resume margin", guard: 10, active: true, status: status(gib+gib/4, 5*gib, 5*gib)},
		{name: "a member without status is unknown, not full", guard: 10, status: status(-1, 5*gib, 5*gib)},
		{name: "a status without a measurement", guard: 10, status: map[string]fleet.MemberStatus{"db-1": {ID: "db-1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := DiskGuard(DiskInput{Guard: tc.guard, Active: tc.active, Members: members, Status: tc.status})
			if v.ReadOnly != tc.readOnly {
				t.Fatalf("read-only = %v, want %v (reason %q)", v.ReadOnly, tc.readOnly, v.Reason)
			}
			if !v.ReadOnly && v.Reason != "" {
				t.Errorf("a reason without read-only: %q", v.Reason)
			}
			for _, want := range tc.reason {
				if !strings.Contains(v.Reason, want) {
					t.Errorf("reason %q lacks %q", v.Reason, want)
				}
			}
		})
	}
}

func TestParseDiskGuard(t *testing.T) {
	for in, want := range map[string]int{"10": 10, "5%": 5, "off": fleet.DiskGuardOff, "OFF": fleet.DiskGuardOff, "50": 50} {
		if got, err := fleet.ParseDiskGuard(in); err != nil || got != want {
			t.Errorf("ParseDiskGuard(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "51", "-1", "ten", "", "10.5"} {
		if _, err := fleet.ParseDiskGuard(in); err == nil || !strings.Contains(err.Error(), "from 1 to 50") {
			t.Errorf("ParseDiskGuard(%q): error %v, want one that gives the range", in, err)
		}
	}
	if err := (fleet.ClusterSpec{Name: "db", PrimaryRegion: "a", HA: 1, DiskGuard: 70}).Validate(); err == nil || !strings.Contains(err.Error(), "disk guard 70") {
		t.Errorf("a spec with a 70 %% guard: %v", err)
	}
}
