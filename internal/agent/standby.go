package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// runStandby starts the member read-only, following the leader when there
// is one, and runs until postgres exits or the member is promoted and its
// term as primary ends. While no member holds the leader key, an eligible
// standby runs in the election.
func (s *supervisor) runStandby(ctx context.Context) error {
	s.forgetArchived() // a standby archives nothing; its data may be new
	c, err := s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil {
		return err
	}
	if id := c.Restarts[s.spec.ID]; id != "" && s.restartWant == "" && s.restartedID() == "" {
		s.restartWant = id // a supervisor that starts postgres afresh carries out the order by it
	}
	following := ""
	var follow *postgres.ConnInfo
	if l, ok := c.Member(c.Leader); ok && c.Leader != s.spec.ID {
		s.stayOnTimeline = false
		src, err := s.replicationSource(ctx, l)
		if err != nil {
			return err
		}
		following, follow = l.ID, &src
	}
	if err := s.configure(s.settings(follow, true)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	s.set(fleet.StateStarting, s.standbyRole(), "starting postgres")
	if err := s.startStandby(ctx, following); err != nil {
		if errors.Is(err, postgres.ErrWALGone) && following != "" {
			if err := s.discardData(ctx, fmt.Sprintf("%s no longer has the WAL this standby needs to start", following)); err != nil {
				return err
			}
			return errSteppedDown
		}
		if following == "" && errors.Is(err, postgres.ErrDiverged) && !s.stayOnTimeline {
			// No primary to rewind from, and a newer timeline (in the
			// archive) forked away from this data: it starts on its own
			// timeline instead, so that it runs in the election with the
			// WAL it holds, which may include the last acknowledged commits.
			s.stayOnTimeline = true
			s.event(ctx, "diverged", fmt.Sprintf("%s cannot start on the newest timeline (%v); starting on its own to run in the election", s.spec.ID, err))
			return errSteppedDown
		}
		if following != "" && !errors.Is(err, errSteppedDown) && !errors.Is(err, postgres.ErrAddrInUse) && ctx.Err() == nil {
			// Data that cannot start as a standby of a running primary,
			// because its history left the primary's or for a reason that
			// repeats, is rewound (and re-cloned if that fails); retrying
			// it as it is never helps.
			s.startFailures++
			if errors.Is(err, postgres.ErrDiverged) || s.startFailures >= startTries {
				s.startFailures = 0
				s.diverged.Store(true)
				s.event(ctx, "diverged", fmt.Sprintf("%s cannot start as a standby of %s (%v); rejoining", s.spec.ID, following, err))
				return errSteppedDown
			}
		}
		return err
	}
	s.startFailures = 0
	if s.restartWant != "" {
		id := s.restartWant
		s.restarted.Store(&id)
		s.restartWant = ""
		s.event(ctx, "restarted", fmt.Sprintf("%s restarted postgres on order %s", s.spec.ID, id))
	}
	if s.eligible(c) {
		s.prepareSlots(ctx, c)
	}
	s.set(fleet.StateCatchingUp, s.standbyRole(), followNote(following))
	if following != "" {
		s.event(ctx, "standby", fmt.Sprintf("%s runs as %s of %s on %s (%s)", s.spec.ID, s.standbyRole(), following, s.host.Name, s.addr()))
	}

	var (
		candidateSince time.Time // when this member entered the current election
		since          = time.Now()
	)
	s.primaryLSN.Store(0)
	wctx, unsubscribe := context.WithCancel(ctx)
	defer unsubscribe()
	changes := s.view.SubscribeCluster(wctx, s.spec.Cluster)
	tick := standbyTick
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.inst.Done():
			return fmt.Errorf("postgres exited: %v", s.inst.ExitErr())
		case <-changes:
		case <-time.After(tick):
		}
		c, err := s.view.Cluster(ctx, s.spec.Cluster)
		if err != nil {
			tick = standbyTick
			continue
		}
		// While a switchover runs, clients wait for the target: it watches
		// closely for the old primary's release.
		switch {
		case c.Switchover != nil && c.Switchover.To == s.spec.ID:
			tick = switchoverTick
		case c.Leader == "" || !s.view.Current():
			tick = standbyTick
		default:
			tick = standbyIdleTick
		}
		s.cluster = c.Spec
		s.followRole(ctx, c)
		s.applyParams(ctx, c.Spec.Params)
		if id := c.Restarts[s.spec.ID]; id != "" && id != s.restartedID() && c.Leader != s.spec.ID {
			s.restartWant = id
			s.log.Info("restarting postgres on order", "order", id)
			return errRestart
		}
		if c.Leader == "" {
			won, err := s.campaign(ctx, c, &candidateSince)
			if err != nil {
				s.log.Warn("election", "err", err)
			}
			if won {
				return s.promote(ctx, c)
			}
			continue
		}
		candidateSince = time.Time{}
		s.serveBackupRequest(ctx, c)
		if c.Leader == s.spec.ID {
			// The key is ours but this member runs read-only (an election won
			// by a previous run): finish the promotion.
			return s.promote(ctx, c)
		}
		if st, ok := c.Status[c.Leader]; ok && st.WriteLSN != "" {
			if l, err := postgres.ParseLSN(st.WriteLSN); err == nil {
				s.primaryLSN.Store(uint64(l))
			}
		}
		if c.Leader != following {
			l, _ := c.Member(c.Leader)
			src, err := s.replicationSource(ctx, l)
			if err != nil {
				continue
			}
			if err := s.configure(s.settings(&src, true)); err != nil {
				return fmt.Errorf("configure: %w", err)
			}
			if err := s.inst.Reload(); err != nil {
				return err
			}
			s.event(ctx, "follow", fmt.Sprintf("%s now follows %s", s.spec.ID, l.ID))
			following, since = l.ID, time.Now()
			s.set(fleet.StateCatchingUp, s.standbyRole(), followNote(following))
			continue
		}
		// A standby that cannot stream from a running leader has a history
		// the leader does not share (it was ahead of the promoted member):
		// it rejoins.
		s.mu.Lock()
		streaming := s.state == fleet.StateStreaming
		s.mu.Unlock()
		leaderRunning := false
		if st, ok := c.Status[c.Leader]; ok && st.State == fleet.StateRunning {
			leaderRunning = true
		}
		if streaming {
			since = time.Now()
			s.noopRewind = false
			s.dropDiscarded()
		} else if leaderRunning && s.inst.WALGone(5*time.Second) {
			// Rewinding cannot bring back WAL the leader recycled.
			s.stopPostgres()
			if err := s.discardData(ctx, fmt.Sprintf("%s no longer has the WAL this standby needs to catch up", c.Leader)); err != nil {
				return err
			}
			return errSteppedDown
		} else if st, ok := c.Status[c.Leader]; ok && st.State == fleet.StateRunning && time.Since(since) > divergedAfter {
			s.diverged.Store(true)
			s.event(ctx, "diverged", fmt.Sprintf("%s cannot stream from %s; rejoining", s.spec.ID, c.Leader))
			return errSteppedDown
		}
	}
}

