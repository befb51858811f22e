package console

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// Topics name what a page shows, so that a change wakes only the pages
// that show it. Per cluster: topic + "/" + name.
const (
	topicHosts    = "hosts"
	topicRTT      = "rtt"
	topicClusters = "clusters"
	topicCluster  = "cluster"
	topicEvents   = "events"
	topicBackups  = "backups"
)

// flushEvery bounds how often the hub wakes the open pages: a burst of
// writes (an election, a clone's progress) becomes one update.
const flushEvery = 500 * time.Millisecond

// hub is the agent's one watch of the store for every open console: it
// turns the changes into topics, wakes the pages subscribed to them, and
// keeps the set of signed-out sessions. Pages then read through the API,
// sharing one read per change (see cache), so ten open consoles cost the
// store no more than one.
type hub struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger

	start sync.Once
	ready chan struct{} // closed once the signed-out sessions are loaded

	mu        sync.Mutex
	gens      map[string]uint64 // per topic, bumped by every change to it
	pending   map[string]bool   // changed since the last flush
	flushing  bool
	lastFlush time.Time
	subs      map[*subscription]struct{}
	revoked   map[string]bool        // session ids signed out
	shapes    map[string]statusShape // last status seen per key, by what a page shows of it
}

// subscription is one open page's interest.
type subscription struct {
	c      chan struct{} // receives when a topic changed; never blocks the hub
	topics map[string]bool
}

// statusShape is what pages show of a member's status: a status write that
// changes none of it (every second, for its timestamp) wakes nobody.
type statusShape struct {
	Role     fleet.Role
	State    fleet.State
	Healthy  bool
	Lag      int64
	Timeline int64
	Progress string
	Message  string
}

func newHub(cli *clientv3.Client, prefix string, log *slog.Logger) *hub {
	return &hub{
		cli: cli, prefix: prefix, log: log, ready: make(chan struct{}),
		gens: map[string]uint64{}, pending: map[string]bool{}, subs: map[*subscription]struct{}{},
		revoked: map[string]bool{}, shapes: map[string]statusShape{},
	}
}

// run starts the watch on first use; it ends when the agent closes its
// store client.
func (h *hub) run() {
	h.start.Do(func() { go h.loop(h.cli.Ctx()) })
}

// waitReady waits until the signed-out sessions are known, or ctx ends.
func (h *hub) waitReady(ctx context.Context) bool {
	h.run()
	select {
	case <-h.ready:
		return true
	case <-ctx.Done():
		return false
	}
}

