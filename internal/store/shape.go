package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// A member removed from a cluster leaves a tombstone of its own beside its
// cluster incarnation's, tombstones/<cluster>/<created>/members/<id>: the
// order to its host's agent to delete its data, as the cluster's tombstone
// is for every member.
func (s *Store) memberTombstonePrefix(cluster string, created time.Time) string {
	return s.tombstoneKey(cluster, created) + "/members/"
}

// RemovedMembers lists the members removed from cluster incarnation c.
func (s *Store) RemovedMembers(ctx context.Context, c ClusterState) ([]string, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	prefix := s.memberTombstonePrefix(c.Spec.Name, c.Spec.Created)
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("read the removed members of %s: %w", c.Spec.Name, Translate(err))
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), prefix))
	}
	return out, nil
}

// MemberGone reports whether member of the cluster incarnation created at
// created was destroyed, with its cluster or alone: only then may its data
// be deleted.
func (s *Store) MemberGone(ctx context.Context, cluster string, created time.Time, member string) (bool, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.tombstoneKey(cluster, created), clientv3.WithCountOnly()),
		clientv3.OpGet(s.memberTombstonePrefix(cluster, created)+member, clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return false, fmt.Errorf("read tombstones of %s: %w", member, Translate(err))
	}
	for _, r := range resp.Responses {
		if r.GetResponseRange().Count > 0 {
			return true, nil
		}
	}
	return false, nil
}

// AddMembers writes new members of cluster c, with the spec as change
// leaves it, if neither the spec nor any of the members changed since c
// was read. A member id that was removed before loses its tombstone in the
// same transaction, so its new incarnation is not deleted for the old one.
func (s *Store) AddMembers(ctx context.Context, c ClusterState, members []fleet.MemberSpec, change func(*fleet.ClusterSpec), ev fleet.Event) error {
	spec := c.Spec
	spec.Replicas = slices.Clone(spec.Replicas)
	change(&spec)
	if err := spec.ValidateStored(); err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpPut(s.specKey(spec.Name), mustJSON(spec))}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.specKey(spec.Name)), "=", c.specRev)}
	for _, m := range members {
		if err := m.Validate(spec.Name); err != nil {
			return err
		}
		if m.Port != spec.Port {
			return fmt.Errorf("member %s: port %d is not the cluster's port %d", m.ID, m.Port, spec.Port)
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.memberSpecKey(spec.Name, m.ID)), "=", 0))
		ops = append(ops,
			clientv3.OpPut(s.memberSpecKey(spec.Name, m.ID), mustJSON(m)),
			clientv3.OpDelete(s.memberTombstonePrefix(spec.Name, spec.Created)+m.ID))
	}
	ops = append(ops, clientv3.OpPut(s.eventKey(ev), mustJSON(ev)))
	return s.shapeTxn(ctx, spec.Name, "add members to", cmps, ops)
}

