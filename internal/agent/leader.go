package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// leaderHold keeps a member's leader lease and knows, from its own clock
// alone, until when the store has surely not expired it: the fence deadline.
// It renews the lease every TTL/4; each confirmed renewal moves the deadline
// to ha.FenceDeadline(time the renewal was sent). lost closes when the
// deadline passes or the store says the lease is gone. The check never needs
// the store, so a primary cut off from it still fences in time.
type leaderHold struct {
	lease *store.Lease
	ttl   time.Duration
	log   *slog.Logger

	mu       sync.Mutex
	deadline time.Time
	reason   string
	deadMan  *postgres.DeadMan

	lost     chan struct{}
	lostOnce sync.Once
	stop     context.CancelFunc
	done     chan struct{}
}

func holdLeader(lease *store.Lease, ttl time.Duration, sent time.Time, log *slog.Logger) *leaderHold {
	ctx, stop := context.WithCancel(context.Background())
	h := &leaderHold{
		lease: lease, ttl: ttl, log: log, deadline: ha.FenceDeadline(sent, ttl),
		lost: make(chan struct{}), stop: stop, done: make(chan struct{}),
	}
	go h.loop(ctx)
	return h
}

func (h *leaderHold) loop(ctx context.Context) {
	defer close(h.done)
	renew := time.NewTicker(ha.RenewEvery(h.ttl))
	defer renew.Stop()
	for {
		h.mu.Lock()
		wait := time.Until(h.deadline)
		h.mu.Unlock()
		if wait <= 0 {
			h.setLost("leader lease not confirmed before the fence deadline")
			return
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
			continue // re-check: a renewal may have moved the deadline
		case <-renew.C:
			timer.Stop()
		}
		sent := time.Now()
		// Never wait on the store past the deadline: the check above must
		// run in time even while the store is slow.
		h.mu.Lock()
		limit := min(ha.RenewEvery(h.ttl), time.Until(h.deadline))
		h.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, limit)
		err := h.lease.Renew(rctx)
		cancel()
		switch {
		case errors.Is(err, store.ErrLeaseLost):
			h.setLost("the store says the leader lease is gone")
			return
		case err != nil:
			h.log.Warn("renew leader lease", "err", err)
		default:
			h.extend(ha.FenceDeadline(sent, h.ttl))
		}
	}
}

func (h *leaderHold) extend(deadline time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if deadline.After(h.deadline) {
		h.deadline = deadline
	}
	if h.deadMan != nil {
		if err := h.deadMan.Extend(time.Until(h.deadline)); err != nil {
			h.log.Warn("extend fence", "err", err)
		}
	}
}

func (h *leaderHold) setLost(why string) {
	h.lostOnce.Do(func() {
		h.mu.Lock()
		h.reason = why
		h.mu.Unlock()
		close(h.lost)
	})
}

func (h *leaderHold) why() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reason
}

// arm starts the dead man's switch for the running postgres: from now on,
// even an agent that is stopped cannot keep it writable past the deadline.
func (h *leaderHold) arm(inst *postgres.Instance) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.deadMan != nil {
		h.deadMan.Disarm()
	}
	d, err := inst.ArmDeadMan(time.Until(h.deadline))
	if err != nil {
		return err
	}
	h.deadMan = d
	return nil
}

// forget stops holding without revoking: the lease is gone or another
// member leads.
func (h *leaderHold) forget() {
	h.stop()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.deadMan != nil {
		h.deadMan.Disarm()
		h.deadMan = nil
	}
}

// release gives the key up at once (revoking the lease deletes it), so a
// standby need not wait for the lease to expire. Call it only once postgres
// no longer accepts writes.
func (h *leaderHold) release() {
	h.forget()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	h.lease.Revoke(ctx)
}
