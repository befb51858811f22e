// Package proxy is the routing proxy every agent runs: for each cluster, one
// port that reaches the primary wherever it runs and one that reaches the
// nearest member fit for reads. It forwards bytes and nothing else: the
// Postgres protocol, TLS included, passes through untouched. Once a
// connection reaches its backend, an epoll loop of the proxy's own moves
// its bytes (epoll.go).
//
// The proxy makes no decisions of its own: the agent computes each port's
// Route from the state store and hands it over with Update. A Route with no
// backend holds new connections (an election or a switchover is under way)
// or refuses them (the agent lost the store: fail closed).
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults.
const (
	// DefaultHold bounds how long a new connection waits for a backend
	// while there is none (election, switchover).
	DefaultHold = 15 * time.Second
	// DefaultMaxConns caps the connections one port forwards at once; more
	// are refused so that a flood cannot exhaust the host's descriptors.
	DefaultMaxConns = 5000
	dialTimeout     = 3 * time.Second
)

// keepAlive finds dead peers (a client or member host that vanished without
// a FIN) within about a minute, so half-open connections do not pile up.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}

// Backend is a member a port forwards to.
type Backend struct {
	Member string
	Addr   string // host:port of its Postgres
}

// Mode says what a port does with new connections.
type Mode int

const (
	// Forward sends new connections to the Backend.
	Forward Mode = iota
	// Hold keeps new connections waiting (up to the Route's Hold) until a
	// later Route forwards them: a primary is being elected or switched.
	Hold
	// Refuse closes new connections at once and, when set, every open one:
	// the proxy cannot tell where the primary is.
	Refuse
)

func (m Mode) String() string {
	switch m {
	case Forward:
		return "forward"
	case Hold:
		return "hold"
	}
	return "refuse"
}

// Route is what one port does now.
type Route struct {
	Mode    Mode
	Backend Backend       // with Forward
	Hold    time.Duration // with Hold: how long a new connection may wait; 0 means DefaultHold
	Why     string        // for the log, when the route changes
}

// ClusterRoutes is the routing of one cluster's two ports.
type ClusterRoutes struct {
	Cluster     string
	PrimaryPort int
	ReplicaPort int
	Primary     Route
	Replica     Route
	// PooledPort, when not 0, is the cluster's transaction pooling port,
	// which a follower (the pooler) serves on the Primary route with pools
	// of PoolSize server connections per user and database.
	PooledPort int
	PoolSize   int
}

// Proxy runs the ports of every cluster on one listen address.
type Proxy struct {
	addr     string
	log      *slog.Logger
	maxConns int

	mu       sync.Mutex
	ports    map[int]*port // by port number
	stats    Stats
	follower func([]ClusterRoutes) error
	loops    loops
}

// Follow has f take every set of routes Update takes, after the proxy's
// own ports have: the pooler serves its ports on the same routes, so both
// move to a new primary, hold and fail closed together.
func (p *Proxy) Follow(f func([]ClusterRoutes) error) {
	p.mu.Lock()
	p.follower = f
	p.mu.Unlock()
}

// Stats are the proxy's counters since it started.
type Stats struct {
	Accepted  atomic.Int64 // connections accepted
	Forwarded atomic.Int64 // connections that reached a backend
	Refused   atomic.Int64 // closed without a backend: refused, hold expired, backend unreachable, too many
	Closed    atomic.Int64 // forwarded connections closed by a route change
	Active    atomic.Int64 // forwarded connections open now
	Held      atomic.Int64 // connections waiting for a backend now
	// ReceivedBytes and SentBytes are the bytes forwarded from clients and
	// back to them, counted as they pass.
	ReceivedBytes atomic.Int64
	SentBytes     atomic.Int64
}

// PortStats is one port's counters since it opened, and its route now.
type PortStats struct {
	Cluster string
	Port    int
	Kind    string // "primary" or "replica": what the port routes to
	Route   Route

	Accepted, Forwarded, Refused, Closed, Active, Held int64
	ReceivedBytes, SentBytes                           int64
}

// Ports returns every open port's counters and route, by port number.
func (p *Proxy) Ports() []PortStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PortStats, 0, len(p.ports))
	for num, pt := range p.ports {
		r, _, _ := pt.current()
		st := &pt.stats
		out = append(out, PortStats{
			Cluster: pt.cluster, Port: num, Kind: pt.kind, Route: r,
			Accepted: st.Accepted.Load(), Forwarded: st.Forwarded.Load(), Refused: st.Refused.Load(),
			Closed: st.Closed.Load(), Active: st.Active.Load(), Held: st.Held.Load(),
			ReceivedBytes: st.ReceivedBytes.Load(), SentBytes: st.SentBytes.Load(),
		})
	}
	slices.SortFunc(out, func(a, b PortStats) int { return a.Port - b.Port })
	return out
}

