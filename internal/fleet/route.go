package fleet

import (
	"sort"
	"time"
)

// RouteMember is what the routing proxy knows of one member when it picks
// where a connection goes.
type RouteMember struct {
	ID     string
	Host   string
	Region string
	Addr   string // host:port of its Postgres
	// Primary reports whether the member holds the leader key and runs as a
	// writable primary.
	Primary bool
	// Streaming reports whether the member is a standby or replica that
	// receives WAL from the primary now.
	Streaming bool
	// LagBytes is its replay distance to the primary; -1 when unknown.
	LagBytes int64
}

// PickReader chooses where a read-only connection arriving at host self
// goes: the nearest streaming standby or replica whose replay lag is known
// and at most maxLag. Nearest is the same host, then the same region, then
// the lowest measured round trip from self to the member's host (rtt by host
// name; a host never measured counts as farthest), then the lowest id. With
// no such member it is the primary, so reads never fail while a primary
// runs; the second result is false when there is neither.
func PickReader(self Host, members []RouteMember, rtt map[string]time.Duration, maxLag int64) (RouteMember, bool) {
	var fit []RouteMember
	var primary *RouteMember
	for i, m := range members {
		switch {
		case m.Primary:
			primary = &members[i]
		case m.Streaming && m.LagBytes >= 0 && m.LagBytes <= maxLag:
			fit = append(fit, m)
		}
	}
	if len(fit) == 0 {
		if primary == nil {
			return RouteMember{}, false
		}
		return *primary, true
	}
	tier := func(m RouteMember) int {
		switch {
		case m.Host == self.Name:
			return 0
		case m.Region == self.Region:
			return 1
		}
		return 2
	}
	dist := func(m RouteMember) time.Duration {
		if d, ok := rtt[m.Host]; ok {
			return d
		}
		return time.Duration(1<<63 - 1)
	}
	sort.SliceStable(fit, func(i, j int) bool {
		a, b := fit[i], fit[j]
		if ta, tb := tier(a), tier(b); ta != tb {
			return ta < tb
		}
		if da, db := dist(a), dist(b); da != db {
			return da < db
		}
		return a.ID < b.ID
	})
	return fit[0], true
}
