package agent

import (
	"context"
	"fmt"
	"maps"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/pooler"
	"github.com/pgfleet/pgfleet/internal/proxy"
	"github.com/pgfleet/pgfleet/internal/store"
)

// Routing periods.
const (
	// routePoll recomputes the routes from the view even when no routing
	// change woke the router: replica lag changes with every status
	// write, which RoutingChanges ignores.
	routePoll = time.Second
	// rttPoll is how often the agent measures its round trips to the others.
	rttPoll = 5 * time.Second
)

// routesFor computes what this host's proxy does for every cluster, from one
// consistent read of the store. It is the proxy's only source of truth and
// does no I/O.
//
// The primary port forwards to the leader key's holder only once that member
// reports itself a running primary; while a switchover or an election is
// under way, or the new primary is still promoting, it holds new
// connections, so clients see a pause instead of an error or a read-only
// server. The replica port forwards to fleet.PickReader's choice.
func routesFor(cs []store.ClusterState, hosts map[string]fleet.Host, self fleet.Host, rtt map[string]time.Duration) []proxy.ClusterRoutes {
	var out []proxy.ClusterRoutes
	for _, c := range cs {
		if c.Spec.Port == 0 {
			continue
		}
		cr := proxy.ClusterRoutes{Cluster: c.Spec.Name, PrimaryPort: c.Spec.PrimaryProxyPort(), ReplicaPort: c.Spec.ReplicaProxyPort(),
			PooledPort: c.Spec.PooledProxyPort(), PoolSize: c.Spec.Pool()}
		var members []fleet.RouteMember
		for _, m := range c.Members {
			st, ok := c.Status[m.ID]
			h, hok := hosts[m.Host]
			if !ok || !hok {
				continue
			}
			members = append(members, fleet.RouteMember{
				ID: m.ID, Host: m.Host, Region: m.Region,
				Addr:      net.JoinHostPort(h.Addr, strconv.Itoa(c.Spec.Port)),
				Primary:   m.ID == c.Leader && st.Role == fleet.RolePrimary && st.State == fleet.StateRunning,
				Streaming: m.ID != c.Leader && st.State == fleet.StateStreaming,
				LagBytes:  st.LagBytes,
			})
		}
		var primary *fleet.RouteMember
		for i := range members {
			if members[i].Primary {
				primary = &members[i]
			}
		}
		hold := proxy.Route{Mode: proxy.Hold}
		switch {
		case c.Switchover != nil:
			hold.Hold = c.Switchover.HoldDuration()
			hold.Why = fmt.Sprintf("switchover from %s to %s", c.Switchover.From, c.Switchover.To)
			cr.Primary = hold
		case c.Leader == "":
			hold.Why = "no primary: election under way"
			cr.Primary = hold
		case primary == nil:
			hold.Why = fmt.Sprintf("%s holds the leader key but does not run as primary yet", c.Leader)
			cr.Primary = hold
		default:
			cr.Primary = proxy.Route{Mode: proxy.Forward, Backend: proxy.Backend{Member: primary.ID, Addr: primary.Addr}, Why: primary.ID + " is the primary"}
		}
		if r, ok := fleet.PickReader(self, members, rtt, c.Spec.ReplicaLagLimit()); ok {
			cr.Replica = proxy.Route{Mode: proxy.Forward, Backend: proxy.Backend{Member: r.ID, Addr: r.Addr}, Why: "nearest member fit for reads"}
		} else {
			cr.Replica = proxy.Route{Mode: proxy.Hold, Why: "no member fit for reads"}
		}
		out = append(out, cr)
	}
	return out
}

// failClosed turns the primary port of every cluster whose leader lease may
// have expired since the store last answered into a refusal: this host can
// no longer tell who the primary is. Replica ports keep their last route,
// since reads from a former choice are still reads.
func failClosed(routes []proxy.ClusterRoutes, ttls map[string]time.Duration, since time.Duration) []proxy.ClusterRoutes {
	out := make([]proxy.ClusterRoutes, len(routes))
	for i, r := range routes {
		if ttl, ok := ttls[r.Cluster]; ok && since > ttl {
			r.Primary = proxy.Route{Mode: proxy.Refuse, Why: fmt.Sprintf("the state store has not answered for %s, longer than the leader lease", since.Round(100*time.Millisecond))}
		}
		out[i] = r
	}
	return out
}

func refusing(routes []proxy.ClusterRoutes) bool {
	for _, r := range routes {
		if r.Primary.Mode == proxy.Refuse {
			return true
		}
	}
	return false
}

// router keeps the host's proxy in line with the store.
type router struct {
	a     *Agent
	proxy *proxy.Proxy
	pool  *pooler.Pooler

	mu      sync.Mutex
	rtt     map[string]time.Duration
	storeOK bool
	// lastOK is when the last read that the store answered was sent; last
	// and ttls are the routes and lease TTLs it gave. The watchdog fails
	// closed from them without waiting for a store call to time out.
	lastOK time.Time
	last   []proxy.ClusterRoutes
	ttls   map[string]time.Duration
	minTTL time.Duration // the shortest of ttls: below it nothing fails closed
}

// watchdogEvery is how often the router checks, apart from its store
// calls, whether the store has been silent for longer than a lease.
const watchdogEvery = 100 * time.Millisecond

