package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// View is an agent's copy of the fleet's clusters and hosts, kept current
// by one watch on the store. The agent's loop, its router and every
// supervisor read from it instead of each asking the store on its own
// timer: a linearizable read costs the store's raft leader a round of
// heartbeats to a quorum, and an idle fleet made dozens a second.
//
// A read answers from the copy only while it is proven current within
// viewMaxAge: by an event (a change the store committed, which a member
// cut off from its quorum does not apply) or, while nothing changes, by a
// linearizable read of one small key every viewProgressEvery (which only a
// store with a leader and a quorum answers) whose revision the copy has
// reached. Otherwise, the watch broken, the store without quorum or the
// copy not yet made, it reads the store itself, as before there was a
// view, so a caller sees the store's own errors (ErrNoQuorum) and never a
// copy that stopped following it. (A watch's progress notification is no
// such proof: a member answers it from its own state, quorum or not.)
// Nor does it answer before the copy has reached the agent's own last
// write (Store.wrote): a member that let its leader key go must not read
// it back as its own. Writes go to the store as always; their compare-and-swap
// conditions, not reads, are what keep two members from acting on one
// stale picture.
type View struct {
	s   *Store
	log *slog.Logger

	mu sync.Mutex
	// clusters holds each cluster's records by key; hosts the records
	// under hosts/.
	clusters map[string]map[string]*mvccpb.KeyValue
	hosts    map[string]*mvccpb.KeyValue
	// decoded caches each cluster's decoded state until one of its
	// records changes: decoding JSON was most of what an idle agent did
	// once the reads stopped going to the store.
	decoded map[string]decodedCluster
	rev     int64     // the store revision the copy reflects
	current time.Time // when the copy was last proven current; zero: not following
	// pending is a confirming read's revision, which the copy had not
	// reached yet, and when that read began.
	pending struct {
		rev int64
		at  time.Time
	}
	subs []*subscriber
}

type decodedCluster struct {
	c   ClusterState
	err error
}

type subscriber struct {
	match func(key string, ev *clientv3.Event) bool
	ch    chan struct{}
}

const (
	// viewMaxAge is how long the copy counts as current after it was
	// last proven so; reads fall back to the store past it. It allows
	// one confirmation to be missed.
	viewMaxAge = 2500 * time.Millisecond
	// viewProgressEvery is how often the view confirms the copy while
	// nothing changes, and how long a confirming read may take.
	viewProgressEvery = time.Second
)

// StartView starts following the store; the view stops when ctx ends.
// Until its first copy is made, reads go to the store.
func (s *Store) StartView(ctx context.Context, log *slog.Logger) *View {
	v := &View{s: s, log: log}
	go v.run(ctx)
	return v
}

// Subscribe returns a channel that receives a value (at most one pending)
// whenever a key under clusters/ or hosts/ changes and match, if not nil,
// accepts the change, and whenever the copy is made again from scratch.
// The subscription ends with ctx.
func (v *View) Subscribe(ctx context.Context, match func(key string, ev *clientv3.Event) bool) <-chan struct{} {
	ch := make(chan struct{}, 1)
	sub := &subscriber{match: match, ch: ch}
	v.mu.Lock()
	v.subs = append(v.subs, sub)
	v.mu.Unlock()
	context.AfterFunc(ctx, func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		v.subs = slices.DeleteFunc(v.subs, func(s *subscriber) bool { return s == sub })
	})
	return ch
}

// SubscribeCluster subscribes to the changes of cluster name that its
// members' loops act on: what RoutingChanges accepts (its spec and
// placement, leader key, switchover, step-down, sync set, restart and
// backup orders, a member changing role, state or health) within the
// cluster. Lag and candidacies, which the loops' ticks pick up, do not
// count.
func (v *View) SubscribeCluster(ctx context.Context, name string) <-chan struct{} {
	prefix := v.s.clusterPrefix(name)
	changed := RoutingChanges()
	return v.Subscribe(ctx, func(key string, ev *clientv3.Event) bool {
		return strings.HasPrefix(key, prefix) && changed(key, ev)
	})
}

