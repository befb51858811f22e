// Package pooler is the transaction pooler every agent runs beside its
// routing proxy: for each cluster, a port that takes Postgres clients over
// TLS, checks their SCRAM logins against the cluster's own roles, and runs
// each of their transactions on a server connection of a small pool per
// user and database, on the cluster's primary wherever it runs.
//
// Unlike the proxy it reads the protocol (with pgx's pgproto3): it must
// see where transactions end, keep prepared statements working on whichever
// server connection a transaction lands, and log in to PostgreSQL as the
// client's role. It does so without learning a password: the client's SCRAM
// proof yields the role's ClientKey, which proves the pooler's own logins
// (as PgBouncer's SCRAM passthrough does), so every role keeps exactly its
// own privileges and pg_authid stays the only list of who may log in.
//
// It follows the proxy's routes for the primary port: a hold keeps new
// transactions waiting, a new primary closes the server connections to the
// old one (a client in a transaction there loses its connection; an idle
// client's next transaction runs on the new primary), a refusal fails
// closed.
package pooler

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgfleet/pgfleet/internal/proxy"
)

// Defaults.
const (
	// DefaultQueueTimeout bounds how long a transaction waits for a
	// server connection of a full pool before it fails with SQLSTATE 53300.
	DefaultQueueTimeout = 5 * time.Second
	// verifierTTL is how long a role's verifier is used before it is read
	// again, so a changed password or a dropped role takes effect within
	// it; a failed login reads it again at once.
	verifierTTL = 10 * time.Second
	// maxLookups caps the verifier reads one port runs on the primary at
	// once: logins of names not in the cache cannot flood it.
	maxLookups = 4
	// maxClients caps the clients one port serves at once.
	maxClients = 5000
	// resetTimeout bounds the reset of a server between clients.
	resetTimeout = 5 * time.Second
	// idleTimeout closes server connections no transaction used for so long.
	idleTimeout = 5 * time.Minute
)

// Verifiers reads roles' SCRAM verifiers on a cluster's primary.
type Verifiers interface {
	// Verifier returns the rolpassword of user on the cluster's primary,
	// or "" when there is no such role that may log in now.
	Verifier(ctx context.Context, cluster string, primary proxy.Backend, user string) (string, error)
}

// Identity is the host's certificate, served to clients, and the fleet's
// CA, which server certificates must chain to.
type Identity interface {
	ServerTLS(tls.ClientAuthType) *tls.Config
	Leaf() *x509.Certificate
	Pool() *x509.CertPool
}

// Config is what a Pooler needs.
type Config struct {
	Addr         string // the IP address to listen on
	Identity     Identity
	Verifiers    Verifiers
	QueueTimeout time.Duration // 0 means DefaultQueueTimeout
	Log          *slog.Logger
}

// Pooler serves the pooled port of every cluster.
type Pooler struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	clusters map[int]*cluster // by port
	sessions map[uint32]*session
}

// New returns a pooler that opens no port until Update names one.
func New(cfg Config) *Pooler {
	if cfg.QueueTimeout <= 0 {
		cfg.QueueTimeout = DefaultQueueTimeout
	}
	return &Pooler{cfg: cfg, log: cfg.Log, clusters: map[int]*cluster{}, sessions: map[uint32]*session{}}
}

// Update makes the pooler serve exactly the clusters with a pooled port,
// each on its primary route.
func (p *Pooler) Update(routes []proxy.ClusterRoutes) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[int]bool{}
	var errs []error
	for _, r := range routes {
		if r.PooledPort == 0 {
			continue
		}
		want[r.PooledPort] = true
		c := p.clusters[r.PooledPort]
		if c != nil && c.name != r.Cluster {
			c.close()
			delete(p.clusters, r.PooledPort)
			c = nil
		}
		if c == nil {
			var err error
			if c, err = p.open(r.Cluster, r.PooledPort); err != nil {
				errs = append(errs, err)
				continue
			}
			p.clusters[r.PooledPort] = c
		}
		c.set(r.Primary, r.PoolSize)
	}
	for port, c := range p.clusters {
		if !want[port] {
			c.close()
			delete(p.clusters, port)
		}
	}
	return errors.Join(errs...)
}

// Close closes every port, client and server connection.
func (p *Pooler) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for port, c := range p.clusters {
		c.close()
		delete(p.clusters, port)
	}
}

