// Package store keeps pgfleet's state in etcd: the key layout, hosts under
// leases, cluster specs and member placement, member status, leader keys and
// events. It translates etcd's errors into the domain's.
package store

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

var errAddrInUse = syscall.EADDRINUSE

// Errors the store returns, in the domain's words.
var (
	ErrNotFound      = errors.New("not found")
	ErrClusterExists = errors.New("a cluster with that name already exists")
	ErrConflict      = errors.New("the fleet changed while the request ran; retry")
	// ErrNoQuorum means etcd did not answer in time, which for a fleet whose
	// hosts are running means fewer than half of its voting members are up.
	ErrNoQuorum = errors.New("the state store (etcd) has no quorum: fewer than half of its voting members answer; start the stopped hosts and retry")
	// ErrInvalid marks a record read from the store that fails the
	// validation the API applies to what it writes (fleet's validators).
	// Such a record is never returned as if it were good: what agents read
	// becomes directories they create and remove as root, postgresql.conf
	// lines and commands, so the store trusts no more than the API would.
	ErrInvalid = errors.New("invalid record in the state store")
)

// RequestTimeout bounds every store call, so a fleet without quorum gives an
// error instead of a hang.
const RequestTimeout = 4 * time.Second

// raftProposalDropped is the text of raft's ErrProposalDropped as it reaches
// a client.
const raftProposalDropped = "raft proposal dropped"

// Translate turns etcd's and gRPC's errors into the store's.
func Translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) {
		return fmt.Errorf("%w (%v)", ErrNoQuorum, err)
	}
	if s, ok := status.FromError(err); ok && (s.Code() == codes.DeadlineExceeded || s.Code() == codes.Unavailable ||
		// Raft drops proposals while its leader changes, and the server
		// passes the error on without a code of its own.
		s.Message() == raftProposalDropped) {
		return fmt.Errorf("%w (%v)", ErrNoQuorum, err)
	}
	return err
}

// InvalidRecordError is a record read from the store that fails validation:
// which one, and what is wrong with it. errors.Is(err, ErrInvalid) holds
// for it.
type InvalidRecordError struct {
	Key     string // the record's etcd key, prefix included
	Cluster string // the cluster the record belongs to; "" for other records (a host's)
	Err     error  // what is wrong
}

func (e *InvalidRecordError) Error() string {
	if e.Cluster == "" {
		return fmt.Sprintf("invalid record %q in the state store: %v", e.Key, e.Err)
	}
	return fmt.Sprintf("invalid record %q of cluster %s in the state store: %v; the cluster is not read until the record is corrected or deleted (its members keep running as they are; `pgfleet destroy %s` still works)", e.Key, e.Cluster, e.Err, e.Cluster)
}

// Unwrap lets errors.Is find both ErrInvalid and the validation error.
func (e *InvalidRecordError) Unwrap() []error { return []error{ErrInvalid, e.Err} }

// InvalidRecords returns every invalid record err reports: the one that
// made Cluster, Host, Leader or Secrets fail, or each one that Clusters and
// Hosts left out.
func InvalidRecords(err error) []*InvalidRecordError {
	switch e := err.(type) {
	case *InvalidRecordError:
		return []*InvalidRecordError{e}
	case interface{ Unwrap() []error }:
		var out []*InvalidRecordError
		for _, w := range e.Unwrap() {
			out = append(out, InvalidRecords(w)...)
		}
		return out
	case interface{ Unwrap() error }:
		return InvalidRecords(e.Unwrap())
	}
	return nil
}

// OnlyInvalid reports whether err, from Clusters or Hosts, says only that
// some records were invalid: the records returned with it are good to use.
func OnlyInvalid(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := err.(*InvalidRecordError); ok {
		return true
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !OnlyInvalid(e) {
				return false
			}
		}
		return true
	}
	var ie *InvalidRecordError
	return errors.As(err, &ie)
}

// Store is a client of the fleet's etcd under one key prefix.
type Store struct {
	cli    *clientv3.Client
	prefix string
	avoid  atomic.Value // string: a member's client URL the client keeps away from
	// wrote is the newest store revision this client wrote at: a View
	// answers only once its copy has reached it, so that whatever this
	// agent wrote (a leader key let go, a request served) it reads back.
	wrote atomic.Int64
}

// Open connects to etcd. prefix (default "/pgfleet/") lets several fleets,
// or parallel tests, share one etcd. tlsCfg carries the host's certificate
// and the CA etcd's certificate must come from; nil only for a plain-text
// etcd in the store's own tests.
func Open(endpoints []string, prefix string, tlsCfg *tls.Config) (*Store, error) {
	if tlsCfg == nil {
		return OpenWith(endpoints, prefix, nil)
	}
	return OpenWith(endpoints, prefix, func() *tls.Config { return tlsCfg })
}