// Current reports whether reads answer from the copy now.
func (v *View) Current() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.currentLocked()
}

func (v *View) currentLocked() bool {
	return !v.current.IsZero() && time.Since(v.current) < viewMaxAge && v.rev >= v.s.wrote.Load()
}

// decode returns cluster name's state from the copy, decoding it only when
// its records changed; the caller holds mu and has checked the copy is
// current. It hands out a copy of the cached state's slices and maps.
func (v *View) decode(name string) (ClusterState, error) {
	d, ok := v.decoded[name]
	if !ok {
		recs := v.clusters[name]
		kvs := make([]*mvccpb.KeyValue, 0, len(recs))
		for _, kv := range recs {
			kvs = append(kvs, kv)
		}
		sort.Slice(kvs, func(i, j int) bool { return string(kvs[i].Key) < string(kvs[j].Key) })
		d.c, d.err = v.s.clusterView(name, kvs)
		v.decoded[name] = d
	}
	return d.c.clone(), d.err
}

// Cluster is Store.Cluster, from the copy while it is current.
func (v *View) Cluster(ctx context.Context, name string) (ClusterState, error) {
	if err := fleet.ValidateClusterName(name); err != nil {
		return ClusterState{}, err
	}
	v.mu.Lock()
	if v.currentLocked() {
		defer v.mu.Unlock()
		return v.decode(name)
	}
	v.mu.Unlock()
	return v.s.Cluster(ctx, name)
}

// Clusters is Store.Clusters, from the copy while it is current.
func (v *View) Clusters(ctx context.Context) ([]ClusterState, error) {
	v.mu.Lock()
	if !v.currentLocked() {
		v.mu.Unlock()
		return v.s.Clusters(ctx)
	}
	defer v.mu.Unlock()
	names := make([]string, 0, len(v.clusters))
	for name := range v.clusters {
		names = append(names, name)
	}
	return gatherClusters(names, v.decode)
}

// Hosts is Store.Hosts, from the copy while it is current.
func (v *View) Hosts(ctx context.Context) ([]fleet.Host, error) {
	v.mu.Lock()
	if !v.currentLocked() {
		v.mu.Unlock()
		return v.s.Hosts(ctx)
	}
	kvs := make([]*mvccpb.KeyValue, 0, len(v.hosts))
	for _, kv := range v.hosts {
		kvs = append(kvs, kv)
	}
	v.mu.Unlock()
	return v.s.hostsView(kvs)
}

// Host is Store.Host, from the copy while it is current.
func (v *View) Host(ctx context.Context, name string) (fleet.Host, error) {
	if err := fleet.ValidateHostName(name); err != nil {
		return fleet.Host{}, err
	}
	v.mu.Lock()
	kv, have := v.hosts[v.s.hostKey(name)]
	ok := v.currentLocked()
	v.mu.Unlock()
	if !ok {
		return v.s.Host(ctx, name)
	}
	if !have {
		return fleet.Host{}, fmt.Errorf("%s: %w", strings.TrimPrefix(v.s.hostKey(name), v.s.prefix), ErrNotFound)
	}
	h, err := decodeHost(name, kv.Value)
	if err != nil {
		return fleet.Host{}, &InvalidRecordError{Key: string(kv.Key), Err: err}
	}
	return h, nil
}

