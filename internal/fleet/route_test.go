package fleet

import (
	"testing"
	"time"
)

func TestPickReader(t *testing.T) {
	self := Host{Name: "ams-1", Region: "ams"}
	primary := RouteMember{ID: "db-1", Host: "iad-1", Region: "iad", Primary: true}
	iad2 := RouteMember{ID: "db-2", Host: "iad-2", Region: "iad", Streaming: true}
	ams1 := RouteMember{ID: "db-4", Host: "ams-1", Region: "ams", Streaming: true}
	ams2 := RouteMember{ID: "db-5", Host: "ams-2", Region: "ams", Streaming: true}
	syd := RouteMember{ID: "db-6", Host: "syd-1", Region: "syd", Streaming: true}
	lagging := func(m RouteMember, lag int64) RouteMember { m.LagBytes = lag; return m }
	down := func(m RouteMember) RouteMember { m.Streaming = false; return m }
	rtt := map[string]time.Duration{"iad-2": 80 * time.Millisecond, "syd-1": 200 * time.Millisecond, "iad-1": 79 * time.Millisecond}
	const limit = 1 << 20

	tests := []struct {
		name    string
		members []RouteMember
		rtt     map[string]time.Duration
		want    string
	}{
		{"same host first", []RouteMember{primary, iad2, ams2, ams1}, rtt, "db-4"},
		{"same region next", []RouteMember{primary, iad2, ams2, syd}, rtt, "db-5"},
		{"then lowest round trip", []RouteMember{primary, syd, iad2}, rtt, "db-2"},
		{"unmeasured host is farthest", []RouteMember{primary, iad2, syd}, map[string]time.Duration{"syd-1": time.Second}, "db-6"},
		{"ties by id", []RouteMember{primary, syd, iad2}, nil, "db-2"},
		{"lagging replica skipped", []RouteMember{primary, lagging(ams1, limit+1), iad2}, rtt, "db-2"},
		{"lag at the limit is fine", []RouteMember{primary, lagging(ams1, limit), iad2}, rtt, "db-4"},
		{"unknown lag skipped", []RouteMember{primary, lagging(ams1, -1), iad2}, rtt, "db-2"},
		{"not streaming skipped", []RouteMember{primary, down(ams1), iad2}, rtt, "db-2"},
		{"primary when no replica fits", []RouteMember{primary, down(ams1), lagging(iad2, limit*2)}, rtt, "db-1"},
		{"nothing", []RouteMember{down(ams1)}, rtt, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := PickReader(self, tt.members, tt.rtt, limit)
			if got.ID != tt.want || ok != (tt.want != "") {
				t.Errorf("PickReader(%s) = %q, %v; want %q", tt.name, got.ID, ok, tt.want)
			}
		})
	}
}
