package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// fence kills every process of postgres at once, so that no transaction
// commits after it returns, and records why. The leader hold has usually
// done the killing already (it does not wait for this loop); fencing twice
// is harmless.
func (s *supervisor) fence(ctx context.Context, why string) {
	s.stopping.Store(true)
	defer s.stopping.Store(false)
	if err := s.inst.Fence(); err != nil {
		s.log.Error("fence", "err", err)
	}
	s.ctl.close()
	s.pub.close()
	s.event(ctx, "fenced", fmt.Sprintf("%s fenced: %s; every process of postgres killed", s.spec.ID, why))
}

// takeLeader acquires the leader key under a fresh lease and starts holding
// it; false when another member has it.
func (s *supervisor) takeLeader(ctx context.Context) (bool, error) {
	lease, err := s.store.GrantManual(ctx, s.cluster.TTL())
	if err != nil {
		return false, err
	}
	sent := time.Now()
	ok, err := s.store.AcquireLeader(ctx, s.spec.Cluster, s.spec.ID, lease)
	if err != nil || !ok {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		lease.Revoke(rctx)
		cancel()
		return false, err
	}
	// The grant was sent before the acquiring transaction, so the key
	// cannot expire before sent+TTL.
	h, err := holdLeader(lease, s.cluster.TTL(), sent, s.inst, s.log)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		lease.Revoke(rctx)
		cancel()
		return false, err
	}
	s.setHold(h)
	return true, nil
}

