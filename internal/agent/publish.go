package agent

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// statusHeartbeat is how long a status that has not changed goes without
// being written again. Writing an idle member's unchanged status every
// second cost every store voter a raft round and a disk sync per member
// per second; now a change is written at once, and the heartbeat only
// keeps Updated telling readers of the store that the supervisor runs.
// Health checks do not read Updated: they ask this agent (checkedAt).
const statusHeartbeat = 30 * time.Second

// publishLoop checks the member's status every second and writes it when
// it changed (statusHeartbeat).
func (s *supervisor) publishLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	s.publish(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.publish(ctx)
		case <-s.publishNow:
			s.publish(ctx)
		}
	}
}

func (s *supervisor) publish(ctx context.Context) {
	s.mu.Lock()
	st := fleet.MemberStatus{
		ID: s.spec.ID, Host: s.host.Name, Region: s.spec.Region, Role: s.role, State: s.state,
		Addr: s.addr(), Message: s.message, Progress: s.progress, Restarted: s.restartedID(), Updated: time.Now().UTC(),
	}
	if st.Role == fleet.RolePrimary {
		st.ReadOnly = s.readOnly
	}
	s.mu.Unlock()
	// Measured whatever postgres is doing: a member that cannot start
	// because its disk is full is the one the disk guard must see.
	if d, err := s.diskSpace(); err == nil {
		st.DiskFree, st.DiskSize = roundFree(d.free, d.size), d.size
	}
	if st.Role == "" {
		st.Role = s.spec.Role
	}

	if s.inst.Pid() != 0 && !s.stopping.Load() && (st.State == fleet.StateRunning || st.State == fleet.StateStreaming || st.State == fleet.StateCatchingUp) {
		qctx, cancel := context.WithTimeout(ctx, 800*time.Millisecond)
		var pst postgres.Status
		err := s.pub.do(qctx, s.superuser(), func(conn *pgx.Conn) (err error) {
			pst, err = postgres.QueryStatus(qctx, conn)
			return err
		})
		cancel()
		if err != nil {
			st.Healthy = false
			st.Message = "status query failed: " + err.Error()
		} else {
			st.Timeline = s.timeline(pst)
			if pst.InRecovery {
				st.ReceiveLSN, st.ReplayLSN = pst.ReceiveLSN.String(), pst.ReplayLSN.String()
				st.State = fleet.StateCatchingUp
				if pst.Streaming {
					st.State = fleet.StateStreaming
				}
				st.LagBytes = s.lag(pst.ReplayLSN)
			} else {
				st.WriteLSN, st.ReplayLSN = pst.WriteLSN.String(), pst.WriteLSN.String()
			}
			st.Healthy = st.State == fleet.StateRunning || st.State == fleet.StateStreaming
			s.mu.Lock()
			if s.state == fleet.StateCatchingUp || s.state == fleet.StateStreaming {
				s.state = st.State
			}
			s.mu.Unlock()
		}
	}
	s.checked.Store(time.Now().UnixNano())
	lease := s.lease()
	if lease == nil {
		return
	}
	last := s.published
	last.Updated = st.Updated
	if last == st && s.publishedLease == lease.ID && time.Since(s.published.Updated) < statusHeartbeat {
		return
	}
	if err := s.store.PutStatus(ctx, s.spec.Cluster, st, lease); err != nil {
		if ctx.Err() == nil {
			s.log.Debug("publish status", "err", err)
		}
		return
	}
	s.published, s.publishedLease = st, lease.ID
}

// checkedAt is when the supervisor last checked its member's status: what
// the health checks trust, since the published status is not written again
// while it does not change.
func (s *supervisor) checkedAt() time.Time {
	if n := s.checked.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// lag measures replay distance to the primary's last published write LSN;
// -1 while that is not known.
func (s *supervisor) lag(replay postgres.LSN) int64 {
	w := s.primaryLSN.Load()
	if w == 0 {
		return -1
	}
	return fleet.LagBytes(w, uint64(replay))
}
