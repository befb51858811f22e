package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// handOver is the old primary's half of a switchover: a clean shutdown
// streams every record to the standbys, the last record's LSN goes into the
// switchover, and the key is released for the target to take.
func (s *supervisor) handOver(ctx context.Context, sw fleet.Switchover) error {
	s.event(ctx, "switchover", fmt.Sprintf("%s stopping to hand over to %s", s.spec.ID, sw.To))
	s.drain(ctx)
	// A checkpoint while clients still write leaves the shutdown checkpoint
	// little to flush, and the clients' pause is that much shorter.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	if err := s.ctl.do(cctx, s.superuser(), func(conn *pgx.Conn) error { _, err := conn.Exec(cctx, "CHECKPOINT"); return err }); err != nil {
		s.log.Warn("checkpoint before switchover", "err", err)
	}
	cancel()
	s.set(fleet.StateStopped, fleet.RolePrimary, "switchover to "+sw.To)
	s.stopPostgres()
	lsn, clean, err := s.inst.ShutdownCheckpoint(ctx)
	if err != nil {
		return err
	}
	if !clean {
		// The fast shutdown had to be escalated: WAL may go on past the
		// last checkpoint, so no position proves that the target has
		// everything. An ordinary election, which compares what every
		// member received, decides instead; the switchover record goes
		// first, or the election would wait for its position.
		if err := s.store.ClearSwitchover(ctx, s.spec.Cluster); err != nil {
			return fmt.Errorf("give the switchover up: %w", err)
		}
		s.releaseLeader()
		s.event(ctx, "switchover", fmt.Sprintf("%s did not shut down cleanly; the switchover to %s gives way to an ordinary election", s.spec.ID, sw.To))
		return errSteppedDown
	}
	sw.LSN = uint64(lsn)
	if err := s.store.UpdateSwitchover(ctx, s.spec.Cluster, sw); err != nil {
		return fmt.Errorf("record switchover LSN: %w", err)
	}
	s.releaseLeader()
	s.event(ctx, "switchover", fmt.Sprintf("%s stopped at %s and released the leader key for %s", s.spec.ID, lsn, sw.To))
	return errSteppedDown
}

// Draining before a switchover's shutdown.
const (
	// drainSettle is how long the proxies get to see the switchover and
	// start holding new connections: a watch event, milliseconds.
	drainSettle = 100 * time.Millisecond
	// drainMax bounds the wait for running transactions; those still busy
	// then are aborted by the shutdown.
	drainMax = 5 * time.Second
)

// drain waits, up to drainMax, until no client session is inside a
// transaction. The routing proxies hold new connections from the moment the
// switchover is written, so this lets work already under way finish instead
// of being cut off by the shutdown: a client sees a pause, not an error.
// Idle sessions are closed by the shutdown, between two transactions.
func (s *supervisor) drain(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(drainSettle):
	}
	deadline := time.Now().Add(drainMax)
	quiet := 0
	for time.Now().Before(deadline) && quiet < 2 {
		var busy int
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		err := s.ctl.do(qctx, s.superuser(), func(conn *pgx.Conn) (err error) {
			busy, err = postgres.BusySessions(qctx, conn)
			return err
		})
		cancel()
		if err != nil {
			s.log.Warn("drain before switchover", "err", err)
			return
		}
		// Twice in a row: a connection the proxy forwarded just before it
		// began to hold may still be authenticating.
		if busy == 0 {
			quiet++
		} else {
			quiet = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	if quiet < 2 {
		s.log.Info("switchover: transactions still running after the drain; the shutdown aborts them", "waited", drainMax)
	}
}
