package pooler

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestPoolQueue: a pool of one hands out a slot to open a server, queues
// the next client until the server comes back, fails a client that waits
// past its deadline with the pool's size, and gives a freed slot to the
// next client.
func TestPoolQueue(t *testing.T) {
	p := newPool("db", "app", "postgres", 1)
	stop := make(chan struct{})
	s, err := p.take(time.Now().Add(time.Second), stop)
	if s != nil || err != nil {
		t.Fatalf("take() on an empty pool = %v, %v; want leave to open a server", s, err)
	}
	s1 := &server{member: "db-1"}
	p.opened(s1)

	got := make(chan *server)
	go func() {
		s, err := p.take(time.Now().Add(5*time.Second), stop)
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	for {
		p.mu.Lock()
		n := len(p.waiters)
		p.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	p.put(s1)
	if s := <-got; s != s1 {
		t.Fatalf("a queued take() = %v, want the server put back", s)
	}

	start := time.Now()
	_, err = p.take(time.Now().Add(100*time.Millisecond), stop)
	var full *errPoolFull
	if !errors.As(err, &full) || time.Since(start) < 100*time.Millisecond || !strings.Contains(err.Error(), "its 1 server connections") || !strings.Contains(err.Error(), "pgfleet set db --pool-size") {
		t.Fatalf("take() on a full pool = %v after %s; want errPoolFull after the deadline", err, time.Since(start))
	}
	p.mu.Lock()
	waiters := len(p.waiters)
	p.mu.Unlock()
	if waiters != 0 {
		t.Errorf("a client that gave up is still queued (%d waiters)", waiters)
	}

	p.drop(s1)
	if s, err := p.take(time.Now().Add(time.Second), stop); s != nil || err != nil {
		t.Errorf("take() after the server was dropped = %v, %v; want leave to open one", s, err)
	}
	close(stop)
	if _, err := p.take(time.Now().Add(time.Second), stop); !errors.Is(err, errClosing) {
		t.Errorf("take() on a full pool that is closing = %v, want errClosing", err)
	}
}
