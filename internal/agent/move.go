package agent

import (
	"context"
	"fmt"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/store"
)

// A move of the primary region (fleet.Move) changes members' records
// while they run: read replicas of the new region become standbys, and
// the old region's standbys (its primary, once it has switched over)
// become read replicas. The supervisor follows its member's record as the
// store has it now, not as it was when the supervisor started.

// eligible reports whether this member may be promoted, by its record in
// c: a standby that a move made a read replica must not run in elections,
// and a replica it made a standby must, or an election in sync mode would
// wait for it forever.
func (s *supervisor) eligible(c store.ClusterState) bool {
	m, ok := c.Member(s.spec.ID)
	if !ok {
		m = s.spec
	}
	return ha.Eligible(m, c.Spec)
}

// followRole takes up the role this member's record asks for now; a
// standby running publishes it at once, and says so in the events.
func (s *supervisor) followRole(ctx context.Context, c store.ClusterState) {
	m, ok := c.Member(s.spec.ID)
	if !ok {
		return
	}
	s.mu.Lock()
	was := s.wantRole
	if was == "" {
		was = s.spec.Role
	}
	s.wantRole = m.Role
	s.mu.Unlock()
	if (was == fleet.RoleReplica) == (m.Role == fleet.RoleReplica) {
		return
	}
	role := s.standbyRole()
	s.mu.Lock()
	running := s.role == fleet.RoleStandby || s.role == fleet.RoleReplica
	if running {
		s.role = role
	}
	s.mu.Unlock()
	if running {
		select {
		case s.publishNow <- struct{}{}:
		default:
		}
	}
	s.event(ctx, "role", fmt.Sprintf("%s is now a %s in %s (primary region %s)", s.spec.ID, role, s.spec.Region, c.Spec.PrimaryRegion))
}
