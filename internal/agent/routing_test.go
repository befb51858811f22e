package agent

import (
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/proxy"
	"github.com/pgfleet/pgfleet/internal/store"
)

func TestRoutesFor(t *testing.T) {
	hosts := map[string]fleet.Host{
		"iad-1": {Name: "iad-1", Region: "iad", Addr: "10.0.1.1"},
		"iad-2": {Name: "iad-2", Region: "iad", Addr: "10.0.1.2"},
		"ams-1": {Name: "ams-1", Region: "ams", Addr: "10.0.2.1"},
	}
	spec := fleet.ClusterSpec{Name: "db", Port: 6000}
	members := []fleet.MemberSpec{
		{ID: "db-1", Host: "iad-1", Region: "iad", Role: fleet.RolePrimary},
		{ID: "db-2", Host: "iad-2", Region: "iad", Role: fleet.RoleStandby},
		{ID: "db-3", Host: "ams-1", Region: "ams", Role: fleet.RoleReplica},
	}
	running := fleet.MemberStatus{Role: fleet.RolePrimary, State: fleet.StateRunning, Healthy: true}
	streaming := fleet.MemberStatus{Role: fleet.RoleStandby, State: fleet.StateStreaming, Healthy: true}
	cluster := func(leader string, sw *fleet.Switchover, status map[string]fleet.MemberStatus) store.ClusterState {
		return store.ClusterState{Spec: spec, Members: members, Leader: leader, Switchover: sw, Status: status}
	}
	allUp := map[string]fleet.MemberStatus{"db-1": running, "db-2": streaming, "db-3": streaming}
	promoting := map[string]fleet.MemberStatus{"db-1": streaming, "db-2": streaming, "db-3": streaming}

	tests := []struct {
		name        string
		c           store.ClusterState
		self        string
		wantPrimary string // member, or "hold"
		wantReplica string
	}{
		{"primary and the region's standby", cluster("db-1", nil, allUp), "iad-1", "db-1", "db-2"},
		{"replica on this host", cluster("db-1", nil, allUp), "ams-1", "db-1", "db-3"},
		{"election holds", cluster("", nil, promoting), "ams-1", "hold", "db-3"},
		{"key holder still promoting holds", cluster("db-1", nil, promoting), "iad-2", "hold", "db-2"},
		{"switchover holds", cluster("db-1", &fleet.Switchover{From: "db-1", To: "db-2", HoldMillis: 3000}, allUp), "iad-1", "hold", "db-2"},
		{"member whose host is gone is skipped", cluster("db-1", nil, map[string]fleet.MemberStatus{"db-1": running, "db-3": streaming}), "iad-2", "db-1", "db-3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := routesFor([]store.ClusterState{tt.c}, hosts, hosts[tt.self], nil)
			if len(got) != 1 {
				t.Fatalf("routesFor = %d routes, want 1", len(got))
			}
			r := got[0]
			if r.PrimaryPort != 6001 || r.ReplicaPort != 6002 {
				t.Errorf("ports %d, %d; want 6001, 6002", r.PrimaryPort, r.ReplicaPort)
			}
			if p := describe(r.Primary); p != tt.wantPrimary {
				t.Errorf("routesFor(%s) primary = %s (%s), want %s", tt.name, p, r.Primary.Why, tt.wantPrimary)
			}
			if p := describe(r.Replica); p != tt.wantReplica {
				t.Errorf("routesFor(%s) replica = %s (%s), want %s", tt.name, p, r.Replica.Why, tt.wantReplica)
			}
			if tt.c.Switchover != nil && r.Primary.Hold != 3*time.Second {
				t.Errorf("switchover hold = %s, want the switchover's 3s", r.Primary.Hold)
			}
		})
	}
	// A forwarded primary carries the member's Postgres address.
	r := routesFor([]store.ClusterState{cluster("db-1", nil, allUp)}, hosts, hosts["ams-1"], nil)[0]
	if r.Primary.Backend.Addr != "10.0.1.1:6000" {
		t.Errorf("primary backend %q, want 10.0.1.1:6000", r.Primary.Backend.Addr)
	}
}

func describe(r proxy.Route) string {
	switch r.Mode {
	case proxy.Forward:
		return r.Backend.Member
	case proxy.Hold:
		return "hold"
	}
	return "refuse"
}

func TestFailClosed(t *testing.T) {
	routes := []proxy.ClusterRoutes{
		{Cluster: "a", Primary: proxy.Route{Mode: proxy.Forward, Backend: proxy.Backend{Member: "a-1"}}, Replica: proxy.Route{Mode: proxy.Forward, Backend: proxy.Backend{Member: "a-2"}}},
		{Cluster: "b", Primary: proxy.Route{Mode: proxy.Forward, Backend: proxy.Backend{Member: "b-1"}}},
	}
	ttls := map[string]time.Duration{"a": 3 * time.Second, "b": 10 * time.Second}
	got := failClosed(routes, ttls, 4*time.Second)
	if got[0].Primary.Mode != proxy.Refuse {
		t.Errorf("failClosed: cluster a (TTL 3s) after 4s without the store routes %s, want refuse", got[0].Primary.Mode)
	}
	if got[0].Replica.Mode != proxy.Forward {
		t.Errorf("failClosed: cluster a's replica port = %s, want it kept", got[0].Replica.Mode)
	}
	if got[1].Primary.Mode != proxy.Forward {
		t.Errorf("failClosed: cluster b (TTL 10s) after 4s = %s, want forward", got[1].Primary.Mode)
	}
	if routes[0].Primary.Mode != proxy.Forward {
		t.Errorf("failClosed changed its input")
	}
}