// OpenWith is Open with the TLS configuration read again for every new
// connection (pki.Identity.ClientTLS), so that a CA rotation reaches a
// client that is already running: its next connection trusts the CAs the
// host trusts then.
func OpenWith(endpoints []string, prefix string, tlsSrc func() *tls.Config) (*Store, error) {
	var tlsCfg *tls.Config
	var dial []grpc.DialOption
	if tlsSrc != nil {
		tlsCfg = tlsSrc()
		dial = append(dial, grpc.WithTransportCredentials(tlsSource(tlsSrc)))
	}
	if prefix == "" {
		prefix = "/pgfleet/"
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		TLS:                  tlsCfg,
		DialOptions:          dial,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	s := &Store{cli: cli, prefix: prefix}
	cli.KV = writeTracker{KV: cli.KV, note: s.noteWrite}
	return s, nil
}

// FollowMembers keeps the client's endpoints equal to the client URLs of
// every voting member, now and every interval until ctx ends, so that a
// hung or cut-off member (this host's own, for a voter) costs only the
// requests that were on their way to it rather than every store call,
// leader lease renewals included. Only for the embedded store, whose
// members advertise URLs the fleet's hosts reach.
func (s *Store) FollowMembers(ctx context.Context, interval time.Duration, log *slog.Logger) {
	for {
		err := s.syncEndpoints(ctx)
		if err != nil && ctx.Err() == nil {
			log.Debug("sync etcd endpoints", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// syncEndpoints points the client at every voting member's client URL but
// the one Avoid names.
func (s *Store) syncEndpoints(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	resp, err := s.cli.MemberList(ctx)
	if err != nil {
		return fmt.Errorf("list etcd members: %w", Translate(err))
	}
	avoid, _ := s.avoid.Load().(string)
	var eps []string
	for _, m := range resp.Members {
		if m.IsLearner {
			continue
		}
		for _, u := range m.ClientURLs {
			if u != avoid {
				eps = append(eps, u)
			}
		}
	}
	if len(eps) == 0 {
		return errors.New("no etcd member to reach the store through")
	}
	s.cli.SetEndpoints(eps...)
	return nil
}

// Avoid points the client away from the member at clientURL, this host's
// own, while it restarts (Embedded.Restart), so that no store call, a
// leader lease's renewal least of all, waits on it. The returned function
// points the client at every member again.
func (s *Store) Avoid(ctx context.Context, clientURL string) (func(), error) {
	s.avoid.Store(clientURL)
	if err := s.syncEndpoints(ctx); err != nil {
		s.avoid.Store("")
		return nil, fmt.Errorf("reach the store through the other members while this one restarts: %w", err)
	}
	return func() {
		s.avoid.Store("")
		ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
		defer cancel()
		_ = s.syncEndpoints(ctx) // FollowMembers tries again
	}, nil
}

// Close closes the client.
func (s *Store) Close() error { return s.cli.Close() }

// Client exposes the etcd client to adapters in this package's family (leases).
func (s *Store) Client() *clientv3.Client { return s.cli }

// Key layout. Events live under their own prefix so that reading every
// cluster's state never reads its history.
func (s *Store) hostKey(h string) string       { return s.prefix + "hosts/" + h }
func (s *Store) clustersPrefix() string        { return s.prefix + "clusters/" }
func (s *Store) clusterPrefix(c string) string { return s.prefix + "clusters/" + c + "/" }
func (s *Store) specKey(c string) string       { return s.clusterPrefix(c) + "spec" }
func (s *Store) secretsKey(c string) string    { return s.prefix + "secrets/" + c }
func (s *Store) memberSpecKey(c, m string) string {
	return s.clusterPrefix(c) + "members/" + m + "/spec"
}
func (s *Store) memberStatusKey(c, m string) string {
	return s.clusterPrefix(c) + "members/" + m + "/status"
}
func (s *Store) leaderKey(c string) string      { return s.clusterPrefix(c) + "leader" }
func (s *Store) initializedKey(c string) string { return s.clusterPrefix(c) + "initialized" }
func (s *Store) eventsPrefix(c string) string   { return s.prefix + "events/" + c + "/" }
func (s *Store) portKey(p int) string           { return s.prefix + "ports/" + strconv.Itoa(p) }
func (s *Store) authKey() string                { return s.prefix + "auth/token-sha256" }

func timeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, RequestTimeout)
}

// Lease is an etcd lease kept alive in the background.
type Lease struct {
	ID   clientv3.LeaseID
	TTL  time.Duration
	done chan struct{}
	cli  *clientv3.Client
	stop context.CancelFunc
	note func(rev int64) // Store.noteWrite: a revoke deletes the lease's keys
}

// Done returns a channel that closes when the lease stops being refreshed:
// it expired, was revoked, or the store was unreachable for too long.
func (l *Lease) Done() <-chan struct{} { return l.done }

// Revoke ends the lease now, deleting every key bound to it.
func (l *Lease) Revoke(ctx context.Context) error {
	l.stop()
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := l.cli.Revoke(ctx, l.ID)
	if err == nil && l.note != nil {
		l.note(resp.Header.Revision)
	}
	return Translate(err)
}

// Grant creates a lease of ttl and refreshes it until ctx ends or Revoke.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (*Lease, error) {
	gctx, cancel := timeout(ctx)
	resp, err := s.cli.Grant(gctx, int64((ttl+time.Second-1)/time.Second))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", Translate(err))
	}
	kctx, stop := context.WithCancel(ctx)
	ch, err := s.cli.KeepAlive(kctx, resp.ID)
	if err != nil {
		stop()
		return nil, fmt.Errorf("keep lease alive: %w", Translate(err))
	}
	l := &Lease{ID: resp.ID, TTL: ttl, done: make(chan struct{}), cli: s.cli, stop: stop, note: s.noteWrite}
	go func() {
		defer close(l.done)
		for range ch {
		}
	}()
	return l, nil
}

// ErrLeaseLost means a lease expired or was revoked at the store.
var ErrLeaseLost = errors.New("lease lost")

// GrantManual creates a lease of ttl that nothing refreshes: its holder
// calls Renew and tracks when the store last confirmed it, which is what a
// primary needs to fence itself in time.
func (s *Store) GrantManual(ctx context.Context, ttl time.Duration) (*Lease, error) {
	gctx, cancel := timeout(ctx)
	resp, err := s.cli.Grant(gctx, int64((ttl+time.Second-1)/time.Second))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", Translate(err))
	}
	done := make(chan struct{})
	return &Lease{ID: resp.ID, TTL: ttl, done: done, cli: s.cli, stop: func() {}, note: s.noteWrite}, nil
}

// Renew refreshes a manual lease once. ErrLeaseLost when the store no
// longer has it.
func (l *Lease) Renew(ctx context.Context) error {
	resp, err := l.cli.KeepAliveOnce(ctx, l.ID)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0) {
		return ErrLeaseLost
	}
	return Translate(err)
}

// RegisterHost writes h under lease, replacing an older record of the same host.
func (s *Store) RegisterHost(ctx context.Context, h fleet.Host, lease *Lease) error {
	return s.putJSON(ctx, s.hostKey(h.Name), h, clientv3.WithLease(lease.ID))
}