func followNote(leader string) string {
	if leader == "" {
		return "no primary: waiting for an election"
	}
	return "following " + leader
}

// startStandby starts postgres read-only. A standby is ready only once it
// is consistent, which may need WAL from the leader; if the leader changes
// meanwhile (it died, another was elected) the start is abandoned and the
// member converges again instead of waiting for a primary that is gone.
func (s *supervisor) startStandby(ctx context.Context, following string) error {
	sctx, cancel := context.WithCancelCause(ctx)
	watchDone := make(chan struct{})
	defer func() { cancel(nil); <-watchDone }()
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-sctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			// Holding the key itself is no change: a member elected before
			// a restart recovers read-only first, then promotes.
			if c, err := s.store.Cluster(sctx, s.spec.Cluster); err == nil && c.Leader != following && c.Leader != s.spec.ID {
				cancel(errLeaderChanged)
				return
			}
		}
	}()
	err := s.start(sctx)
	if err != nil && errors.Is(context.Cause(sctx), errLeaderChanged) {
		return errSteppedDown
	}
	return err
}

var errLeaderChanged = errors.New("the leader changed")

// prepareSlots makes, on this standby, the replication slots its members
// would need if it were promoted, without reserving WAL: slots survive a
// promotion, so the standbys that re-point to it find theirs at once, and
// an unreserved slot holds back no WAL here. The primary reserves them
// (postgres.EnsureSlots) once it serves.
func (s *supervisor) prepareSlots(ctx context.Context, c store.ClusterState) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := s.ctl.do(qctx, s.superuser(), func(conn *pgx.Conn) error { return postgres.PrepareSlots(qctx, conn, s.otherSlots(c)) })
	if err != nil && ctx.Err() == nil {
		s.log.Warn("prepare replication slots for a promotion", "err", err)
	}
}

// restartedID is the last restart order this member carried out.
func (s *supervisor) restartedID() string {
	if p := s.restarted.Load(); p != nil {
		return *p
	}
	return ""
}
