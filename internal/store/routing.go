package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func (s *Store) rttKey(h string) string { return s.prefix + "rtt/" + h }

// PutRTT publishes the round trips host measured to the others, under its
// host lease, so they vanish with it.
func (s *Store) PutRTT(ctx context.Context, host string, rtt map[string]time.Duration, lease *Lease) error {
	us := make(map[string]int64, len(rtt))
	for h, d := range rtt {
		us[h] = d.Microseconds()
	}
	return s.putJSON(ctx, s.rttKey(host), us, clientv3.WithLease(lease.ID))
}

// RTTs returns every host's published round trips: from host, to host.
func (s *Store) RTTs(ctx context.Context) (map[string]map[string]time.Duration, error) {
	ctx, cancel := timeout(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+"rtt/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read round trips: %w", Translate(err))
	}
	out := map[string]map[string]time.Duration{}
	for _, kv := range resp.Kvs {
		var us map[string]int64
		if err := json.Unmarshal(kv.Value, &us); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		m := map[string]time.Duration{}
		for h, v := range us {
			m[h] = time.Duration(v) * time.Microsecond
		}
		out[strings.TrimPrefix(string(kv.Key), s.prefix+"rtt/")] = m
	}
	return out, nil
}

// RoutingChanges returns a View subscription filter that accepts what may
// change where connections go: a host coming or going, a leader key, a
// switchover, a spec or placement, the sync set, or a member's status
// changing role, state or health. A status write that changes none of those
// (the lag, every second) is not accepted; routers poll for lag. The filter
// keeps the shapes it saw, so it belongs to one subscription.
func RoutingChanges() func(key string, ev *clientv3.Event) bool {
	type shape struct {
		role    fleet.Role
		state   fleet.State
		healthy bool
	}
	seen := map[string]shape{}
	return func(key string, ev *clientv3.Event) bool {
		if !strings.HasSuffix(key, "/status") {
			return !strings.Contains(key, "/candidates/")
		}
		if ev.Type == clientv3.EventTypeDelete {
			delete(seen, key)
			return true
		}
		var st fleet.MemberStatus
		if json.Unmarshal(ev.Kv.Value, &st) != nil {
			return false
		}
		now := shape{st.Role, st.State, st.Healthy}
		if prev, ok := seen[key]; ok && prev == now {
			return false
		}
		seen[key] = now
		return true
	}
}