// Host returns the live record of host name; ErrNotFound if there is none,
// an InvalidRecordError if the record is not a valid host's record of that
// name.
func (s *Store) Host(ctx context.Context, name string) (fleet.Host, error) {
	if err := fleet.ValidateHostName(name); err != nil {
		return fleet.Host{}, err
	}
	var h fleet.Host
	if err := s.getJSON(ctx, s.hostKey(name), &h); err != nil {
		return fleet.Host{}, err
	}
	if h.Name != name {
		return fleet.Host{}, &InvalidRecordError{Key: s.hostKey(name), Err: fmt.Errorf("the record names host %q", h.Name)}
	}
	return h, nil
}

// Hosts lists the hosts whose agents are alive. A record that is not a
// valid host's (fleet.Host.Validate, under its own name's key) is left out;
// the error then names each one (InvalidRecords lists them, and
// errors.Is(err, ErrInvalid) holds), and the valid hosts come with it, so
// that a caller may go on with them. A caller that stops at any error stops
// for every host: safe, but one bad record then affects the whole fleet.
func (s *Store) Hosts(ctx context.Context) ([]fleet.Host, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+"hosts/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", Translate(err))
	}
	return s.hostsView(resp.Kvs)
}

// hostsView decodes the records under hosts/ (see Hosts).
func (s *Store) hostsView(kvs []*mvccpb.KeyValue) ([]fleet.Host, error) {
	hosts := make([]fleet.Host, 0, len(kvs))
	var bad []error
	for _, kv := range kvs {
		h, err := decodeHost(strings.TrimPrefix(string(kv.Key), s.prefix+"hosts/"), kv.Value)
		if err != nil {
			bad = append(bad, &InvalidRecordError{Key: string(kv.Key), Err: err})
			continue
		}
		hosts = append(hosts, h)
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	return hosts, errors.Join(bad...)
}

// decodeHost decodes and checks the record of host name.
func decodeHost(name string, v []byte) (fleet.Host, error) {
	var h fleet.Host
	if err := json.Unmarshal(v, &h); err != nil {
		return fleet.Host{}, err
	}
	if err := h.Validate(); err != nil {
		return fleet.Host{}, err
	}
	if h.Name != name {
		return fleet.Host{}, fmt.Errorf("the record names host %q", h.Name)
	}
	return h, nil
}

// ClusterState is everything the store knows about one cluster.
type ClusterState struct {
	Spec    fleet.ClusterSpec
	Members []fleet.MemberSpec            // in id order
	Status  map[string]fleet.MemberStatus // by member id; missing when the host is gone
	Leader  string                        // member id holding the leader key, "" if none
	// LeaderTerm identifies the leader key's current term: the store
	// revision that last wrote it. A new term of the same member has a new
	// one.
	LeaderTerm int64
	// Timeline is the newest timeline a primary of the cluster announced
	// (RaiseTimeline); 0 before the first.
	Timeline int64
	// Initialized reports whether the cluster ever had a leader, i.e. its
	// data exists on some member.
	Initialized bool
	// Switchover is the planned leader change in progress, if any.
	Switchover *fleet.Switchover
	// Stepdown reports that the primary was asked to step down (`pgfleet
	// failover`): it fences and releases the leader key.
	Stepdown bool
	// Candidates are the members running in the current election.
	Candidates []fleet.Candidacy
	// Sync is the sync-mode state the primary published, if any.
	Sync *fleet.SyncState
	// Backup is the base backup requested or running, if any.
	Backup *fleet.BackupRequest
	// Restarts are the restart orders of members (`pgfleet restart`), by
	// member id: each restarts its postgres once per order.
	Restarts map[string]string

	specRev       int64 // mod revision of the spec, for transactions on this view
	switchoverRev int64 // mod revision of the switchover, if any
	syncRev       int64 // mod revision of the sync state, if any
}

// decode adds one key of cluster (its path below the cluster's prefix) to
// the view, after checking it as the API checks what it writes: a record
// that fails is an error, never part of the view. Keys this version does
// not know are skipped (a newer agent's), except below members/ and
// candidates/, whose names are member ids.
func (c *ClusterState) decode(cluster, rest string, v []byte, rev int64) error {
	parts := strings.Split(rest, "/")
	// The member id in a key is checked before the record: a key such as
	// members/../x/spec is reported for its id, not for its shape.
	if (parts[0] == "members" || parts[0] == "candidates") && len(parts) >= 2 {
		id := strings.Join(parts[1:], "/")
		if parts[0] == "members" {
			id = strings.Join(parts[1:max(2, len(parts)-1)], "/")
		}
		if err := fleet.ValidateMemberID(cluster, id); err != nil {
			return fmt.Errorf("key: %w", err)
		}
	}
	switch {
	case rest == "spec":
		c.specRev = rev
		if err := json.Unmarshal(v, &c.Spec); err != nil {
			return err
		}
		if c.Spec.Name != cluster {
			return fmt.Errorf("the spec names cluster %q", c.Spec.Name)
		}
		return c.Spec.ValidateStored()
	case rest == "leader":
		// The key is written only to take it (created, or re-bound to a
		// new lease by its holder), so each write is a new term.
		if err := fleet.ValidateMemberID(cluster, string(v)); err != nil {
			return fmt.Errorf("leader: %w", err)
		}
		c.Leader, c.LeaderTerm = string(v), rev
	case rest == "timeline":
		tl, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || tl < 1 {
			return fmt.Errorf("timeline %q: not a timeline number", v)
		}
		c.Timeline = tl
	case rest == "initialized":
		c.Initialized = true
	case rest == "switchover":
		var sw fleet.Switchover
		if err := json.Unmarshal(v, &sw); err != nil {
			return err
		}
		if err := sw.Validate(cluster); err != nil {
			return fmt.Errorf("switchover: %w", err)
		}
		c.switchoverRev = rev
		c.Switchover = &sw
	case rest == "stepdown":
		c.Stepdown = true
	case rest == "sync":
		var st fleet.SyncState
		if err := json.Unmarshal(v, &st); err != nil {
			return err
		}
		if err := st.Validate(cluster); err != nil {
			return fmt.Errorf("sync state: %w", err)
		}
		c.Sync, c.syncRev = &st, rev
	case strings.HasPrefix(rest, "restart/"):
		id := strings.TrimPrefix(rest, "restart/")
		if err := fleet.ValidateMemberID(cluster, id); err != nil {
			return fmt.Errorf("restart order: %w", err)
		}
		if !fleet.ValidRestartID(string(v)) {
			return fmt.Errorf("restart order of %s: %q is not a restart id", id, v)
		}
		if c.Restarts == nil {
			c.Restarts = map[string]string{}
		}
		c.Restarts[id] = string(v)
	case rest == "backup":
		var req fleet.BackupRequest
		if err := json.Unmarshal(v, &req); err != nil {
			return err
		}
		if err := req.Validate(cluster); err != nil {
			return fmt.Errorf("backup request: %w", err)
		}
		c.Backup = &req
	case len(parts) == 2 && parts[0] == "candidates":
		var cd fleet.Candidacy
		if err := json.Unmarshal(v, &cd); err != nil {
			return err
		}
		if err := cd.Validate(cluster); err != nil {
			return fmt.Errorf("candidacy: %w", err)
		}
		if cd.Member != parts[1] {
			return fmt.Errorf("candidacy of %q under the key of %q", cd.Member, parts[1])
		}
		cd.Rev = rev
		c.Candidates = append(c.Candidates, cd)
	case len(parts) == 3 && parts[0] == "members" && parts[2] == "spec":
		var m fleet.MemberSpec
		if err := json.Unmarshal(v, &m); err != nil {
			return err
		}
		if err := m.Validate(cluster); err != nil {
			return err
		}
		if m.ID != parts[1] {
			return fmt.Errorf("member %q under the key of %q", m.ID, parts[1])
		}
		c.Members = append(c.Members, m)
	case len(parts) == 3 && parts[0] == "members" && parts[2] == "status":
		var st fleet.MemberStatus
		if err := json.Unmarshal(v, &st); err != nil {
			return err
		}
		if err := st.Validate(cluster); err != nil {
			return fmt.Errorf("status: %w", err)
		}
		if st.ID != parts[1] {
			return fmt.Errorf("status of %q under the key of %q", st.ID, parts[1])
		}
		c.Status[parts[1]] = st
	case parts[0] == "members" || parts[0] == "candidates":
		return fmt.Errorf("not a key pgfleet writes: want members/ID/spec, members/ID/status or candidates/ID")
	}
	return nil
}

// Member returns the spec of member id.
func (c ClusterState) Member(id string) (fleet.MemberSpec, bool) {
	for _, m := range c.Members {
		if m.ID == id {
			return m, true
		}
	}
	return fleet.MemberSpec{}, false
}

// clusterView builds the view of cluster from its keys, as etcd returns
// them (in key order). A cluster without a spec is ErrNotFound: what is
// left of one being deleted, whatever it holds, is nobody's to act on. Any
// invalid record makes the whole view an InvalidRecordError: a cluster is
// acted on as a whole or not at all.
func (s *Store) clusterView(cluster string, kvs []*mvccpb.KeyValue) (ClusterState, error) {
	prefix := s.clusterPrefix(cluster)
	if !slices.ContainsFunc(kvs, func(kv *mvccpb.KeyValue) bool { return string(kv.Key) == prefix+"spec" }) {
		return ClusterState{}, fmt.Errorf("cluster %q: %w", cluster, ErrNotFound)
	}
	if err := fleet.ValidateClusterName(cluster); err != nil {
		return ClusterState{}, &InvalidRecordError{Key: prefix + "spec", Cluster: cluster, Err: err}
	}
	c := ClusterState{Status: map[string]fleet.MemberStatus{}}
	for _, kv := range kvs {
		if err := c.decode(cluster, strings.TrimPrefix(string(kv.Key), prefix), kv.Value, kv.ModRevision); err != nil {
			return ClusterState{}, &InvalidRecordError{Key: string(kv.Key), Cluster: cluster, Err: err}
		}
	}
	// Place puts every member on the spec's port, which the proxies
	// route to.
	for _, m := range c.Members {
		if m.Port != c.Spec.Port {
			return ClusterState{}, &InvalidRecordError{Key: s.memberSpecKey(cluster, m.ID), Cluster: cluster,
				Err: fmt.Errorf("member %s: port %d is not the cluster's port %d", m.ID, m.Port, c.Spec.Port)}
		}
	}
	sort.Slice(c.Members, func(i, j int) bool { return memberLess(c.Members[i].ID, c.Members[j].ID) })
	return c, nil
}

// clone copies the state's slices and maps, which a View hands out from a
// cache many readers share.
func (c ClusterState) clone() ClusterState {
	c.Members = slices.Clone(c.Members)
	c.Status = maps.Clone(c.Status)
	c.Candidates = slices.Clone(c.Candidates)
	c.Restarts = maps.Clone(c.Restarts)
	c.Spec.Params = maps.Clone(c.Spec.Params)
	c.Spec.Replicas = slices.Clone(c.Spec.Replicas)
	return c
}

// Clusters reads every cluster in one request, so the view is consistent.
// A cluster with an invalid record (see ErrInvalid) is left out whole; the
// error then names each such record (InvalidRecords lists them, and
// errors.Is(err, ErrInvalid) holds), and the valid clusters come with it,
// so that a caller may go on with them. A caller that stops at any error
// stops for every cluster: safe, but one bad record then affects them all.
func (s *Store) Clusters(ctx context.Context) ([]ClusterState, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.clustersPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read clusters: %w", Translate(err))
	}
	return s.clustersView(resp.Kvs)
}

