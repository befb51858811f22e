package console

import (
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

// TestJudgeReadOnly: a cluster the disk guard stopped says so first, with
// the guard's reason, even while a standby also lags.
func TestJudgeReadOnly(t *testing.T) {
	v := api.ClusterView{
		Primary: "db-1", MaxReplicaLag: 1 << 20,
		Members: []api.MemberView{
			{ID: "db-1", Host: "a", Role: fleet.RolePrimary, State: fleet.StateRunning, Healthy: true},
			{ID: "db-2", Host: "b", Role: fleet.RoleStandby, State: fleet.StateStreaming, Healthy: true},
		},
	}
	if h := judge(v); h.State != "healthy" {
		t.Fatalf("judge = %+v, want healthy", h)
	}
	v.ReadOnly = "member db-2 on host b has 10.0 MB free of 1.0 GB (1.0 %), below the disk guard's 10 %"
	v.Members[1].LagBytes = 64 << 20
	h := judge(v)
	if h.State != "read-only" || !strings.Contains(h.Reason, "takes no writes: member db-2 on host b") || h.Symbol() != "!" {
		t.Errorf("judge = %+v (symbol %q), want read-only with the guard's reason and a symbol", h, h.Symbol())
	}
}
