package pooler

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// pool is the server connections of one (user, database) of a cluster:
// at most size of them, idle ones kept for the next transaction, and
// clients waiting, first come first served, when all are busy.
type pool struct {
	cluster  string
	user, db string

	mu      sync.Mutex
	size    int
	open    int // idle, busy and being opened
	idle    []*server
	busy    map[*server]struct{}
	waiters []chan grant
	// clientKey and serverKey are the role's SCRAM keys from its latest
	// client login: what the pooler opens server connections with.
	clientKey, serverKey []byte
	// params are the settings the last server login reported, which a
	// client is told at its own login.
	params map[string]string
	// timeouts counts transactions that waited past the queue timeout.
	timeouts int64
}

// grant is what a waiting client gets: an idle server, or leave to open
// one (a slot).
type grant struct {
	s *server
}

// errPoolFull is a pool whose servers stayed busy for the queue timeout.
type errPoolFull struct {
	cluster  string
	user, db string
	size     int
	waited   time.Duration
}

func (e *errPoolFull) Error() string {
	return fmt.Sprintf("the pool of user %q on database %q is full: its %d server connections stayed busy for %s; raise the pool size (pgfleet set %s --pool-size N), or make transactions shorter",
		e.user, e.db, e.size, e.waited, e.cluster)
}

var errClosing = errors.New("the pooler is closing")

func newPool(cluster, user, db string, size int) *pool {
	return &pool{cluster: cluster, user: user, db: db, size: size, busy: map[*server]struct{}{}}
}

// take returns an idle server, or nil with leave to open one, waiting
// until deadline for either; stop ends the wait early.
func (p *pool) take(deadline time.Time, stop <-chan struct{}) (*server, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		s := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.busy[s] = struct{}{}
		p.mu.Unlock()
		return s, nil
	}
	if p.open < p.size {
		p.open++
		p.mu.Unlock()
		return nil, nil
	}
	ch := make(chan grant, 1)
	p.waiters = append(p.waiters, ch)
	size := p.size
	p.mu.Unlock()
	start := time.Now()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case g := <-ch:
		return g.s, nil
	case <-t.C:
	case <-stop:
	}
	p.mu.Lock()
	for i, w := range p.waiters {
		if w == ch {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			p.timeouts++
			p.mu.Unlock()
			select {
			case <-stop:
				return nil, errClosing
			default:
			}
			return nil, &errPoolFull{cluster: p.cluster, user: p.user, db: p.db, size: size, waited: time.Since(start).Round(100 * time.Millisecond)}
		}
	}
	p.mu.Unlock()
	// A grant was handed over meanwhile: take it.
	return (<-ch).s, nil
}

// opened records a server opened with a slot from take.
func (p *pool) opened(s *server) {
	p.mu.Lock()
	p.busy[s] = struct{}{}
	p.mu.Unlock()
}

// put returns s, healthy, to the pool: to the first waiting client, or
// to the idle list.
func (p *pool) put(s *server) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.busy, s)
	s.used = time.Now()
	if len(p.waiters) > 0 {
		ch := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.busy[s] = struct{}{}
		ch <- grant{s: s}
		return
	}
	p.idle = append(p.idle, s)
}

// drop gives up a slot: a server closed, or one that could not be opened.
// A waiting client gets leave to open one in its place.
func (p *pool) drop(s *server) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s != nil {
		delete(p.busy, s)
	}
	if len(p.waiters) > 0 {
		ch := p.waiters[0]
		p.waiters = p.waiters[1:]
		ch <- grant{}
		return
	}
	p.open--
}

// closeOthers closes the idle servers that reach another member than
// keep (all of them when keep is "") and cuts such busy ones, whose
// sessions then end: that member is no longer the primary.
func (p *pool) closeOthers(keep string) int {
	p.mu.Lock()
	var idle, busy []*server
	kept := p.idle[:0]
	for _, s := range p.idle {
		if keep != "" && s.member == keep {
			kept = append(kept, s)
		} else {
			idle = append(idle, s)
		}
	}
	p.idle = kept
	for s := range p.busy {
		if keep == "" || s.member != keep {
			busy = append(busy, s)
		}
	}
	p.mu.Unlock()
	for _, s := range idle {
		s.close()
		p.drop(nil)
	}
	for _, s := range busy {
		s.conn.Close()
	}
	return len(idle) + len(busy)
}

// setKeys keeps the role's keys from a client login that just succeeded.
func (p *pool) setKeys(clientKey, serverKey []byte) {
	p.mu.Lock()
	p.clientKey, p.serverKey = clientKey, serverKey
	p.mu.Unlock()
}

func (p *pool) keys() (clientKey, serverKey []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.clientKey, p.serverKey
}

func (p *pool) loginParams() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params
}

func (p *pool) setParams(m map[string]string) {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	p.mu.Lock()
	p.params = c
	p.mu.Unlock()
}