// clustersView decodes the records under clusters/, in key order (see
// Clusters).
func (s *Store) clustersView(kvs []*mvccpb.KeyValue) ([]ClusterState, error) {
	// In key order, each cluster's keys are consecutive.
	var names []string
	byName := map[string][]*mvccpb.KeyValue{}
	for _, kv := range kvs {
		name, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), s.clustersPrefix()), "/")
		if _, ok := byName[name]; !ok {
			names = append(names, name)
		}
		byName[name] = append(byName[name], kv)
	}
	return gatherClusters(names, func(name string) (ClusterState, error) { return s.clusterView(name, byName[name]) })
}

// gatherClusters decodes the named clusters in name order, leaving out the
// leftovers of a cluster being deleted; the error names every invalid one
// (see Clusters).
func gatherClusters(names []string, decode func(name string) (ClusterState, error)) ([]ClusterState, error) {
	out := make([]ClusterState, 0, len(names))
	var bad []error
	for _, name := range names {
		c, err := decode(name)
		switch {
		case errors.Is(err, ErrNotFound): // leftovers of a cluster being deleted
			continue
		case err != nil:
			bad = append(bad, err)
			continue
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Name < out[j].Spec.Name })
	return out, errors.Join(bad...)
}

// memberLess orders "demo-2" before "demo-10".
func memberLess(a, b string) bool {
	ai, bi := a[strings.LastIndexByte(a, '-')+1:], b[strings.LastIndexByte(b, '-')+1:]
	an, aerr := strconv.Atoi(ai)
	bn, berr := strconv.Atoi(bi)
	if aerr == nil && berr == nil && a[:len(a)-len(ai)] == b[:len(b)-len(bi)] {
		return an < bn
	}
	return a < b
}

