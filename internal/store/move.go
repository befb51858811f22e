package store

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// WriteMove writes one step of a move of cluster c's primary region
// (fleet.NextMoveStep): spec, the member records that change and the
// members placed, in one transaction that holds only if everything the
// step was decided on is as c read it: the spec, the leader's term, the
// sync set (a flip needs it to hold only standbys of the new region) and
// the switchover. Any of them changed, it fails with ErrConflict and the
// step is decided again on what the store holds then.
func (s *Store) WriteMove(ctx context.Context, c ClusterState, spec fleet.ClusterSpec, changed, added []fleet.MemberSpec, ev fleet.Event) error {
	name := c.Spec.Name
	if err := spec.ValidateStored(); err != nil {
		return err
	}
	cmps := []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(s.specKey(name)), "=", c.specRev),
		clientv3.Compare(clientv3.ModRevision(s.leaderKey(name)), "=", c.LeaderTerm),
		clientv3.Compare(clientv3.ModRevision(s.clusterPrefix(name)+"sync"), "=", c.syncRev),
		clientv3.Compare(clientv3.ModRevision(s.clusterPrefix(name)+"switchover"), "=", c.switchoverRev),
	}
	// The spec is written at every step, even unchanged, so that its
	// revision moves and a change of shape decided on the state before
	// (which compares it) fails.
	ops := []clientv3.Op{clientv3.OpPut(s.specKey(name), mustJSON(spec))}
	for _, m := range changed {
		if err := m.Validate(name); err != nil {
			return err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.memberSpecKey(name, m.ID)), ">", 0))
		ops = append(ops, clientv3.OpPut(s.memberSpecKey(name, m.ID), mustJSON(m)))
	}
	for _, m := range added {
		if err := m.Validate(name); err != nil {
			return err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.memberSpecKey(name, m.ID)), "=", 0))
		ops = append(ops,
			clientv3.OpPut(s.memberSpecKey(name, m.ID), mustJSON(m)),
			clientv3.OpDelete(s.memberTombstonePrefix(name, spec.Created)+m.ID))
	}
	ops = append(ops, clientv3.OpPut(s.eventKey(ev), mustJSON(ev)))
	return s.shapeTxn(ctx, name, "move", cmps, ops)
}