// watchdog fails the primary ports closed as soon as the time since the
// store last answered passes a cluster's lease TTL. The store calls of run
// take up to their 4 s deadline to fail, longer than a short lease: by then
// another member may have been promoted while this proxy still sent writes
// to the old one.
func (rt *router) watchdog(ctx context.Context) {
	t := time.NewTicker(watchdogEvery)
	defer t.Stop()
	closed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rt.mu.Lock()
		since := time.Since(rt.lastOK)
		var routes []proxy.ClusterRoutes
		if since > rt.minTTL {
			routes = failClosed(rt.last, rt.ttls, since)
		}
		rt.mu.Unlock()
		refuse := refusing(routes)
		if refuse && !closed {
			if err := rt.proxy.Update(routes); err != nil {
				rt.a.log.Warn("proxy", "err", err)
			}
			rt.a.log.Warn("proxy fails closed: the state store has not answered for longer than the leader lease, so the primary ports refuse connections", "since", since.Round(time.Millisecond))
		}
		closed = refuse
	}
}

func (rt *router) rtts() map[string]time.Duration {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.rtt
}

// run recomputes the routes on every routing change the store reports, and
// every routePoll.
func (rt *router) run(ctx context.Context) {
	a := rt.a
	changes := a.view.Subscribe(ctx, store.RoutingChanges())
	tick := time.NewTicker(routePoll)
	defer tick.Stop()
	var (
		last     []proxy.ClusterRoutes
		ttls     = map[string]time.Duration{}
		failed   bool
		lastWarn error
	)
	rt.mu.Lock()
	rt.lastOK = time.Now()
	rt.mu.Unlock()
	go rt.watchdog(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-tick.C:
		}
		sent := time.Now()
		// Records that fail validation are left out (a cluster with one
		// gets no routes: its ports refuse connections) and reported by
		// the agent's loop; the rest is routed.
		cs, err := a.view.Clusters(ctx)
		if store.OnlyInvalid(err) {
			err = nil
		}
		var hosts []fleet.Host
		if err == nil {
			if hosts, err = a.view.Hosts(ctx); store.OnlyInvalid(err) {
				err = nil
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			rt.mu.Lock()
			since := time.Since(rt.lastOK)
			rt.mu.Unlock()
			routes := failClosed(last, ttls, since)
			if uerr := rt.proxy.Update(routes); uerr != nil && uerr.Error() != fmt.Sprint(lastWarn) {
				a.log.Warn("proxy", "err", uerr)
				lastWarn = uerr
			}
			if !failed && refusing(routes) {
				a.log.Warn("proxy fails closed: the state store does not answer, so the primary ports refuse connections", "err", err, "since", since.Round(time.Millisecond))
				failed = true
			}
			rt.mu.Lock()
			rt.storeOK = false
			rt.mu.Unlock()
			continue
		}
		if failed {
			a.log.Info("proxy routes again: the state store answers")
			failed = false
		}
		hm := map[string]fleet.Host{}
		for _, h := range hosts {
			hm[h.Name] = h
		}
		for _, c := range cs {
			ttls[c.Spec.Name] = c.Spec.TTL()
		}
		last = routesFor(cs, hm, a.host, rt.rtts())
		// An answer that took longer than a lease to come is stale already.
		if err := rt.proxy.Update(failClosed(last, ttls, time.Since(sent))); err != nil && err.Error() != fmt.Sprint(lastWarn) {
			a.log.Warn("proxy", "err", err)
			lastWarn = err
		} else if err == nil {
			lastWarn = nil
		}
		rt.mu.Lock()
		rt.storeOK = true
		// What the store answered was current when the read was sent.
		rt.lastOK, rt.last, rt.ttls = sent, last, maps.Clone(ttls)
		rt.minTTL = 0
		for _, ttl := range ttls {
			if rt.minTTL == 0 || ttl < rt.minTTL {
				rt.minTTL = ttl
			}
		}
		rt.mu.Unlock()
	}
}

// measure times a TCP connection to every other host's API every rttPoll
// and publishes the results: the replica port prefers the members it can
// reach fastest.
func (rt *router) measure(ctx context.Context) {
	a := rt.a
	for {
		hosts, err := a.view.Hosts(ctx)
		if err == nil {
			m := map[string]time.Duration{}
			for _, h := range hosts {
				if h.Name == a.host.Name {
					continue
				}
				if d, ok := roundTrip(ctx, h.APIAddr); ok {
					m[h.Name] = d
				}
			}
			rt.mu.Lock()
			rt.rtt = m
			rt.mu.Unlock()
			if l := a.currentLease(); l != nil {
				if err := a.store.PutRTT(ctx, a.host.Name, m, l); err != nil && ctx.Err() == nil {
					a.log.Debug("publish round trips", "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(rttPoll):
		}
	}
}

// roundTrip is the time a TCP handshake with addr takes: one round trip,
// with no load on the other side beyond its kernel.
func roundTrip(ctx context.Context, addr string) (time.Duration, bool) {
	d := net.Dialer{Timeout: time.Second}
	start := time.Now()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, false
	}
	took := time.Since(start)
	c.Close()
	return took, true
}