// Cluster reads one cluster; ErrNotFound if it does not exist, an
// InvalidRecordError (errors.Is(err, ErrInvalid)) naming the key and the
// fault if any of its records is invalid: then nothing of it is returned.
func (s *Store) Cluster(ctx context.Context, name string) (ClusterState, error) {
	if err := fleet.ValidateClusterName(name); err != nil {
		return ClusterState{}, err
	}
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.clusterPrefix(name), clientv3.WithPrefix())
	if err != nil {
		return ClusterState{}, fmt.Errorf("read cluster %s: %w", name, Translate(err))
	}
	return s.clusterView(name, resp.Kvs)
}

// UsedPorts lists the port blocks that clusters hold.
func (s *Store) UsedPorts(ctx context.Context) ([]int, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+"ports/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("read ports: %w", Translate(err))
	}
	var ports []int
	for _, kv := range resp.Kvs {
		if p, err := strconv.Atoi(path.Base(string(kv.Key))); err == nil {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// CreateCluster writes a cluster's spec, secrets, port block and member
// placement in one transaction: either all of it exists afterwards or none.
// It fails with ErrClusterExists if the name is taken and ErrConflict if the
// port block was taken meanwhile. It writes nothing that reading it back
// would refuse.
func (s *Store) CreateCluster(ctx context.Context, spec fleet.ClusterSpec, secrets fleet.Secrets, members []fleet.MemberSpec, ev fleet.Event) error {
	if err := checkNewCluster(spec, secrets, members); err != nil {
		return fmt.Errorf("create cluster %s: %w", spec.Name, err)
	}
	ops := []clientv3.Op{}
	put := func(key string, v any) {
		b, _ := json.Marshal(v)
		ops = append(ops, clientv3.OpPut(key, string(b)))
	}
	put(s.specKey(spec.Name), spec)
	put(s.secretsKey(spec.Name), secrets)
	ops = append(ops, clientv3.OpPut(s.portKey(spec.Port), spec.Name))
	for _, m := range members {
		put(s.memberSpecKey(spec.Name, m.ID), m)
	}
	put(s.eventKey(ev), ev)

	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.specKey(spec.Name)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(s.portKey(spec.Port)), "=", 0)).
		Then(ops...).
		Else(clientv3.OpGet(s.specKey(spec.Name), clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return fmt.Errorf("create cluster %s: %w", spec.Name, Translate(err))
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return fmt.Errorf("cluster %q: %w", spec.Name, ErrClusterExists)
		}
		return fmt.Errorf("create cluster %s: port %d: %w", spec.Name, spec.Port, ErrConflict)
	}
	return nil
}

// checkNewCluster applies to a new cluster the checks that decode applies
// to it once written.
func checkNewCluster(spec fleet.ClusterSpec, secrets fleet.Secrets, members []fleet.MemberSpec) error {
	if err := spec.ValidateStored(); err != nil {
		return err
	}
	if err := secrets.Validate(); err != nil {
		return err
	}
	for _, m := range members {
		if err := m.Validate(spec.Name); err != nil {
			return err
		}
		if m.Port != spec.Port {
			return fmt.Errorf("member %s: port %d is not the cluster's port %d", m.ID, m.Port, spec.Port)
		}
	}
	return nil
}

