package store

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// RotateToken replaces the hash of the fleet's API token if it is still
// old: the old token stops working at once, on every agent within the
// API's cache time.
func (s *Store) RotateToken(ctx context.Context, old, hash string) (bool, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(s.authKey()), "=", old)).
		Then(clientv3.OpPut(s.authKey(), hash)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("rotate the API token: %w", Translate(err))
	}
	return resp.Succeeded, nil
}

func (s *Store) readOnlyKey(id string) string { return s.prefix + "auth/read-only/" + id }

// PutReadOnlyToken records the hash of a read-only API token named id.
func (s *Store) PutReadOnlyToken(ctx context.Context, id, hash string) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	if _, err := s.cli.Put(ctx, s.readOnlyKey(id), hash); err != nil {
		return fmt.Errorf("record a read-only token: %w", Translate(err))
	}
	return nil
}

// ReadOnlyTokenHash returns the hash of read-only token id; ErrNotFound if
// there is none.
func (s *Store) ReadOnlyTokenHash(ctx context.Context, id string) (string, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.readOnlyKey(id))
	if err != nil {
		return "", fmt.Errorf("read a read-only token: %w", Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("read-only token %s: %w", id, ErrNotFound)
	}
	return string(resp.Kvs[0].Value), nil
}

// ReadOnlyTokens returns the IDs of the read-only tokens, sorted.
func (s *Store) ReadOnlyTokens(ctx context.Context) ([]string, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	prefix := s.readOnlyKey("")
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list read-only tokens: %w", Translate(err))
	}
	ids := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		ids = append(ids, strings.TrimPrefix(string(kv.Key), prefix))
	}
	return ids, nil
}

// DeleteReadOnlyToken revokes read-only token id: the next request that
// carries it is refused. ErrNotFound if there is none.
func (s *Store) DeleteReadOnlyToken(ctx context.Context, id string) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Delete(ctx, s.readOnlyKey(id))
	if err != nil {
		return fmt.Errorf("revoke read-only token %s: %w", id, Translate(err))
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("read-only token %s: %w", id, ErrNotFound)
	}
	return nil
}