// New returns a proxy that will listen on addr (an IP address); it opens
// no port until Update names one.
func New(addr string, log *slog.Logger) *Proxy {
	return &Proxy{addr: addr, log: log, maxConns: DefaultMaxConns, ports: map[int]*port{}, loops: loops{max: loopCount()}}
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() *Stats { return &p.stats }

// Update makes the proxy serve exactly these clusters: ports of clusters no
// longer listed close, with their connections; new ones open; every port
// takes its new route. A port that cannot be opened (in use) is reported in
// the returned error and the others still run.
func (p *Proxy) Update(routes []ClusterRoutes) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[int]bool{}
	var errs []error
	for _, c := range routes {
		for _, x := range []struct {
			num  int
			kind string
			r    Route
		}{{c.PrimaryPort, "primary", c.Primary}, {c.ReplicaPort, "replica", c.Replica}} {
			want[x.num] = true
			pt := p.ports[x.num]
			if pt != nil && pt.cluster != c.Cluster {
				pt.close()
				delete(p.ports, x.num)
				pt = nil
			}
			if pt == nil {
				var err error
				pt, err = p.open(c.Cluster, x.kind, x.num)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				p.ports[x.num] = pt
			}
			pt.set(x.r)
		}
	}
	for num, pt := range p.ports {
		if !want[num] {
			pt.close()
			delete(p.ports, num)
		}
	}
	if p.follower != nil {
		errs = append(errs, p.follower(routes))
	}
	return errors.Join(errs...)
}

// Close closes every port and connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for num, pt := range p.ports {
		pt.close()
		delete(p.ports, num)
	}
	p.loops.close()
}

func (p *Proxy) open(cluster, kind string, num int) (*port, error) {
	addr := net.JoinHostPort(p.addr, strconv.Itoa(num))
	lc := net.ListenConfig{KeepAliveConfig: keepAlive}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("proxy for %s (%s) cannot listen on %s: the port is in use by another process", cluster, kind, addr)
		}
		return nil, fmt.Errorf("proxy for %s (%s): listen on %s: %w", cluster, kind, addr, err)
	}
	pt := &port{
		p: p, cluster: cluster, kind: kind, ln: ln.(*net.TCPListener),
		log:     p.log.With("cluster", cluster, "port", num, "routes_to", kind),
		changed: make(chan struct{}), conns: map[*link]struct{}{}, route: Route{Mode: Hold},
		slots: make(chan struct{}, p.maxConns),
	}
	pt.wg.Add(1)
	go pt.accept()
	pt.log.Info("proxy listening", "addr", addr)
	return pt, nil
}

// port is one listening port and the connections it forwards.
type port struct {
	p       *Proxy
	cluster string
	kind    string
	ln      *net.TCPListener
	log     *slog.Logger
	slots   chan struct{} // one per open connection, held or forwarded
	stats   Stats         // this port's share of the proxy's counters

	mu      sync.Mutex
	route   Route
	changed chan struct{} // closed and replaced on every route change
	conns   map[*link]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// link is one client connection and, once forwarded, its backend connection
// and then the pipe that moves their bytes. Its fields are guarded by the
// port's mu.
type link struct {
	client  *net.TCPConn
	backend *net.TCPConn
	member  string
	pipe    *pipe
	closed  bool
}

// close ends the connection, whichever stage it is at. Called with the
// port's mu held.
func (l *link) close() {
	l.closed = true
	if l.pipe != nil {
		l.pipe.shut()
		return
	}
	l.client.Close()
	if l.backend != nil {
		l.backend.Close()
	}
}

// set takes a new route. On the primary port, connections forwarded to a
// member are closed once the route forwards to another one (that member
// stopped being the primary) or refuses; a hold leaves them be, so that a
// switchover lets transactions under way finish before the old primary
// shuts down. Read connections stay, since a former choice still serves
// reads.
func (pt *port) set(r Route) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	old := pt.route
	if old.Mode == r.Mode && old.Backend == r.Backend && old.Hold == r.Hold {
		return
	}
	pt.route = r
	close(pt.changed)
	pt.changed = make(chan struct{})
	pt.log.Info("route", "mode", r.Mode, "member", r.Backend.Member, "addr", r.Backend.Addr, "why", r.Why)
	if pt.kind != "primary" && r.Mode != Refuse {
		return
	}
	n := 0
	for l := range pt.conns {
		if l.member != "" && (r.Mode == Refuse || (r.Mode == Forward && l.member != r.Backend.Member)) {
			l.close()
			n++
		}
	}
	if n > 0 {
		pt.p.stats.Closed.Add(int64(n))
		pt.stats.Closed.Add(int64(n))
		pt.log.Info("closed connections to a member that no longer takes them", "count", n, "member_was", old.Backend.Member)
	}
}

func (pt *port) close() {
	pt.mu.Lock()
	pt.closed = true
	pt.ln.Close()
	for l := range pt.conns {
		l.close()
	}
	close(pt.changed)
	pt.changed = make(chan struct{})
	pt.mu.Unlock()
	pt.wg.Wait()
}