// DeleteCluster removes a cluster's desired state in one transaction. Agents
// see their members vanish, stop them and remove their data.
func (s *Store) DeleteCluster(ctx context.Context, name string) error {
	c, err := s.Cluster(ctx, name)
	if errors.Is(err, ErrInvalid) {
		// An invalid record (a spec from an older pgfleet that sets a
		// parameter reserved since, or a key written past the API) must
		// not stop its cluster's destruction: what the delete needs of the
		// spec is read without the checks that guard its use.
		c, err = s.rawSpec(ctx, name, err)
	}
	if err != nil {
		return err
	}
	var retired []byte
	if c.Spec.Backup != nil {
		// Its backups outlive it: keep what restoring them needs (the
		// store, and the credentials and key the backed-up data holds).
		sec, err := s.Secrets(ctx, name)
		if err != nil {
			return fmt.Errorf("delete cluster %s: %w", name, err)
		}
		evs, err := s.Events(ctx, name, MaxEvents-1)
		if err != nil {
			return fmt.Errorf("delete cluster %s: %w", name, err)
		}
		now := time.Now().UTC()
		evs = append(evs, fleet.Event{Time: now, Cluster: name, Kind: "destroyed",
			Message: fmt.Sprintf("cluster %s destroyed; its backups are kept: `pgfleet restore %s --into NEW --latest` makes a cluster of them", name, name)})
		retired, _ = json.Marshal(fleet.Retired{Spec: c.Spec, Secrets: sec, Deleted: now, Events: evs})
	}
	ctx, cancel := timeout(ctx)
	defer cancel()
	// The spec must be the one read above: a cluster deleted and created
	// again meanwhile holds another port block.
	ops := []clientv3.Op{
		clientv3.OpDelete(s.clusterPrefix(name), clientv3.WithPrefix()),
		clientv3.OpDelete(s.secretsKey(name)),
		clientv3.OpDelete(s.eventsPrefix(name), clientv3.WithPrefix()),
		clientv3.OpDelete(s.portKey(c.Spec.Port)),
	}
	if retired != nil {
		ops = append(ops, clientv3.OpPut(s.retiredKey(name), string(retired)))
	}
	// The tombstone is the agents' only order to delete a member's data: a
	// member missing from the store for any other reason (a restored
	// snapshot, a stray delete) keeps its data.
	tomb, _ := json.Marshal(fleet.Tombstone{Cluster: name, Created: c.Spec.Created, Deleted: time.Now().UTC()})
	ops = append(ops, clientv3.OpPut(s.tombstoneKey(name, c.Spec.Created), string(tomb)))
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.specKey(name)), "=", c.specRev)).
		Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("delete cluster %s: %w", name, Translate(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("delete cluster %s: %w", name, ErrConflict)
	}
	return nil
}

// rawSpec reads cluster name's spec for DeleteCluster only: its port,
// creation time and backup store, whatever else it holds. An undecodable
// spec gives invalid back.
func (s *Store) rawSpec(ctx context.Context, name string, invalid error) (ClusterState, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.specKey(name))
	if err != nil {
		return ClusterState{}, fmt.Errorf("read cluster %s: %w", name, Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return ClusterState{}, fmt.Errorf("cluster %q: %w", name, ErrNotFound)
	}
	var c ClusterState
	if err := json.Unmarshal(resp.Kvs[0].Value, &c.Spec); err != nil {
		return ClusterState{}, fmt.Errorf("delete cluster %s: %w (remove its keys under %s with etcdctl)", name, invalid, s.clusterPrefix(name))
	}
	c.specRev = resp.Kvs[0].ModRevision
	return c, nil
}

func (s *Store) tombstoneKey(cluster string, created time.Time) string {
	return s.prefix + "tombstones/" + cluster + "/" + strconv.FormatInt(created.UnixNano(), 10)
}

// Tombstoned reports whether the cluster named cluster that was created at
// created has been destroyed: only then may its members' data be deleted.
func (s *Store) Tombstoned(ctx context.Context, cluster string, created time.Time) (bool, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.tombstoneKey(cluster, created), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("read tombstone of %s: %w", cluster, Translate(err))
	}
	return resp.Count > 0, nil
}

// Secrets reads a cluster's credentials; an InvalidRecordError if they
// are not text that is safe in a passfile (fleet.Secrets.Validate).
func (s *Store) Secrets(ctx context.Context, cluster string) (fleet.Secrets, error) {
	var sec fleet.Secrets
	if err := s.getJSON(ctx, s.secretsKey(cluster), &sec); err != nil {
		return fleet.Secrets{}, err
	}
	return sec, nil
}

// PutStatus publishes a member's status under its host's lease, so it
// vanishes when the host does.
func (s *Store) PutStatus(ctx context.Context, cluster string, st fleet.MemberStatus, lease *Lease) error {
	// Only while the member still exists: a status written after its cluster
	// was deleted would be an orphan.
	b, _ := json.Marshal(st)
	ctx, cancel := timeout(ctx)
	defer cancel()
	_, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.memberSpecKey(cluster, st.ID)), ">", 0)).
		Then(clientv3.OpPut(s.memberStatusKey(cluster, st.ID), string(b), clientv3.WithLease(lease.ID))).
		Commit()
	if err != nil {
		return fmt.Errorf("publish status of %s: %w", st.ID, Translate(err))
	}
	return nil
}

// Leader returns the member holding a cluster's leader key, "" if none; an
// InvalidRecordError if the key holds something other than a member id of
// the cluster.
func (s *Store) Leader(ctx context.Context, cluster string) (string, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.leaderKey(cluster))
	if err != nil {
		return "", fmt.Errorf("read leader of %s: %w", cluster, Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	id := string(resp.Kvs[0].Value)
	if err := fleet.ValidateMemberID(cluster, id); err != nil {
		return "", &InvalidRecordError{Key: s.leaderKey(cluster), Cluster: cluster, Err: fmt.Errorf("leader: %w", err)}
	}
	return id, nil
}

// AcquireLeader creates the leader key for member under lease if no member
// holds it, or re-binds it to lease if member already holds it (an agent
// restart). It reports whether member holds the key afterwards. The same
// transaction marks the cluster initialized, for good.
func (s *Store) AcquireLeader(ctx context.Context, cluster, member string, lease *Lease) (bool, error) {
	key := s.leaderKey(cluster)
	ctx, cancel := timeout(ctx)
	defer cancel()
	// A new leader ends the election and any step-down request.
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.specKey(cluster)), ">", 0),
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, member, clientv3.WithLease(lease.ID)), clientv3.OpPut(s.initializedKey(cluster), member),
			clientv3.OpDelete(s.clusterPrefix(cluster)+"candidates/", clientv3.WithPrefix()),
			clientv3.OpDelete(s.clusterPrefix(cluster)+"stepdown")).
		Commit()
	if err != nil {
		return false, fmt.Errorf("acquire leader key of %s: %w", cluster, Translate(err))
	}
	if resp.Succeeded {
		return true, nil
	}
	resp, err = s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", member)).
		Then(clientv3.OpPut(key, member, clientv3.WithLease(lease.ID))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("acquire leader key of %s: %w", cluster, Translate(err))
	}
	return resp.Succeeded, nil
}

