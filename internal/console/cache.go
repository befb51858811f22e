package console

import (
	"context"
	"sync"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
)

// cache shares the API's answers between the pages of one agent: a read
// is repeated only after the hub saw its topics change (or maxAge passed),
// so ten consoles woken by one change make one read, not ten. Answers are
// kept per token, so that a read-only session never sees what only the
// fleet's token may, and per token a rotated token stops reading within
// maxAge.
type cache struct {
	mu      sync.Mutex
	entries map[string]*cached
}

type cached struct {
	done chan struct{} // closed once code and body are set
	gen  uint64
	at   time.Time
	code int
	body []byte
}

// maxCached bounds the entries kept; beyond it the oldest half goes.
const maxCached = 2000

// get answers GET path for token from the cache when the entry is of the
// current generation and younger than maxAge, else reads it (once, however
// many pages ask at the same moment).
func (c *cache) get(ctx context.Context, h *hub, call caller, token, path string, maxAge time.Duration, topics ...string) (int, []byte, error) {
	key := api.HashToken(token) + " " + path
	gen := h.generation(topics...)
	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[string]*cached{}
	}
	e, ok := c.entries[key]
	if ok && e.gen == gen && time.Since(e.at) < maxAge {
		c.mu.Unlock()
		select {
		case <-e.done:
			return e.code, e.body, nil
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
	e = &cached{done: make(chan struct{}), gen: gen, at: time.Now()}
	c.entries[key] = e
	if len(c.entries) > maxCached {
		c.prune()
	}
	c.mu.Unlock()

	code, body, err := call.raw(ctx, token, "GET", path, nil)
	e.code, e.body = code, body
	// An answer that depends on more than the state (a failed read, a
	// refused token) is not shared, nor is one that something is missing:
	// it may be made a moment later, and a page that shows "not found"
	// has nothing live to update.
	if err != nil || code >= 500 || code == 401 || code == 403 || code == 404 {
		c.mu.Lock()
		if c.entries[key] == e {
			delete(c.entries, key)
		}
		c.mu.Unlock()
	}
	close(e.done)
	return code, body, err
}

// prune drops the entries older than a minute, or all if that is not
// enough; c.mu is held.
func (c *cache) prune() {
	for k, e := range c.entries {
		if time.Since(e.at) > time.Minute {
			delete(c.entries, k)
		}
	}
	if len(c.entries) > maxCached/2 {
		clear(c.entries)
	}
}
