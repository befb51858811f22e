package agent

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// initialSync sets up the sync state a new primary starts with
// (ha.InitialSync), published before its first write, so that not even the
// first commits of a term go unprotected; reconcileSync then follows the
// standbys that stream.
func (s *supervisor) initialSync(ctx context.Context) error {
	s.syncApplied, s.syncFrom = nil, 0
	c, err := s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil {
		return err
	}
	s.cluster = c.Spec
	want, set := ha.InitialSync(c.Spec, c.Members, c.Status, c.Sync, s.spec.ID)
	if len(set) > 0 || (c.Sync != nil && len(c.Sync.Members) > 0) {
		if err := s.store.PutSync(ctx, s.spec.Cluster, fleet.SyncState{Primary: s.spec.ID, Members: set}); err != nil {
			return err
		}
	}
	s.syncApplied = want
	return nil
}

// reconcileSync keeps synchronous replication as the cluster's mode asks,
// with the standbys of the primary region that stream now. The published
// sync set must always contain every standby that may hold a commit no
// other has: so a standby joins the set before commits may wait for it, and
// leaves it only after another member has flushed everything from the
// moment commits stopped waiting for it.
func (s *supervisor) reconcileSync(ctx context.Context, c store.ClusterState) error {
	mode := c.Spec.SyncMode()
	var want []string
	if mode != fleet.SyncOff {
		// A standby counts while it streams, and for a grace period after:
		// right after a promotion or a restart it needs a moment to
		// reconnect, and dropping it at once would weaken the guarantee for
		// nothing.
		now := time.Now()
		for _, m := range c.Members {
			if m.ID == s.spec.ID || !ha.SyncEligible(m, c.Spec) {
				continue
			}
			if st, ok := c.Status[m.ID]; ok && st.State == fleet.StateStreaming {
				s.lastStreamed[m.ID] = now
			}
			if seen, ok := s.lastStreamed[m.ID]; ok && now.Sub(seen) < syncGrace {
				want = append(want, m.ID)
			}
		}
		if len(want) == 0 && mode == fleet.SyncStrict {
			// No standby can acknowledge: strict keeps commits waiting
			// rather than accept one that a failover could lose.
			want = s.syncApplied
			if len(want) == 0 {
				for _, m := range c.Members {
					if m.ID != s.spec.ID && ha.SyncEligible(m, c.Spec) {
						want = append(want, m.ID)
					}
				}
			}
		}
	}
	var published []string
	if c.Sync != nil && c.Sync.Primary == s.spec.ID {
		published = c.Sync.Members
	}
	// A standby enters the published set before commits wait for it.
	if grown := union(published, want); mode != fleet.SyncOff && !sameSet(grown, published) {
		if err := s.store.PutSync(ctx, s.spec.Cluster, fleet.SyncState{Primary: s.spec.ID, Members: grown}); err != nil {
			return err
		}
		published = grown
	}
	if mode == fleet.SyncOff && len(published) > 0 {
		// Leaving sync mode: the set goes before commits stop waiting.
		if err := s.store.PutSync(ctx, s.spec.Cluster, fleet.SyncState{Primary: s.spec.ID}); err != nil {
			return err
		}
		published = nil
	}
	if !sameSet(want, s.syncApplied) {
		// The bookkeeping (syncApplied, syncFrom) changes only once the new
		// list is in effect: until then the published set keeps covering
		// both the old list and the new one.
		next := s.settings(nil, false)
		next.SyncStandbys = want
		if err := s.configure(next); err != nil {
			return err
		}
		if err := s.inst.Reload(); err != nil {
			return err
		}
		err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
			// The reload applies a moment after the signal; the position
			// that counts is the one after it took effect.
			wantSetting := postgres.SyncStandbyNames(want)
			for {
				v, err := postgres.SyncStandbysInEffect(ctx, conn)
				if err != nil {
					return err
				}
				if v == wantSetting {
					break
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(10 * time.Millisecond):
				}
			}
			lsn, err := postgres.CurrentLSN(ctx, conn)
			if err == nil {
				s.syncApplied, s.syncFrom = want, lsn
			}
			return err
		})
		if err != nil {
			return err
		}
		s.event(ctx, "sync", fmt.Sprintf("%s: commits wait for %s", s.spec.ID, syncNote(want)))
	}
	// Shrink the published set to what commits wait for, once one of those
	// has flushed past the change; with none left (mode on, no standby),
	// replication is asynchronous and the set goes.
	if len(published) > 0 && !sameSet(published, s.syncApplied) {
		ready := false
		err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
			// Only while the server runs with the list the bookkeeping
			// names: a change that took effect after its confirmation timed
			// out makes commits wait for members the set would drop.
			inEffect, err := postgres.SyncStandbysInEffect(ctx, conn)
			if err != nil || inEffect != postgres.SyncStandbyNames(s.syncApplied) {
				return err
			}
			if len(s.syncApplied) == 0 {
				ready = true
				return nil
			}
			flushed, err := postgres.FlushedBy(ctx, conn)
			for _, m := range s.syncApplied {
				ready = ready || flushed[m] >= s.syncFrom
			}
			return err
		})
		if err != nil {
			return err
		}
		if ready {
			return s.store.PutSync(ctx, s.spec.Cluster, fleet.SyncState{Primary: s.spec.ID, Members: s.syncApplied})
		}
	}
	return nil
}

// syncGrace is how long a standby that stopped streaming stays one that
// commits wait for.
const syncGrace = 5 * time.Second

func syncNote(names []string) string {
	if len(names) == 0 {
		return "no standby (asynchronous)"
	}
	return "any one of " + strings.Join(names, ", ")
}

func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}