// PutCandidate publishes a member's candidacy in the election of a
// cluster that has no leader, under lease (its host's: a candidate whose
// host dies drops out).
func (s *Store) PutCandidate(ctx context.Context, cluster string, cd fleet.Candidacy, lease *Lease) error {
	b, _ := json.Marshal(cd)
	ctx, cancel := timeout(ctx)
	defer cancel()
	_, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.specKey(cluster)), ">", 0),
			clientv3.Compare(clientv3.CreateRevision(s.leaderKey(cluster)), "=", 0)).
		Then(clientv3.OpPut(s.clusterPrefix(cluster)+"candidates/"+cd.Member, string(b), clientv3.WithLease(lease.ID))).
		Commit()
	if err != nil {
		return fmt.Errorf("publish candidacy of %s: %w", cd.Member, Translate(err))
	}
	return nil
}

// RequestSwitchover records a planned leader change from sw.From, which
// must hold the leader key, to sw.To. Only one runs at a time.
func (s *Store) RequestSwitchover(ctx context.Context, cluster string, sw fleet.Switchover) error {
	b, _ := json.Marshal(sw)
	key := s.clusterPrefix(cluster) + "switchover"
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(s.leaderKey(cluster)), "=", sw.From),
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	if err != nil {
		return fmt.Errorf("request switchover of %s: %w", cluster, Translate(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("switchover of %s: %w (another switchover runs, or %s no longer leads)", cluster, ErrConflict, sw.From)
	}
	return nil
}

// UpdateSwitchover rewrites the switchover in progress (the stopped
// primary's final LSN); it does nothing if none is in progress.
func (s *Store) UpdateSwitchover(ctx context.Context, cluster string, sw fleet.Switchover) error {
	b, _ := json.Marshal(sw)
	key := s.clusterPrefix(cluster) + "switchover"
	ctx, cancel := timeout(ctx)
	defer cancel()
	_, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	return Translate(err)
}

// ClearSwitchover ends the switchover in progress.
func (s *Store) ClearSwitchover(ctx context.Context, cluster string) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	_, err := s.cli.Delete(ctx, s.clusterPrefix(cluster)+"switchover")
	return Translate(err)
}

// ClearFinishedSwitchover deletes the switchover c shows, if it is still
// the same record: the primary clears one that is over (its target leads,
// or it gave way to an election), while the proxies hold new connections
// for as long as it exists; a newer request is left alone.
func (s *Store) ClearFinishedSwitchover(ctx context.Context, c ClusterState) error {
	if c.switchoverRev == 0 {
		return nil
	}
	ctx, cancel := timeout(ctx)
	defer cancel()
	key := s.clusterPrefix(c.Spec.Name) + "switchover"
	_, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", c.switchoverRev)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("clear switchover of %s: %w", c.Spec.Name, Translate(err))
	}
	return nil
}

// PutSync publishes the sync-mode state; only the member holding the leader
// key may. Empty members delete it.
func (s *Store) PutSync(ctx context.Context, cluster string, st fleet.SyncState) error {
	key := s.clusterPrefix(cluster) + "sync"
	op := clientv3.OpDelete(key)
	if len(st.Members) > 0 {
		b, _ := json.Marshal(st)
		op = clientv3.OpPut(key, string(b))
	}
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(s.leaderKey(cluster)), "=", st.Primary)).Then(op).Commit()
	if err != nil {
		return fmt.Errorf("publish sync state of %s: %w", cluster, Translate(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("publish sync state of %s: %s does not hold the leader key", cluster, st.Primary)
	}
	return nil
}

// RaiseTimeline records that member, which must hold the leader key, runs
// the cluster's primary on timeline tl. The record only grows: a member
// whose WAL stops on an older timeline has a history the cluster left, and
// elections keep it out.
func (s *Store) RaiseTimeline(ctx context.Context, cluster, member string, tl int64) error {
	key := s.clusterPrefix(cluster) + "timeline"
	ctx, cancel := timeout(ctx)
	defer cancel()
	for {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("read timeline of %s: %w", cluster, Translate(err))
		}
		rev := int64(0)
		if len(resp.Kvs) > 0 {
			cur, _ := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
			if cur >= tl {
				return nil
			}
			rev = resp.Kvs[0].ModRevision
		}
		t, err := s.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(key), "=", rev),
			clientv3.Compare(clientv3.Value(s.leaderKey(cluster)), "=", member),
		).Then(clientv3.OpPut(key, strconv.FormatInt(tl, 10))).Else(clientv3.OpGet(s.leaderKey(cluster))).Commit()
		if err != nil {
			return fmt.Errorf("record timeline of %s: %w", cluster, Translate(err))
		}
		if t.Succeeded {
			return nil
		}
		if kvs := t.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 || string(kvs[0].Value) != member {
			return fmt.Errorf("record timeline of %s: %s does not hold the leader key", cluster, member)
		}
		// The timeline changed under us; read it again.
	}
}

// SetSyncMode changes a live cluster's replication mode.
func (s *Store) SetSyncMode(ctx context.Context, cluster, mode string) error {
	return s.UpdateSpec(ctx, cluster, "set sync mode", func(spec *fleet.ClusterSpec) error {
		spec.Sync = mode
		return nil
	})
}

