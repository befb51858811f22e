package api

import (
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

func TestSwitchoverTarget(t *testing.T) {
	c := store.ClusterState{
		Spec:   fleet.ClusterSpec{Name: "db", PrimaryRegion: "iad"},
		Leader: "db-1",
		Members: []fleet.MemberSpec{
			{ID: "db-1", Region: "iad", Role: fleet.RolePrimary},
			{ID: "db-2", Region: "iad", Role: fleet.RoleStandby},
			{ID: "db-3", Region: "iad", Role: fleet.RoleStandby},
			{ID: "db-4", Region: "ams", Role: fleet.RoleReplica},
		},
		Status: map[string]fleet.MemberStatus{
			"db-1": {State: fleet.StateRunning},
			"db-2": {State: fleet.StateStreaming, LagBytes: 800},
			"db-3": {State: fleet.StateStreaming, LagBytes: 0},
			"db-4": {State: fleet.StateStreaming, LagBytes: 0},
		},
	}
	tests := []struct {
		want, got, msg string
	}{
		{"", "db-3", ""}, // least lag among the primary region's standbys
		{"db-2", "db-2", ""},
		{"db-1", "", "already the primary"},
		{"db-4", "", "read replica in ams"},
		{"db-9", "", `no member "db-9"`},
	}
	for _, tt := range tests {
		got, msg := switchoverTarget(c, tt.want)
		if got != tt.got || !strings.Contains(msg, tt.msg) {
			t.Errorf("switchoverTarget(%q) = %q, %q; want %q, %q", tt.want, got, msg, tt.got, tt.msg)
		}
	}
	c.Status["db-2"] = fleet.MemberStatus{State: fleet.StateCatchingUp}
	if got, msg := switchoverTarget(c, "db-2"); got != "" || !strings.Contains(msg, "not streaming") {
		t.Errorf("switchoverTarget(catching-up db-2) = %q, %q; want a refusal", got, msg)
	}
}