func (p *Pooler) open(name string, port int) (*cluster, error) {
	addr := net.JoinHostPort(p.cfg.Addr, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pooler for %s cannot listen on %s: %w", name, addr, err)
	}
	c := &cluster{
		p: p, name: name, ln: ln, log: p.log.With("cluster", name, "port", port),
		route: proxy.Route{Mode: proxy.Hold}, changed: make(chan struct{}), stop: make(chan struct{}),
		pools: map[[2]string]*pool{}, verifiers: map[string]cachedVerifier{},
		sessions: map[*session]struct{}{}, slots: make(chan struct{}, maxClients),
		lookups: make(chan struct{}, maxLookups),
	}
	c.wg.Add(2)
	go c.accept()
	go c.expire()
	c.log.Info("pooler listening", "addr", addr)
	return c, nil
}

// PoolStats is one pool's state now, for /metrics.
type PoolStats struct {
	Cluster, User, Database string
	Size                    int   // the most server connections it opens
	Open, Idle, Waiting     int   // server connections open (idle or busy), idle; transactions waiting for one
	Timeouts                int64 // transactions that waited past the queue timeout (53300), since the pool began
}

// Pools returns every pool's state, by cluster, user and database.
func (p *Pooler) Pools() []PoolStats {
	p.mu.Lock()
	clusters := make([]*cluster, 0, len(p.clusters))
	for _, c := range p.clusters {
		clusters = append(clusters, c)
	}
	p.mu.Unlock()
	var out []PoolStats
	for _, c := range clusters {
		c.mu.Lock()
		for _, pl := range c.pools {
			pl.mu.Lock()
			out = append(out, PoolStats{Cluster: c.name, User: pl.user, Database: pl.db, Size: pl.size,
				Open: pl.open, Idle: len(pl.idle), Waiting: len(pl.waiters), Timeouts: pl.timeouts})
			pl.mu.Unlock()
		}
		c.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b PoolStats) int {
		return cmp.Or(strings.Compare(a.Cluster, b.Cluster), strings.Compare(a.User, b.User), strings.Compare(a.Database, b.Database))
	})
	return out
}

// register gives s a cancel key of its own.
func (p *Pooler) register(s *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		b := randomBytes(8)
		pid := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		if _, taken := p.sessions[pid]; !taken && pid != 0 {
			s.pid, s.secret = pid, b[4:]
			p.sessions[pid] = s
			return
		}
	}
}

func (p *Pooler) unregister(s *session) {
	p.mu.Lock()
	delete(p.sessions, s.pid)
	p.mu.Unlock()
}

func (p *Pooler) session(pid uint32) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sessions[pid]
}

// cluster is one cluster's pooled port, its pools and its clients.
type cluster struct {
	p    *Pooler
	name string
	ln   net.Listener
	log  *slog.Logger
	wg   sync.WaitGroup
	stop chan struct{} // closed with the port

	slots   chan struct{}
	lookups chan struct{} // one per verifier read under way

	mu        sync.Mutex
	route     proxy.Route
	size      int
	changed   chan struct{} // closed and replaced on every route change
	closed    bool
	pools     map[[2]string]*pool
	verifiers map[string]cachedVerifier
	sessions  map[*session]struct{}
}

type cachedVerifier struct {
	v     Verifier
	found bool
	at    time.Time
}

// set takes a new primary route and pool size. A route to another member,
// or a refusal, closes the server connections to the former one; a hold
// leaves them be, so that transactions under way finish in a switchover.
func (c *cluster) set(r proxy.Route, size int) {
	c.mu.Lock()
	old := c.route
	c.size = size
	pools := make([]*pool, 0, len(c.pools))
	for _, pl := range c.pools {
		pools = append(pools, pl)
		pl.mu.Lock()
		pl.size = size
		pl.mu.Unlock()
	}
	if old.Mode == r.Mode && old.Backend == r.Backend && old.Hold == r.Hold {
		c.mu.Unlock()
		return
	}
	c.route = r
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.log.Info("pooler route", "mode", r.Mode, "member", r.Backend.Member, "why", r.Why)
	// As on the proxy's primary port, what counts is the member each
	// server reaches, not the last route: Forward(a), Hold, Forward(b)
	// is an election that a may still be running through, cut off.
	if r.Mode == proxy.Refuse || r.Mode == proxy.Forward {
		n := 0
		for _, pl := range pools {
			n += pl.closeOthers(r.Backend.Member)
		}
		if n > 0 {
			c.log.Info("closed server connections to a member that is no longer the primary", "count", n, "primary", r.Backend.Member)
		}
	}
}

func (c *cluster) current() (proxy.Route, <-chan struct{}, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.route, c.changed, c.closed
}

func (c *cluster) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.stop)
	c.ln.Close()
	sessions := make([]*session, 0, len(c.sessions))
	for s := range c.sessions {
		sessions = append(sessions, s)
	}
	pools := c.pools
	c.mu.Unlock()
	for _, s := range sessions {
		s.raw.Close()
	}
	for _, pl := range pools {
		pl.closeOthers("")
	}
	c.wg.Wait()
}