// UpdateSpec changes a live cluster's spec with change, in a transaction
// that fails with ErrConflict if the spec changed meanwhile. what names the
// change in errors. A change that leaves the spec invalid is not written.
func (s *Store) UpdateSpec(ctx context.Context, cluster, what string, change func(*fleet.ClusterSpec) error) error {
	c, err := s.Cluster(ctx, cluster)
	if err != nil {
		return err
	}
	if err := change(&c.Spec); err != nil {
		return err
	}
	if c.Spec.Name != cluster {
		return fmt.Errorf("%s of %s: the cluster cannot be renamed", what, cluster)
	}
	if err := c.Spec.ValidateStored(); err != nil {
		return fmt.Errorf("%s of %s: %w", what, cluster, err)
	}
	b, _ := json.Marshal(c.Spec)
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.specKey(cluster)), "=", c.specRev)).
		Then(clientv3.OpPut(s.specKey(cluster), string(b))).
		Commit()
	if err != nil {
		return fmt.Errorf("%s of %s: %w", what, cluster, Translate(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s of %s: %w", what, cluster, ErrConflict)
	}
	return nil
}

// RequestStepdown asks a cluster's primary to fence itself and release the
// leader key, which starts an election (`pgfleet failover`).
func (s *Store) RequestStepdown(ctx context.Context, cluster string) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.leaderKey(cluster)), ">", 0)).
		Then(clientv3.OpPut(s.clusterPrefix(cluster)+"stepdown", time.Now().UTC().Format(time.RFC3339Nano))).
		Commit()
	if err != nil {
		return fmt.Errorf("request stepdown of %s: %w", cluster, Translate(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("cluster %s has no primary to step down: an election is already running", cluster)
	}
	return nil
}

func (s *Store) eventKey(ev fleet.Event) string {
	// Zero-padded nanoseconds sort in time order; the member keeps two
	// events of the same instant apart.
	return fmt.Sprintf("%s%020d-%s", s.eventsPrefix(ev.Cluster), ev.Time.UnixNano(), ev.Member)
}

// MaxEvents is how many events a cluster keeps; older ones are trimmed.
const MaxEvents = 500

// AppendEvent records ev, unless its cluster is gone: an event written
// after a delete would outlive the cluster.
func (s *Store) AppendEvent(ctx context.Context, ev fleet.Event) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := timeout(ctx)
	defer cancel()
	_, err = s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.specKey(ev.Cluster)), ">", 0)).
		Then(clientv3.OpPut(s.eventKey(ev), string(b))).
		Commit()
	if err != nil {
		return fmt.Errorf("record event: %w", Translate(err))
	}
	return nil
}

// Events returns a cluster's events, oldest first, at most limit (newest kept).
func (s *Store) Events(ctx context.Context, cluster string, limit int) ([]fleet.Event, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	resp, err := s.cli.Get(ctx, s.eventsPrefix(cluster), opts...)
	if err != nil {
		return nil, fmt.Errorf("read events of %s: %w", cluster, Translate(err))
	}
	evs := make([]fleet.Event, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		if err := json.Unmarshal(kv.Value, &evs[len(evs)-1-i]); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
	}
	return evs, nil
}

// TrimEvents deletes all but the newest MaxEvents events of a cluster.
func (s *Store) TrimEvents(ctx context.Context, cluster string) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.eventsPrefix(cluster), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(MaxEvents+1))
	if err != nil {
		return Translate(err)
	}
	if len(resp.Kvs) <= MaxEvents {
		return nil
	}
	oldestKept := string(resp.Kvs[MaxEvents-1].Key)
	_, err = s.cli.Delete(ctx, s.eventsPrefix(cluster), clientv3.WithRange(oldestKept))
	return Translate(err)
}

// InitToken stores the hash of the fleet's API token unless one is stored;
// it reports whether hash was stored by this call.
func (s *Store) InitToken(ctx context.Context, hash string) (bool, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.authKey()), "=", 0)).
		Then(clientv3.OpPut(s.authKey(), hash)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("store API token: %w", Translate(err))
	}
	return resp.Succeeded, nil
}

// FleetID returns the fleet's random id, creating it when create is set and
// there is none. Member data is marked with it, so an agent pointed at
// another store never mistakes that store's view for its own fleet's.
func (s *Store) FleetID(ctx context.Context, create bool) (string, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	key := s.prefix + "fleet-id"
	if create {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		_, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, hex.EncodeToString(b))).
			Commit()
		if err != nil {
			return "", fmt.Errorf("create fleet id: %w", Translate(err))
		}
	}
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return "", fmt.Errorf("read fleet id: %w", Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("fleet id: %w", ErrNotFound)
	}
	return string(resp.Kvs[0].Value), nil
}

// TokenHash returns the stored hash of the fleet's API token.
func (s *Store) TokenHash(ctx context.Context) (string, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.authKey())
	if err != nil {
		return "", fmt.Errorf("read API token: %w", Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("API token: %w", ErrNotFound)
	}
	return string(resp.Kvs[0].Value), nil
}

// PlacementChange is a View subscription filter that accepts a change of
// a cluster's spec or a member's placement, so agents start and stop
// supervisors at once instead of on their next look. Status, candidacy and
// leader writes, several a second, are not placement.
func PlacementChange(key string, _ *clientv3.Event) bool {
	return strings.HasSuffix(key, "/spec")
}

func (s *Store) putJSON(ctx context.Context, key string, v any, opts ...clientv3.OpOption) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	ctx, cancel := timeout(ctx)
	defer cancel()
	if _, err := s.cli.Put(ctx, key, string(b), opts...); err != nil {
		return fmt.Errorf("write %s: %w", strings.TrimPrefix(key, s.prefix), Translate(err))
	}
	return nil
}

// getJSON reads the record at key into v and, when v has a Validate
// method (fleet.Host, fleet.Secrets, fleet.Retired), checks it: an
// undecodable or invalid record is an InvalidRecordError, and v is then
// not to be used.
func (s *Store) getJSON(ctx context.Context, key string, v any) error {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read %s: %w", strings.TrimPrefix(key, s.prefix), Translate(err))
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("%s: %w", strings.TrimPrefix(key, s.prefix), ErrNotFound)
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return &InvalidRecordError{Key: key, Err: err}
	}
	if vv, ok := v.(interface{ Validate() error }); ok {
		if err := vv.Validate(); err != nil {
			return &InvalidRecordError{Key: key, Err: err}
		}
	}
	return nil
}