func (pt *port) accept() {
	defer pt.wg.Done()
	for {
		c, err := pt.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: back off rather than spin.
			pt.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		pt.p.stats.Accepted.Add(1)
		pt.stats.Accepted.Add(1)
		select {
		case pt.slots <- struct{}{}:
		default:
			pt.p.stats.Refused.Add(1)
			pt.stats.Refused.Add(1)
			pt.log.Warn("too many connections: refused one", "max", cap(pt.slots))
			c.Close()
			continue
		}
		l := &link{client: c}
		if !pt.track(l) {
			<-pt.slots
			c.Close()
			return
		}
		pt.wg.Add(1)
		go func() {
			defer pt.wg.Done()
			defer func() { <-pt.slots }()
			defer pt.untrack(l)
			pt.serve(l)
		}()
	}
}

func (pt *port) track(l *link) bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.closed {
		return false
	}
	pt.conns[l] = struct{}{}
	return true
}

func (pt *port) untrack(l *link) {
	pt.mu.Lock()
	delete(pt.conns, l)
	l.close()
	pt.mu.Unlock()
}

// current returns the route and a channel that closes when it changes.
func (pt *port) current() (Route, <-chan struct{}, bool) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.route, pt.changed, pt.closed
}

// serve waits for a backend, connects to it and forwards both ways until
// either side closes.
func (pt *port) serve(l *link) {
	var deadline <-chan time.Time
	held := false
	defer func() {
		if held {
			pt.p.stats.Held.Add(-1)
			pt.stats.Held.Add(-1)
		}
	}()
	for {
		r, changed, closed := pt.current()
		if closed {
			return
		}
		switch r.Mode {
		case Refuse:
			pt.p.stats.Refused.Add(1)
			pt.stats.Refused.Add(1)
			return
		case Forward:
			backend, err := dial(r.Backend.Addr)
			if err == nil {
				if held {
					pt.p.stats.Held.Add(-1)
					pt.stats.Held.Add(-1)
					held = false
				}
				pt.forward(l, backend, r.Backend.Member)
				return
			}
			pt.log.Debug("connect to backend", "member", r.Backend.Member, "err", err)
			// The member may be dying and a new route on its way: wait for
			// it as for a hold, but not forever.
			if r.Hold == 0 {
				r.Hold = DefaultHold
			}
			fallthrough
		case Hold:
			if deadline == nil {
				hold := r.Hold
				if hold == 0 {
					hold = DefaultHold
				}
				t := time.NewTimer(hold)
				defer t.Stop()
				deadline = t.C
				held = true
				pt.p.stats.Held.Add(1)
				pt.stats.Held.Add(1)
			}
			retry := time.NewTimer(250 * time.Millisecond)
			select {
			case <-changed:
			case <-retry.C:
			case <-deadline:
				retry.Stop()
				pt.p.stats.Refused.Add(1)
				pt.stats.Refused.Add(1)
				pt.log.Info("no backend in time: connection closed", "mode", r.Mode, "why", r.Why)
				return
			}
			retry.Stop()
		}
	}
}

func dial(addr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: dialTimeout, KeepAliveConfig: keepAlive}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// forward hands the client and its backend to an epoll loop and waits
// until the connection ends.
func (pt *port) forward(l *link, backend *net.TCPConn, member string) {
	pt.mu.Lock()
	r := pt.route
	stale := l.closed || pt.closed || (pt.kind == "primary" && (r.Mode != Forward || r.Backend.Member != member))
	if !stale {
		l.backend, l.member = backend, member
	}
	pt.mu.Unlock()
	if stale {
		// The route moved on while we dialled: this member may no longer be
		// the primary.
		backend.Close()
		pt.p.stats.Refused.Add(1)
		pt.stats.Refused.Add(1)
		return
	}
	p, err := pt.pipe(l.client, backend)
	if err != nil {
		pt.log.Warn("forward", "member", member, "err", err)
		pt.p.stats.Refused.Add(1)
		pt.stats.Refused.Add(1)
		return
	}
	pt.mu.Lock()
	l.pipe = p
	if l.closed {
		// A route change closed the link while it was handed over.
		p.shut()
	}
	pt.mu.Unlock()
	pt.p.stats.Forwarded.Add(1)
	pt.stats.Forwarded.Add(1)
	pt.p.stats.Active.Add(1)
	pt.stats.Active.Add(1)
	<-p.done
	pt.p.stats.Active.Add(-1)
	pt.stats.Active.Add(-1)
}

// pipe takes both connections out of Go's netpoller into a loop. Either
// way both are closed by the time the pipe's done closes, or on an error.
func (pt *port) pipe(client, backend *net.TCPConn) (*pipe, error) {
	cfd, err := detach(client)
	if err != nil {
		backend.Close()
		return nil, err
	}
	bfd, err := detach(backend)
	if err != nil {
		unix.Close(cfd)
		return nil, err
	}
	lp, err := pt.p.loops.pick()
	if err != nil {
		unix.Close(cfd)
		unix.Close(bfd)
		return nil, err
	}
	return lp.add(cfd, bfd, &pt.p.stats, &pt.stats)
}