func (h *hub) loop(ctx context.Context) {
	var rev int64
	readyOnce := sync.OnceFunc(func() { close(h.ready) })
	for ctx.Err() == nil {
		if rev == 0 {
			r, err := h.load(ctx)
			if err != nil {
				h.log.Warn("console: read signed-out sessions", "err", err)
				sleep(ctx, time.Second)
				continue
			}
			rev = r
			readyOnce()
		}
		wch := h.cli.Watch(clientv3.WithRequireLeader(ctx), h.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for resp := range wch {
			if resp.CompactRevision != 0 {
				rev = 0 // missed changes: read the sessions again
				break
			}
			if resp.Err() != nil {
				break
			}
			h.apply(resp.Events)
			rev = resp.Header.Revision
		}
		// The next watch resumes after the last revision seen, so a
		// break (a leader change ends a watch that requires one) misses
		// nothing and wakes no page; after a compaction, load marks
		// every topic changed.
		sleep(ctx, time.Second)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// load reads the signed-out sessions and answers the store's revision.
func (h *hub) load(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := h.cli.Get(ctx, h.prefix+revokedPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, err
	}
	h.mu.Lock()
	h.revoked = map[string]bool{}
	for _, kv := range resp.Kvs {
		h.revoked[strings.TrimPrefix(string(kv.Key), h.prefix+revokedPrefix)] = true
	}
	h.mu.Unlock()
	h.markAll()
	return resp.Header.Revision, nil
}

// revokedPrefix holds one key per signed-out session, under a lease that
// ends when the session would have.
const revokedPrefix = "console/signed-out/"

// isRevoked reports whether session id was signed out.
func (h *hub) isRevoked(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.revoked[id]
}

// revoke records locally that session id was signed out, before the
// watch brings the store's record of it.
func (h *hub) revoke(id string) {
	h.mu.Lock()
	h.revoked[id] = true
	h.mu.Unlock()
}

func (h *hub) apply(evs []*clientv3.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range evs {
		rest, ok := strings.CutPrefix(string(e.Kv.Key), h.prefix)
		if !ok {
			continue
		}
		del := e.Type == clientv3.EventTypeDelete
		kind, rest, _ := strings.Cut(rest, "/")
		switch kind {
		case "hosts":
			h.mark(topicHosts, topicClusters)
		case "rtt":
			h.mark(topicRTT)
		case "events":
			name, _, _ := strings.Cut(rest, "/")
			h.mark(topicEvents + "/" + name)
		case "console":
			if id, ok := strings.CutPrefix(rest, "signed-out/"); ok && !del {
				h.revoked[id] = true
			} else if ok {
				delete(h.revoked, id)
			}
		case "clusters":
			name, sub, _ := strings.Cut(rest, "/")
			switch {
			case strings.HasPrefix(sub, "candidates/"):
				// An election's progress shows as the leader key's.
				continue
			case strings.HasPrefix(sub, "members/") && strings.HasSuffix(sub, "/status"):
				key := string(e.Kv.Key)
				if del {
					delete(h.shapes, key)
				} else {
					var st fleet.MemberStatus
					if json.Unmarshal(e.Kv.Value, &st) != nil {
						continue
					}
					now := statusShape{st.Role, st.State, st.Healthy, st.LagBytes, st.Timeline, st.Progress, st.Message}
					if prev, ok := h.shapes[key]; ok && prev == now {
						continue
					}
					h.shapes[key] = now
				}
				h.mark(topicClusters, topicCluster+"/"+name)
			case sub == "backup":
				h.mark(topicClusters, topicCluster+"/"+name, topicBackups+"/"+name)
			default:
				// Spec, placement, leader, sync set, switchover: the
				// hosts page counts members too.
				h.mark(topicClusters, topicCluster+"/"+name, topicHosts)
			}
		}
	}
	h.scheduleFlush()
}

// mark notes topics as changed; h.mu is held.
func (h *hub) mark(topics ...string) {
	for _, t := range topics {
		h.pending[t] = true
	}
}

// wake wakes the pages subscribed to topics, as a change in the store
// does: for what changes outside the store, such as a job's progress.
func (h *hub) wake(topics ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mark(topics...)
	h.scheduleFlush()
}

// markAll wakes every page, after a gap in what the hub saw.
func (h *hub) markAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		for t := range s.topics {
			h.pending[t] = true
		}
	}
	for t := range h.gens {
		h.pending[t] = true
	}
	h.scheduleFlush()
}

// scheduleFlush flushes the pending topics soon, at most every flushEvery;
// h.mu is held.
func (h *hub) scheduleFlush() {
	if h.flushing || len(h.pending) == 0 {
		return
	}
	h.flushing = true
	wait := max(50*time.Millisecond, time.Until(h.lastFlush.Add(flushEvery)))
	time.AfterFunc(wait, h.flush)
}

func (h *hub) flush() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.flushing, h.lastFlush = false, time.Now()
	for t := range h.pending {
		h.gens[t]++
	}
	for s := range h.subs {
		for t := range h.pending {
			if s.topics[t] {
				select {
				case s.c <- struct{}{}:
				default:
				}
				break
			}
		}
	}
	clear(h.pending)
}

// subscribe returns a subscription to topics; cancel it when the page
// closes.
func (h *hub) subscribe(topics ...string) (*subscription, func()) {
	h.run()
	s := &subscription{c: make(chan struct{}, 1), topics: map[string]bool{}}
	for _, t := range topics {
		s.topics[t] = true
	}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s, func() {
		h.mu.Lock()
		delete(h.subs, s)
		h.mu.Unlock()
	}
}

// generation identifies the state of topics as the hub last saw them: a
// read cached under one generation is stale under another.
func (h *hub) generation(topics ...string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var g uint64
	for _, t := range topics {
		g = g*1_000_003 + h.gens[t]
	}
	return g
}

// touch marks topics changed at once, for a change this console made: the
// page that follows must not be served a read from before it, and the
// watch brings the change a moment later.
func (h *hub) touch(topics ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range topics {
		h.gens[t]++
	}
}
