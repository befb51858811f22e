package ha

import (
	"testing"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func TestNext(t *testing.T) {
	prim := fleet.MemberSpec{ID: "db-1", Role: fleet.RolePrimary}
	stby := fleet.MemberSpec{ID: "db-2", Role: fleet.RoleStandby}
	repl := fleet.MemberSpec{ID: "db-4", Role: fleet.RoleReplica}
	tests := []struct {
		name string
		obs  Observation
		want Action
	}{
		{"new primary bootstraps", Observation{Self: prim}, Bootstrap},
		{"new standby waits for leader", Observation{Self: stby}, Wait},
		{"new standby waits for ready leader", Observation{Self: stby, Leader: "db-1"}, Wait},
		{"new standby clones", Observation{Self: stby, Leader: "db-1", LeaderReady: true}, Clone},
		{"new replica clones", Observation{Self: repl, Leader: "db-1", LeaderReady: true}, Clone},
		{"placed primary with leader elsewhere clones", Observation{Self: prim, Leader: "db-2", LeaderReady: true}, Clone},
		{"leader without data waits", Observation{Self: prim, Leader: "db-1"}, Wait},
		{"wiped primary never bootstraps twice", Observation{Self: prim, ClusterInitialized: true}, Wait},
		{"wiped primary clones from the new leader", Observation{Self: prim, ClusterInitialized: true, Leader: "db-2", LeaderReady: true}, Clone},
		{"restart holding key", Observation{Self: prim, Initialized: true, WasPrimary: true, Leader: "db-1"}, StartPrimary},
		{"old primary after key expired runs in the election", Observation{Self: prim, Initialized: true, WasPrimary: true}, StartStandby},
		{"standby without leader runs in the election", Observation{Self: stby, Initialized: true}, StartStandby},
		// Elected, then restarted before it promoted: started as a primary
		// right away it would run crash recovery on the timeline of its
		// last restartpoint, which may be older than the WAL it received,
		// and write on an abandoned timeline. It recovers as a standby
		// and is promoted, which opens a new timeline.
		{"standby's data holding the key starts read-only to promote", Observation{Self: stby, Initialized: true, Leader: "db-2"}, StartStandby},
		{"old primary must rejoin", Observation{Self: prim, Initialized: true, WasPrimary: true, Leader: "db-2", LeaderReady: true}, Rejoin},
		{"old primary waits for the new one to be ready", Observation{Self: prim, Initialized: true, WasPrimary: true, Leader: "db-2"}, Wait},
		{"diverged standby rejoins", Observation{Self: repl, Initialized: true, Diverged: true, Leader: "db-2", LeaderReady: true}, Rejoin},
		{"standby restart follows", Observation{Self: stby, Initialized: true, Leader: "db-1", LeaderReady: true}, StartStandby},
		{"standby restart follows a leader still starting", Observation{Self: stby, Initialized: true, Leader: "db-1"}, StartStandby},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := Next(tt.obs)
			if got != tt.want {
				t.Fatalf("Next(%+v) = %q (%s), want %q", tt.obs, got, why, tt.want)
			}
			if why == "" {
				t.Fatalf("Next(%+v) gave no reason", tt.obs)
			}
		})
	}
}