// runPrimary starts the member as the primary: the leader key first, then
// postgres, so that it never accepts a write without the key. A fresh
// cluster starts asynchronous whatever its mode: it has nothing to lose yet,
// and its standbys can only clone once its first commits went through.
func (s *supervisor) runPrimary(ctx context.Context, fresh bool) error {
	ok, err := s.takeLeader(ctx)
	if err != nil {
		return fmt.Errorf("take leader key: %w", err)
	}
	if !ok {
		return errors.New("another member holds the leader key")
	}
	s.syncApplied, s.syncFrom = nil, 0
	if !fresh {
		if err := s.whileHeld(ctx, func() error { return s.initialSync(ctx) }); err != nil {
			return err
		}
	}
	if err := s.configure(s.settings(nil, false)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	s.set(fleet.StateStarting, fleet.RolePrimary, "starting postgres")
	if err := s.start(ctx); err != nil {
		return err
	}
	return s.servePrimary(ctx, "primary", fmt.Sprintf("%s is primary on %s (%s)", s.spec.ID, s.host.Name, s.addr()))
}

// servePrimary runs the member as the primary until its term ends. It arms
// the fence, makes sure of the replication role and every other member's
// slot, and then watches: postgres exiting, the lease no longer confirmed,
// a step-down or switchover request.
func (s *supervisor) servePrimary(ctx context.Context, kind, msg string) error {
	// The marks of files archived ahead are of one term (walmarks.go).
	s.forgetArchived()
	defer s.forgetArchived()
	// Every standby the term started with gets the grace period to connect.
	s.lastStreamed = map[string]time.Time{}
	for _, m := range s.syncApplied {
		s.lastStreamed[m] = time.Now()
	}
	var c store.ClusterState
	err := s.whileHeld(ctx, func() (err error) {
		c, err = s.store.Cluster(ctx, s.spec.Cluster)
		return err
	})
	if err != nil {
		return err
	}
	var timeline int64
	err = s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
		st, err := postgres.QueryStatus(ctx, conn)
		if err != nil {
			return fmt.Errorf("read timeline: %w", err)
		}
		timeline = st.Timeline
		// Every start, not only after initdb: a first start that failed
		// half-way must not leave the cluster without its replication role.
		if err := postgres.EnsureRole(ctx, conn, fleet.ReplicationUser, s.secrets.ReplicationPassword, true); err != nil {
			return fmt.Errorf("create replication role: %w", err)
		}
		// Slots exist before the member reports itself running, which is
		// what standbys wait for before they clone.
		if err := postgres.EnsureSlots(ctx, conn, s.otherSlots(c)); err != nil {
			return fmt.Errorf("create replication slots: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Elections keep members whose WAL stops on an older timeline out.
	err = s.whileHeld(ctx, func() error {
		return s.store.RaiseTimeline(ctx, s.spec.Cluster, s.spec.ID, timeline)
	})
	if err != nil {
		return err
	}
	s.set(fleet.StateRunning, fleet.RolePrimary, "")
	s.event(ctx, kind, msg)
	stopStream := s.startWALStream(ctx) // walstream.go
	defer stopStream()
	defer func() {
		// The next term decides afresh, from its first tick.
		s.mu.Lock()
		s.readOnly = ""
		s.mu.Unlock()
	}()

	wctx, unsubscribe := context.WithCancel(ctx)
	defer unsubscribe()
	changes := s.view.SubscribeCluster(wctx, s.spec.Cluster)
	lastTrim := time.Time{}
	var orphans map[string]time.Time // slots without a member, since when
	// The first check soon after the term starts: a new cluster gets its
	// first backup at once.
	lastBackupCheck := time.Now().Add(-backupCheckEvery + 3*time.Second)
	for {
		wait := primaryTick
		if !s.view.Current() {
			wait = primaryPollTick
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.inst.Done():
			if s.inst.ExitErr() == nil {
				// Asked to exit: while serving, only the hold's fence
				// does that, and the hold reports itself lost right after.
				select {
				case <-s.hold.lost:
					return s.lostHold(ctx)
				case <-time.After(time.Second):
				}
			}
			// Promoting an up-to-date standby is quicker than crash
			// recovery here, so the key goes at once, but only once the
			// backends the postmaster left are gone too.
			s.releaseLeader()
			s.event(ctx, "crashed", fmt.Sprintf("%s: postgres exited (%v); its processes killed and the leader key released", s.spec.ID, s.inst.ExitErr()))
			return fmt.Errorf("postgres exited: %v", s.inst.ExitErr())
		case <-s.hold.lost:
			return s.lostHold(ctx)
		case <-changes:
		case <-time.After(wait):
		}
		c, err := s.view.Cluster(ctx, s.spec.Cluster)
		if err != nil {
			continue // the lease decides; the fence fires if the store stays away
		}
		switch {
		case c.Leader != s.spec.ID:
			s.fence(ctx, "the leader key names "+c.Leader)
			s.hold.forget()
			s.setHold(nil)
			return errors.New("lost the leader key")
		case c.Stepdown:
			s.fence(ctx, "asked to step down")
			s.abstainUntil = time.Now().Add(2 * s.cluster.TTL())
			s.releaseLeader()
			return errSteppedDown
		case c.Switchover != nil && c.Switchover.From == s.spec.ID && c.Switchover.LSN == 0:
			return s.handOver(ctx, *c.Switchover)
		case c.Switchover != nil:
			// A switchover that is over (this member is its target, or it
			// gave way to an election) but still recorded, because the
			// promotion could not clear it: the proxies hold new
			// connections while it exists.
			if err := s.store.ClearFinishedSwitchover(ctx, c); err != nil && ctx.Err() == nil {
				s.log.Warn("clear a finished switchover", "err", err)
			}
		}
		s.applyParams(ctx, c.Spec.Params)
		s.guardDisk(ctx, c)
		s.serveBackupRequest(ctx, c)
		if time.Since(lastBackupCheck) > backupCheckEvery && s.checkingBackup.CompareAndSwap(false, true) {
			lastBackupCheck = time.Now()
			go func() {
				defer s.checkingBackup.Store(false)
				bctx, cancel := context.WithTimeout(ctx, backupCheckEvery)
				defer cancel()
				s.watchArchiving(bctx)
				s.scheduleBackups(bctx, c)
			}()
		}
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = s.ctl.do(qctx, s.superuser(), func(conn *pgx.Conn) error {
			if err := postgres.EnsureSlots(qctx, conn, s.otherSlots(c)); err != nil {
				return err
			}
			orphans, err = s.dropOrphanSlots(qctx, conn, c, orphans)
			return err
		})
		if err == nil {
			err = s.reconcileSync(qctx, c)
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("primary upkeep", "err", err)
		}
		if time.Since(lastTrim) > time.Minute {
			// The primary keeps its cluster's event history bounded.
			lastTrim = time.Now()
			if err := s.store.TrimEvents(ctx, s.spec.Cluster); err != nil && ctx.Err() == nil {
				s.log.Warn("trim events", "err", err)
			}
		}
	}
}

// dropOrphanSlots drops the replication slots of members no longer in the
// cluster's spec (ha.OrphanSlots), whose WAL would otherwise pile up on the
// primary's disk for a standby that never comes back, and returns the
// orphans it saw, for the next call.
func (s *supervisor) dropOrphanSlots(ctx context.Context, conn *pgx.Conn, c store.ClusterState, since map[string]time.Time) (map[string]time.Time, error) {
	have, err := postgres.PhysicalSlots(ctx, conn)
	if err != nil {
		return since, err
	}
	slots := make([]ha.Slot, len(have))
	for i, sl := range have {
		slots[i] = ha.Slot{Name: sl.Name, Active: sl.Active}
	}
	drop, since := ha.OrphanSlots(ha.SlotInput{Now: time.Now(), Self: s.spec.ID, Members: c.Members, Slots: slots, SlotName: postgres.SlotName, OrphanSince: since})
	for _, d := range drop {
		if err := postgres.DropSlot(ctx, conn, d.Slot); err != nil {
			return since, err
		}
		delete(since, d.Slot)
		s.event(ctx, "slot-dropped", fmt.Sprintf("replication slot %s dropped: %s", d.Slot, d.Why))
	}
	return since, nil
}

func (s *supervisor) otherSlots(c store.ClusterState) []string {
	var slots []string
	for _, m := range c.Members {
		if m.ID != s.spec.ID {
			slots = append(slots, postgres.SlotName(m.ID))
		}
	}
	return slots
}

// whileHeld runs a store step of the term's start again while the store
// is briefly away (a voter lost, raft changing leaders), for as long as the
// lease holds. The lease, not one failed call, decides whether the term goes
// on: giving up here would cost the cluster a second election.
func (s *supervisor) whileHeld(ctx context.Context, step func() error) error {
	for {
		err := step()
		if err == nil || !errors.Is(err, store.ErrNoQuorum) {
			return err
		}
		s.log.Warn("store unavailable at the start of a primary term; retrying while the lease holds", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.hold.lost:
			return s.lostHold(ctx)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// lostHold ends a term whose leader hold was lost: the hold fenced postgres
// already; this records why and lets the key go without revoking it.
func (s *supervisor) lostHold(ctx context.Context) error {
	s.fence(ctx, s.hold.why())
	s.hold.forget()
	s.setHold(nil)
	return errors.New("leader lease not confirmed in time")
}