func (c *cluster) accept() {
	defer c.wg.Done()
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			c.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case c.slots <- struct{}{}:
		default:
			c.log.Warn("too many clients: refused one", "max", maxClients)
			conn.Close()
			continue
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			tc.SetKeepAlive(true)
		}
		s := &session{c: c, raw: conn, conn: conn, stmts: statements{}}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			conn.Close()
			<-c.slots
			return
		}
		c.sessions[s] = struct{}{}
		c.mu.Unlock()
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() { <-c.slots }()
			s.serve()
			c.mu.Lock()
			delete(c.sessions, s)
			c.mu.Unlock()
		}()
	}
}

// expire closes server connections left idle for idleTimeout, so that a
// burst does not hold server backends for good.
func (c *cluster) expire() {
	defer c.wg.Done()
	t := time.NewTicker(idleTimeout / 5)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		pools := make([]*pool, 0, len(c.pools))
		for _, pl := range c.pools {
			pools = append(pools, pl)
		}
		c.mu.Unlock()
		for _, pl := range pools {
			pl.mu.Lock()
			var keep, old []*server
			for _, s := range pl.idle {
				if time.Since(s.used) > idleTimeout {
					old = append(old, s)
				} else {
					keep = append(keep, s)
				}
			}
			pl.idle = keep
			pl.mu.Unlock()
			for _, s := range old {
				s.close()
				pl.drop(nil)
			}
		}
	}
}

// pool returns the pool of user and db.
func (c *cluster) pool(user, db string) *pool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := [2]string{user, db}
	pl := c.pools[k]
	if pl == nil {
		pl = newPool(c.name, user, db, c.size)
		c.pools[k] = pl
	}
	return pl
}

// verifier returns user's verifier, from the cache while it is fresh.
func (c *cluster) verifier(ctx context.Context, user string) (Verifier, bool, error) {
	c.mu.Lock()
	cv, ok := c.verifiers[user]
	c.mu.Unlock()
	if ok && time.Since(cv.at) < verifierTTL {
		return cv.v, cv.found, nil
	}
	r, err := c.forward(ctx)
	if err != nil {
		return Verifier{}, false, err
	}
	select {
	case c.lookups <- struct{}{}:
		defer func() { <-c.lookups }()
	case <-ctx.Done():
		return Verifier{}, false, ctx.Err()
	}
	text, err := c.p.cfg.Verifiers.Verifier(ctx, c.name, r.Backend, user)
	if err != nil {
		return Verifier{}, false, fmt.Errorf("read the role's password verifier on %s: %w", r.Backend.Member, err)
	}
	cv = cachedVerifier{at: time.Now()}
	if text != "" {
		if v, err := ParseVerifier(text); err == nil {
			cv.v, cv.found = v, true
		}
	}
	c.mu.Lock()
	c.verifiers[user] = cv
	c.mu.Unlock()
	return cv.v, cv.found, nil
}

// forget drops user's cached verifier after a failed login: the password
// may have changed.
func (c *cluster) forget(user string) {
	c.mu.Lock()
	delete(c.verifiers, user)
	c.mu.Unlock()
}

// errNoPrimary is a route that has no primary to offer in time.
type errNoPrimary struct{ why string }

func (e *errNoPrimary) Error() string { return e.why }

// forward waits for a route that forwards to a primary: through a hold
// (an election or switchover), up to its hold time.
func (c *cluster) forward(ctx context.Context) (proxy.Route, error) {
	var holdUntil time.Time
	var hold time.Duration
	for {
		r, changed, closed := c.current()
		if closed {
			return r, errClosing
		}
		switch r.Mode {
		case proxy.Forward:
			return r, nil
		case proxy.Refuse:
			return r, &errNoPrimary{fmt.Sprintf("cluster %s has no primary this host can vouch for (%s)", c.name, r.Why)}
		}
		if holdUntil.IsZero() {
			hold = r.Hold
			if hold == 0 {
				hold = proxy.DefaultHold
			}
			holdUntil = time.Now().Add(hold)
		}
		t := time.NewTimer(time.Until(holdUntil))
		select {
		case <-changed:
			t.Stop()
		case <-t.C:
			return r, &errNoPrimary{fmt.Sprintf("cluster %s has had no primary for %s (%s): try again", c.name, hold, r.Why)}
		case <-ctx.Done():
			t.Stop()
			return r, ctx.Err()
		case <-c.stop:
			t.Stop()
			return r, errClosing
		}
	}
}
