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
// to ha.FenceDeadline(time the renewal was sent).
//
// The hold enforces the fence itself, whatever the supervisor is busy with
// (a start, a slow store call, a switchover): when the deadline passes, the
// store says the lease is gone, or the dead man's switch exits, it kills
// every process of the instance first and only then closes lost. The check
// never needs the store, so a primary cut off from it still fences in time;
// and the dead man's switch, armed before postgres starts, fences at the same
// deadline when this process cannot (stopped, hung, dead).
type leaderHold struct {
	lease *store.Lease
	ttl   time.Duration
	log   *slog.Logger
	inst  *postgres.Instance

	mu       sync.Mutex
	deadline time.Time
	reason   string
	deadMan  *postgres.DeadMan

	lost     chan struct{}
	lostOnce sync.Once
	stop     context.CancelFunc
	done     chan struct{}
}

// holdLeader starts holding a lease whose last confirmed request was sent
// at sent, for inst. It arms the dead man's switch before it returns, so
// postgres may be started or promoted right after; it opens inst to writes.
func holdLeader(lease *store.Lease, ttl time.Duration, sent time.Time, inst *postgres.Instance, log *slog.Logger) (*leaderHold, error) {
	h := &leaderHold{
		lease: lease, ttl: ttl, log: log, inst: inst, deadline: ha.FenceDeadline(sent, ttl),
		lost: make(chan struct{}), done: make(chan struct{}),
	}
	d, err := inst.ArmDeadMan(h.deadline)
	if err != nil {
		return nil, err
	}
	h.deadMan = d
	inst.AllowWrites()
	ctx, stop := context.WithCancel(context.Background())
	h.stop = stop
	go h.loop(ctx)
	return h, nil
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
			h.fence("leader lease not confirmed before the fence deadline")
			return
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-h.deadMan.Fired():
			timer.Stop()
			h.fence("the dead man's switch exited")
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
		case ctx.Err() != nil:
			return
		case errors.Is(err, store.ErrLeaseLost):
			h.fence("the store says the leader lease is gone")
			return
		case err != nil:
			h.log.Warn("renew leader lease", "err", err)
		default:
			h.extend(ha.FenceDeadline(sent, h.ttl))
		}
	}
}

// fence kills the instance, then reports the hold lost. A fence that could
// not kill everything is logged and the hold still reports lost: the lease
// is not released (forget, not release), so the key expires at the store
// no earlier than the deadline the fence tried to keep.
func (h *leaderHold) fence(why string) {
	if err := h.inst.Fence(); err != nil {
		h.log.Error("fence", "why", why, "err", err)
	}
	h.lostOnce.Do(func() {
		h.mu.Lock()
		h.reason = why
		h.mu.Unlock()
		close(h.lost)
	})
}

func (h *leaderHold) extend(deadline time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if deadline.After(h.deadline) {
		h.deadline = deadline
	}
	if err := h.deadMan.Extend(h.deadline); err != nil {
		h.log.Warn("extend fence", "err", err)
	}
}

func (h *leaderHold) why() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reason
}

// forget stops holding without revoking: the lease is gone, or another
// member leads. It disarms the dead man's switch, so call it only once the
// instance is fenced or stopped.
func (h *leaderHold) forget() {
	h.stop()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	h.deadMan.Disarm()
}

// release gives the key up at once (revoking the lease deletes it), so a
// standby need not wait for the lease to expire. It first makes sure that no
// process of the instance is left (a postmaster that crashed leaves its
// backends running); if that fails, it keeps the lease, which then expires
// at the store no earlier than the fence deadline.
func (h *leaderHold) release() {
	if err := h.inst.Fence(); err != nil {
		h.log.Error("release leader key: processes of postgres are still running; letting the lease expire", "err", err)
		h.forget()
		return
	}
	h.forget()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	h.lease.Revoke(ctx)
}
