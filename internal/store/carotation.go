package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/pki"
)

// A CA rotation (pki.Rotation) lives under ca/rotation:
//
//	ca/rotation             the record: its phase, the old and the new CA
//	ca/rotation-acks/<host> each host's report of the phase it is through
//	ca/rotation-keys/<host> the new CA's key, sealed to a key holder's own key
//
// All of it goes when the rotation ends, in one delete of the prefix.
func (s *Store) rotationKey() string            { return s.prefix + "ca/rotation" }
func (s *Store) rotationAckKey(h string) string { return s.prefix + "ca/rotation-acks/" + h }
func (s *Store) rotationSealKey(h string) string {
	return s.prefix + "ca/rotation-keys/" + h
}

// CARotation reads the rotation under way, with its revision for
// UpdateCARotation; ErrNotFound when there is none.
func (s *Store) CARotation(ctx context.Context) (pki.Rotation, int64, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.rotationKey())
	if err != nil {
		return pki.Rotation{}, 0, fmt.Errorf("read the CA rotation: %w", Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return pki.Rotation{}, 0, fmt.Errorf("CA rotation: %w", ErrNotFound)
	}
	var r pki.Rotation
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return pki.Rotation{}, 0, &InvalidRecordError{Key: s.rotationKey(), Err: err}
	}
	if err := validRotation(r); err != nil {
		return pki.Rotation{}, 0, &InvalidRecordError{Key: s.rotationKey(), Err: err}
	}
	return r, resp.Kvs[0].ModRevision, nil
}

// validRotation checks what a host acts on: the names it compares and the
// phase it follows.
func validRotation(r pki.Rotation) error {
	switch r.Phase {
	case pki.PhaseRequested, pki.PhaseTrust, pki.PhaseReissue, pki.PhaseRetire, pki.PhaseMembers:
	default:
		return fmt.Errorf("unknown phase %q", r.Phase)
	}
	if r.ID == "" {
		return fmt.Errorf("no rotation ID")
	}
	for _, h := range append([]string{r.Coordinator}, r.Exclude...) {
		if h == "" {
			continue
		}
		if err := fleet.ValidateHostName(h); err != nil {
			return err
		}
	}
	if r.Phase != pki.PhaseRequested && (len(r.NewCA) == 0 || len(r.OldCA) == 0) {
		return fmt.Errorf("phase %s without its certificates", r.Phase)
	}
	return nil
}

// StartCARotation records a requested rotation unless one is under way
// (ErrConflict, with the phase it is in).
func (s *Store) StartCARotation(ctx context.Context, r pki.Rotation) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	b, _ := json.Marshal(r)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.rotationKey()), "=", 0)).
		Then(clientv3.OpPut(s.rotationKey(), string(b))).
		Commit()
	if err != nil {
		return fmt.Errorf("start the CA rotation: %w", Translate(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("a CA rotation is already under way (see `pgfleet ca rotate --status`): %w", ErrConflict)
	}
	return nil
}

// UpdateCARotation writes r if the record is still at revision prev, and
// reports whether it did: two key holders that both try to take the
// rotation on settle on one.
func (s *Store) UpdateCARotation(ctx context.Context, r pki.Rotation, prev int64) (bool, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	b, _ := json.Marshal(r)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.rotationKey()), "=", prev)).
		Then(clientv3.OpPut(s.rotationKey(), string(b))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("update the CA rotation: %w", Translate(err))
	}
	return resp.Succeeded, nil
}

// FinishCARotation removes rotation id's record, reports and sealed keys,
// and every join token.
func (s *Store) FinishCARotation(ctx context.Context, id string) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	cur, err := s.cli.Get(ctx, s.rotationKey())
	if err != nil {
		return fmt.Errorf("finish the CA rotation: %w", Translate(err))
	}
	if len(cur.Kvs) == 0 {
		return nil
	}
	var r pki.Rotation
	if json.Unmarshal(cur.Kvs[0].Value, &r) == nil && r.ID != id {
		return fmt.Errorf("finish CA rotation %s: rotation %s is under way: %w", id, r.ID, ErrConflict)
	}
	// Join tokens go too: a host the rotation left behind could write one
	// while it could still reach the store.
	_, err = s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.rotationKey()), "=", cur.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(s.rotationKey(), clientv3.WithPrefix()), clientv3.OpDelete(s.joinTokenKey(""), clientv3.WithPrefix())).
		Commit()
	if err != nil {
		return fmt.Errorf("finish the CA rotation: %w", Translate(err))
	}
	return nil
}

// PutRotationAck records that host is through a phase.
func (s *Store) PutRotationAck(ctx context.Context, host string, a pki.RotationAck) error {
	return s.putJSON(ctx, s.rotationAckKey(host), a)
}

// RotationAcks returns every host's report, by host name. A report under
// a name that is not a valid host name is left out.
func (s *Store) RotationAcks(ctx context.Context) (map[string]pki.RotationAck, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	prefix := s.rotationAckKey("")
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read the CA rotation's reports: %w", Translate(err))
	}
	out := map[string]pki.RotationAck{}
	for _, kv := range resp.Kvs {
		h := strings.TrimPrefix(string(kv.Key), prefix)
		var a pki.RotationAck
		if fleet.ValidateHostName(h) != nil || json.Unmarshal(kv.Value, &a) != nil {
			continue
		}
		out[h] = a
	}
	return out, nil
}

// PutSealedCAKey stores the new CA's key sealed to host's key.
func (s *Store) PutSealedCAKey(ctx context.Context, host string, k pki.SealedKey) error {
	return s.putJSON(ctx, s.rotationSealKey(host), k)
}

// SealedCAKey reads the new CA's key sealed to host's key; ErrNotFound
// until the coordinator sealed it.
func (s *Store) SealedCAKey(ctx context.Context, host string) (pki.SealedKey, error) {
	var k pki.SealedKey
	if err := s.getJSON(ctx, s.rotationSealKey(host), &k); err != nil {
		return pki.SealedKey{}, err
	}
	return k, nil
}

// WatchCARotation wakes the receiver whenever anything of a CA rotation
// changes. The channel closes when the watch breaks.
func (s *Store) WatchCARotation(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.rotationKey(), clientv3.WithPrefix())
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out
}

// EtcdVoters returns the names of the store's voting members: the hosts
// that hold the CA's key on a fleet with embedded etcd.
func (s *Store) EtcdVoters(ctx context.Context) ([]string, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", Translate(err))
	}
	var out []string
	for _, m := range resp.Members {
		if !m.IsLearner && m.Name != "" {
			out = append(out, m.Name)
		}
	}
	return out, nil
}

// ReplaceCA replaces the fleet's CA kept in an existing etcd (InitCA) at
// the end of a rotation.
func (s *Store) ReplaceCA(ctx context.Context, certPEM, keyPEM []byte) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	_, err := s.cli.Txn(ctx).Then(
		clientv3.OpPut(s.prefix+"ca/cert", string(certPEM)),
		clientv3.OpPut(s.prefix+"ca/key", string(keyPEM)),
	).Commit()
	if err != nil {
		return fmt.Errorf("store the fleet's new CA: %w", Translate(err))
	}
	return nil
}