// RemoveMembers takes members ids out of cluster c, with the spec as
// change leaves it: their spec, status and candidacy keys go and their
// tombstones are written, in one transaction that holds only if the spec,
// the leader key and the sync state are as c read them. The leader and
// members of the sync set (which may hold acknowledged commits alone) are
// refused before anything is written.
func (s *Store) RemoveMembers(ctx context.Context, c ClusterState, ids []string, change func(*fleet.ClusterSpec), ev fleet.Event) error {
	name := c.Spec.Name
	for _, id := range ids {
		if _, ok := c.Member(id); !ok {
			return fmt.Errorf("cluster %s has no member %s: %w", name, id, ErrNotFound)
		}
		if id == c.Leader {
			return fmt.Errorf("%s is the primary of %s: switch over to another member first (`pgfleet switchover %s`): %w", id, name, name, ErrConflict)
		}
		if sw := c.Switchover; sw != nil && (sw.To == id || sw.From == id) {
			return fmt.Errorf("%s takes part in the switchover of %s under way: retry once it is over: %w", id, name, ErrConflict)
		}
		if c.Sync != nil && slices.Contains(c.Sync.Members, id) {
			return fmt.Errorf("%s is in the sync set of %s and may hold acknowledged commits alone: turn sync mode off first (`pgfleet set %s --sync off`), or add a standby and let it stream: %w", id, name, name, ErrConflict)
		}
	}
	spec := c.Spec
	spec.Replicas = slices.Clone(spec.Replicas)
	change(&spec)
	if err := spec.ValidateStored(); err != nil {
		return err
	}
	if c.Leader == "" {
		return fmt.Errorf("cluster %s has no primary right now: a removal could take the member that holds the newest writes; retry once it has one: %w", name, ErrConflict)
	}
	// Everything the checks above read must still hold when the removal
	// is written: the spec, the leader's term (held: a key that vanished
	// has ModRevision 0 too), the sync set and the switchover.
	cmps := []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(s.specKey(name)), "=", c.specRev),
		clientv3.Compare(clientv3.CreateRevision(s.leaderKey(name)), ">", 0),
		clientv3.Compare(clientv3.ModRevision(s.leaderKey(name)), "=", c.LeaderTerm),
		clientv3.Compare(clientv3.ModRevision(s.clusterPrefix(name)+"sync"), "=", c.syncRev),
		clientv3.Compare(clientv3.ModRevision(s.clusterPrefix(name)+"switchover"), "=", c.switchoverRev),
	}
	ops := []clientv3.Op{clientv3.OpPut(s.specKey(name), mustJSON(spec))}
	now := time.Now().UTC()
	for _, id := range ids {
		ops = append(ops,
			clientv3.OpDelete(s.clusterPrefix(name)+"members/"+id+"/", clientv3.WithPrefix()),
			clientv3.OpDelete(s.clusterPrefix(name)+"candidates/"+id),
			clientv3.OpDelete(s.clusterPrefix(name)+"restart/"+id),
			clientv3.OpPut(s.memberTombstonePrefix(name, spec.Created)+id, now.Format(time.RFC3339Nano)))
	}
	ops = append(ops, clientv3.OpPut(s.eventKey(ev), mustJSON(ev)))
	return s.shapeTxn(ctx, name, "remove members from", cmps, ops)
}

func (s *Store) shapeTxn(ctx context.Context, cluster, what string, cmps []clientv3.Cmp, ops []clientv3.Op) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("%s cluster %s: %w", what, cluster, Translate(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s cluster %s: it changed meanwhile (a failover, or another change); look again and retry: %w", what, cluster, ErrConflict)
	}
	return nil
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // only the store's own types
	}
	return string(b)
}

// MarkLeaving marks members ids of cluster c as leaving (MemberSpec.Leaving):
// the primary stops counting them as synchronous standbys, so that the
// sync set lets go of them before they are removed.
func (s *Store) MarkLeaving(ctx context.Context, c ClusterState, ids []string) error {
	name := c.Spec.Name
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.specKey(name)), "=", c.specRev)}
	var ops []clientv3.Op
	for _, id := range ids {
		m, ok := c.Member(id)
		if !ok {
			return fmt.Errorf("cluster %s has no member %s: %w", name, id, ErrNotFound)
		}
		if m.Leaving {
			continue
		}
		m.Leaving = true
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.memberSpecKey(name, id)), ">", 0))
		ops = append(ops, clientv3.OpPut(s.memberSpecKey(name, id), mustJSON(m)))
	}
	if len(ops) == 0 {
		return nil
	}
	return s.shapeTxn(ctx, name, "mark members leaving in", cmps, ops)
}

// RequestRestart orders member of cluster to restart its postgres, once
// for order id (fleet.ValidRestartID), if the cluster and the member exist.
func (s *Store) RequestRestart(ctx context.Context, cluster, member, id string) error {
	if !fleet.ValidRestartID(id) {
		return fmt.Errorf("restart order %q: not a restart id", id)
	}
	return s.shapeTxn(ctx, cluster, "order a restart in", []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(s.memberSpecKey(cluster, member)), ">", 0),
	}, []clientv3.Op{clientv3.OpPut(s.clusterPrefix(cluster)+"restart/"+member, id)})
}
