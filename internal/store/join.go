package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// JoinTokenRecord is what the fleet keeps of a join token: never its
// secret, only the secret's hash.
type JoinTokenRecord struct {
	SecretHash string    `json:"secret_hash"`
	Expires    time.Time `json:"expires"`
}

func (s *Store) joinTokenKey(id string) string { return s.prefix + "join-tokens/" + id }

// PutJoinToken records a join token until it expires: the key lives under a
// lease of the token's lifetime, so etcd itself forgets it then.
func (s *Store) PutJoinToken(ctx context.Context, id string, rec JoinTokenRecord) error {
	ttl := time.Until(rec.Expires)
	if ttl < time.Second {
		return fmt.Errorf("join token %s: expires in the past", id)
	}
	ctx, cancel := timeout(ctx)
	defer cancel()
	l, err := s.cli.Grant(ctx, int64((ttl+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("record join token: %w", Translate(err))
	}
	b, _ := json.Marshal(rec)
	if _, err := s.cli.Put(ctx, s.joinTokenKey(id), string(b), clientv3.WithLease(l.ID)); err != nil {
		return fmt.Errorf("record join token: %w", Translate(err))
	}
	return nil
}

// JoinToken returns the record of join token id; ErrNotFound when there is
// none (never made, or expired).
func (s *Store) JoinToken(ctx context.Context, id string) (JoinTokenRecord, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.joinTokenKey(id))
	if err != nil {
		return JoinTokenRecord{}, fmt.Errorf("read join token: %w", Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return JoinTokenRecord{}, fmt.Errorf("join token %s: %w", id, ErrNotFound)
	}
	var rec JoinTokenRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return JoinTokenRecord{}, fmt.Errorf("join token %s: %w", id, err)
	}
	return rec, nil
}

// EtcdMembers returns how many voting members the fleet's etcd has and
// the client URLs of all of its members, which a joining host needs to
// reach the store.
func (s *Store) EtcdMembers(ctx context.Context) (voters int, clientURLs []string, err error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.MemberList(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("list etcd members: %w", Translate(err))
	}
	for _, m := range resp.Members {
		if !m.IsLearner {
			voters++
		}
		clientURLs = append(clientURLs, m.ClientURLs...)
	}
	return voters, clientURLs, nil
}

// InitCA stores the fleet's CA (certificate and key, PEM) unless one is
// stored, and returns the one that is: on an existing etcd, which its own
// TLS protects, that is how every agent gets the same CA.
func (s *Store) InitCA(ctx context.Context, certPEM, keyPEM []byte) ([]byte, []byte, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	certKey, keyKey := s.prefix+"ca/cert", s.prefix+"ca/key"
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(certKey), "=", 0)).
		Then(clientv3.OpPut(certKey, string(certPEM)), clientv3.OpPut(keyKey, string(keyPEM))).
		Else(clientv3.OpGet(certKey), clientv3.OpGet(keyKey)).
		Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("store the fleet's CA: %w", Translate(err))
	}
	if resp.Succeeded {
		return certPEM, keyPEM, nil
	}
	c, k := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if len(c) == 0 || len(k) == 0 {
		return nil, nil, fmt.Errorf("the fleet's CA in the store is incomplete (%sca/): %w", s.prefix, ErrConflict)
	}
	return c[0].Value, k[0].Value, nil
}

// PostgresCert is the certificate every member of the fleet serves, with its
// key. Every host's proxy passes its clients' TLS through to the member it
// routes to, so a client that verifies the server expects the address of
// whichever host it dialled: one certificate names them all.
type PostgresCert struct {
	CertPEM  []byte `json:"cert"`
	KeyPEM   []byte `json:"key"`
	Revision int64  `json:"-"`
}

func (s *Store) postgresCertKey() string { return s.prefix + "tls/postgres" }

// PostgresCert reads the members' certificate; ErrNotFound before the
// first one is made.
func (s *Store) PostgresCert(ctx context.Context) (PostgresCert, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.postgresCertKey())
	if err != nil {
		return PostgresCert{}, fmt.Errorf("read the members' certificate: %w", Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return PostgresCert{}, fmt.Errorf("the members' certificate: %w", ErrNotFound)
	}
	var c PostgresCert
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return PostgresCert{}, fmt.Errorf("the members' certificate: %w", err)
	}
	c.Revision = resp.Kvs[0].ModRevision
	return c, nil
}

// ReplacePostgresCert stores c if the stored certificate is still the one
// at revision prev (0: none), and reports whether it did: two hosts that
// both renew it settle on one.
func (s *Store) ReplacePostgresCert(ctx context.Context, c PostgresCert, prev int64) (bool, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	b, _ := json.Marshal(c)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.postgresCertKey()), "=", prev)).
		Then(clientv3.OpPut(s.postgresCertKey(), string(b))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("store the members' certificate: %w", Translate(err))
	}
	return resp.Succeeded, nil
}
