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

// WatchRouting returns a channel that receives a value whenever something
// that decides where connections go may have changed: a leader key, a
// switchover, a spec or placement, the sync set, or a member's status
// changing role, state or health. A status write that changes none of those
// (the lag, every second) does not wake it; routers poll for lag. The
// channel closes when ctx ends or the watch breaks.
func (s *Store) WatchRouting(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.clustersPrefix(), clientv3.WithPrefix())
	type shape struct {
		role    fleet.Role
		state   fleet.State
		healthy bool
	}
	seen := map[string]shape{}
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			wake := false
			for _, e := range resp.Events {
				key := string(e.Kv.Key)
				if !strings.HasSuffix(key, "/status") {
					wake = wake || !strings.Contains(key, "/candidates/")
					continue
				}
				if e.Type == clientv3.EventTypeDelete {
					delete(seen, key)
					wake = true
					continue
				}
				var st fleet.MemberStatus
				if json.Unmarshal(e.Kv.Value, &st) != nil {
					continue
				}
				now := shape{st.Role, st.State, st.Healthy}
				if prev, ok := seen[key]; !ok || prev != now {
					seen[key] = now
					wake = true
				}
			}
			if !wake {
				continue
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out
}
