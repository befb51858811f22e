package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func (s *Store) backupRequestKey(c string) string { return s.clusterPrefix(c) + "backup" }
func (s *Store) defaultStoreKey() string          { return s.prefix + "config/backup-store" }

// RequestBackup asks member req.Member to take a base backup. One runs at a
// time per cluster: ErrConflict while another is requested or running.
func (s *Store) RequestBackup(ctx context.Context, cluster string, req fleet.BackupRequest) error {
	b, _ := json.Marshal(req)
	key := s.backupRequestKey(cluster)
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.specKey(cluster)), ">", 0),
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	if err != nil {
		return fmt.Errorf("request backup of %s: %w", cluster, Translate(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("backup of %s: %w (another backup is running)", cluster, ErrConflict)
	}
	return nil
}

// FinishBackup clears the backup request id, if it is still the one
// recorded.
func (s *Store) FinishBackup(ctx context.Context, cluster, id string) error {
	key := s.backupRequestKey(cluster)
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return Translate(err)
	}
	for _, kv := range resp.Kvs {
		var req fleet.BackupRequest
		if json.Unmarshal(kv.Value, &req) == nil && req.ID == id {
			_, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).Then(clientv3.OpDelete(key)).Commit()
			return Translate(err)
		}
	}
	return nil
}

// SetDefaultBackupStore records the object store new clusters back up to
// unless they name one, if the fleet has none yet.
func (s *Store) SetDefaultBackupStore(ctx context.Context, url string) error {
	key := s.defaultStoreKey()
	ctx, cancel := timeout(ctx)
	defer cancel()
	_, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, url)).Commit()
	if err != nil {
		return fmt.Errorf("record the default backup store: %w", Translate(err))
	}
	return nil
}

// DefaultBackupStore returns the fleet's default object store URL, "" if
// none was set.
func (s *Store) DefaultBackupStore(ctx context.Context) (string, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.defaultStoreKey())
	if err != nil {
		return "", fmt.Errorf("read the default backup store: %w", Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

func (s *Store) retiredKey(c string) string { return s.prefix + "retired/" + c }

// Retired returns what is kept of a destroyed cluster that had backups;
// ErrNotFound if there is none.
func (s *Store) Retired(ctx context.Context, cluster string) (fleet.Retired, error) {
	var r fleet.Retired
	err := s.getJSON(ctx, s.retiredKey(cluster), &r)
	return r, err
}

// BackupMember chooses where a base backup of the cluster is taken: the
// streaming standby of the primary region with the least lag, else any
// streaming replica, else the primary, so that a backup loads the primary
// only when nothing else can take it.
func (c ClusterState) BackupMember() string {
	best, bestLag := "", int64(-1)
	for _, inRegion := range []bool{true, false} {
		for _, m := range c.Members {
			st, ok := c.Status[m.ID]
			if m.ID == c.Leader || !ok || st.State != fleet.StateStreaming || st.LagBytes < 0 || (m.Region == c.Spec.PrimaryRegion) != inRegion {
				continue
			}
			if best == "" || st.LagBytes < bestLag {
				best, bestLag = m.ID, st.LagBytes
			}
		}
		if best != "" {
			return best
		}
	}
	return c.Leader
}