// run keeps the copy: a read of everything at one revision, then a watch
// from the next; again from the start whenever the watch breaks.
func (v *View) run(ctx context.Context) {
	for ctx.Err() == nil {
		err := v.follow(ctx)
		v.mu.Lock()
		v.current = time.Time{}
		v.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		v.log.Debug("store view: following again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// follow makes the copy and applies the watch's changes until it breaks.
func (v *View) follow(ctx context.Context) error {
	if err := v.load(ctx); err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	v.mu.Lock()
	from := v.rev + 1
	v.mu.Unlock()
	wch := v.s.cli.Watch(wctx, v.s.prefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	ask := time.NewTicker(viewProgressEvery)
	defer ask.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ask.C:
			v.mu.Lock()
			quiet := time.Since(v.current) >= viewProgressEvery
			v.mu.Unlock()
			if quiet {
				v.confirm(ctx)
			}
		case resp, ok := <-wch:
			if !ok {
				return errors.New("watch closed")
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch: %w", Translate(err))
			}
			v.apply(resp)
		}
	}
}

// confirm proves the copy current while nothing changes: a linearizable
// read of one small key returns the store's revision; once the copy has
// reached it, the copy was current when the read began. A read that fails
// proves nothing, and the copy ages.
func (v *View) confirm(ctx context.Context) {
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, viewProgressEvery)
	defer cancel()
	resp, err := v.s.cli.Get(cctx, v.s.prefix+"fleet-id", clientv3.WithCountOnly())
	if err != nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rev >= resp.Header.Revision {
		v.current = start
		return
	}
	v.pending.rev, v.pending.at = resp.Header.Revision, start
}

// load reads clusters/ and hosts/ at one revision into a fresh copy.
func (v *View) load(ctx context.Context) error {
	gctx, cancel := timeout(ctx)
	defer cancel()
	cs, err := v.s.cli.Get(gctx, v.s.clustersPrefix(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read clusters: %w", Translate(err))
	}
	rev := cs.Header.Revision
	hs, err := v.s.cli.Get(gctx, v.s.prefix+"hosts/", clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("read hosts: %w", Translate(err))
	}
	v.mu.Lock()
	v.clusters, v.hosts, v.decoded = map[string]map[string]*mvccpb.KeyValue{}, map[string]*mvccpb.KeyValue{}, map[string]decodedCluster{}
	for _, kv := range append(cs.Kvs, hs.Kvs...) {
		v.put(kv)
	}
	v.rev, v.current, v.pending.rev = rev, time.Now(), 0
	subs := v.subs
	v.mu.Unlock()
	for _, s := range subs {
		notify(s.ch)
	}
	return nil
}

// apply brings the copy to a watch response's revision and wakes the
// subscribers whose keys changed.
func (v *View) apply(resp clientv3.WatchResponse) {
	clusters, hosts := v.s.clustersPrefix(), v.s.prefix+"hosts/"
	v.mu.Lock()
	defer v.mu.Unlock()
	wake := make([]bool, len(v.subs))
	for _, ev := range resp.Events {
		key := string(ev.Kv.Key)
		if !strings.HasPrefix(key, clusters) && !strings.HasPrefix(key, hosts) {
			continue
		}
		if ev.Type == clientv3.EventTypeDelete {
			v.remove(key)
		} else {
			v.put(ev.Kv)
		}
		for i, s := range v.subs {
			wake[i] = wake[i] || s.match == nil || s.match(key, ev)
		}
	}
	v.rev = max(v.rev, resp.Header.Revision)
	if len(resp.Events) > 0 {
		v.current = time.Now()
	}
	if v.pending.rev != 0 && v.rev >= v.pending.rev {
		if v.pending.at.After(v.current) {
			v.current = v.pending.at
		}
		v.pending.rev = 0
	}
	for i, s := range v.subs {
		if wake[i] {
			notify(s.ch)
		}
	}
}

// put and remove change one record of the copy; the caller holds mu.
func (v *View) put(kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	if name, ok := v.clusterOf(key); ok {
		if v.clusters[name] == nil {
			v.clusters[name] = map[string]*mvccpb.KeyValue{}
		}
		v.clusters[name][key] = kv
		delete(v.decoded, name)
	} else if strings.HasPrefix(key, v.s.prefix+"hosts/") {
		v.hosts[key] = kv
	}
}

func (v *View) remove(key string) {
	if name, ok := v.clusterOf(key); ok {
		delete(v.clusters[name], key)
		if len(v.clusters[name]) == 0 {
			delete(v.clusters, name)
		}
		delete(v.decoded, name)
	} else {
		delete(v.hosts, key)
	}
}

// clusterOf names the cluster a key under clusters/ belongs to.
func (v *View) clusterOf(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, v.s.clustersPrefix())
	if !ok {
		return "", false
	}
	name, _, _ := strings.Cut(rest, "/")
	return name, true
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
