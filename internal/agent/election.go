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

// campaign is one round of the election for an eligible standby: publish
// its candidacy, wait the election window, and try to take the key if it is
// the most advanced candidate. It reports whether this member won.
func (s *supervisor) campaign(ctx context.Context, c store.ClusterState, since *time.Time) (bool, error) {
	if !s.eligible(c) || time.Now().Before(s.abstainUntil) {
		return false, nil
	}
	// The clock watches the candidacies every round, not only at the
	// count, so that one that stopped changing during the window is aged
	// from when this member first saw it.
	s.candidacies.Date(time.Now(), c.Candidates)
	var pst postgres.Status
	err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) (err error) {
		pst, err = postgres.QueryStatus(ctx, conn)
		return err
	})
	if err != nil {
		return false, err
	}
	lsn := uint64(max(pst.ReceiveLSN, pst.ReplayLSN))
	cd := fleet.Candidacy{Member: s.spec.ID, LSN: lsn, LagBytes: -1, Timeline: s.timeline(pst), At: time.Now().UTC()}
	if w := s.primaryLSN.Load(); w > 0 {
		cd.LagBytes = fleet.LagBytes(w, lsn)
	}
	if err := s.store.PutCandidate(ctx, s.spec.Cluster, cd, s.lease()); err != nil {
		return false, err
	}
	// A switchover's target is known in advance: it need not wait for other
	// candidacies, which only an ordinary election compares.
	planned := c.Switchover != nil && c.Switchover.To == s.spec.ID && c.Switchover.LSN > 0
	if since.IsZero() {
		*since = time.Now()
		s.event(ctx, "election", fmt.Sprintf("%s runs in the election with %s received", s.spec.ID, postgres.LSN(lsn)))
		if !planned {
			return false, nil
		}
	}
	if !planned && time.Since(*since) < ha.ElectionWindow {
		return false, nil
	}
	c, err = s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil || c.Leader != "" {
		return false, err
	}
	now := time.Now()
	winner, why := ha.Elect(ha.ElectionInput{
		Now: now, Spec: c.Spec, Members: c.Members, Candidates: s.candidacies.Date(now, c.Candidates),
		Switchover: c.Switchover, Sync: c.Sync, Timeline: c.Timeline,
	})
	if winner != s.spec.ID {
		s.set(fleet.StateCatchingUp, s.standbyRole(), "election: "+why)
		return false, nil
	}
	ok, err := s.takeLeader(ctx)
	if err != nil || !ok {
		return false, err
	}
	s.event(ctx, "elected", fmt.Sprintf("%s won the election: %s", s.spec.ID, why))
	return true, nil
}

// promote turns the running standby, which holds the leader key, into the
// primary.
func (s *supervisor) promote(ctx context.Context, c store.ClusterState) error {
	// /metrics counts the promotion as a switchover or a failover.
	s.mx.planned.Store(c.Switchover != nil && c.Switchover.To == s.spec.ID)
	if s.hold == nil {
		ok, err := s.takeLeader(ctx)
		if err != nil {
			return fmt.Errorf("take leader key: %w", err)
		}
		if !ok {
			return errors.New("another member holds the leader key")
		}
	}
	start := time.Now()
	if err := s.whileHeld(ctx, func() error { return s.initialSync(ctx) }); err != nil {
		return err
	}
	// The other members' slots exist before the standbys re-point to this
	// member: a standby asking for a missing slot waits out postgres' 5 s
	// retry, and in sync mode commits would wait (or, after the grace
	// period, stop waiting) for it meanwhile. A standby makes them when it
	// starts (prepareSlots); this only fills in what is missing, which
	// costs a disk sync per slot.
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := s.ctl.do(qctx, s.superuser(), func(conn *pgx.Conn) error { return postgres.PrepareSlots(qctx, conn, s.otherSlots(c)) })
	cancel()
	if err != nil {
		s.log.Warn("create replication slots before promotion; the primary creates them after", "err", err)
	}
	if err := s.configure(s.settings(nil, true)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if err := s.inst.Reload(); err != nil {
		return err
	}
	if err := s.inst.Promote(ctx, s.superuser()); err != nil {
		return err
	}
	s.stayOnTimeline = false
	// Promotion removed standby.signal itself; drop the upstream settings
	// and the replication passfile a primary does not need.
	if err := s.configure(s.settings(nil, false)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if err := s.inst.Reload(); err != nil {
		return err
	}
	if c, err := s.store.Cluster(ctx, s.spec.Cluster); err == nil && c.Switchover != nil && c.Switchover.To == s.spec.ID {
		if err := s.store.ClearSwitchover(ctx, s.spec.Cluster); err != nil {
			s.log.Warn("clear switchover", "err", err)
		}
	}
	s.set(fleet.StateRunning, fleet.RolePrimary, "")
	return s.servePrimary(ctx, "promoted", fmt.Sprintf("%s promoted to primary on %s (%s) in %s", s.spec.ID, s.host.Name, s.addr(), time.Since(start).Round(time.Millisecond)))
}
