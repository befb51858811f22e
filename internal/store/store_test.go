package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/store"
)

var (
	etcdOnce sync.Once
	etcdDir  string
	etcdEnds []string
	etcdErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if etcdDir != "" {
		os.RemoveAll(etcdDir)
	}
	os.Exit(code)
}

// openStore returns a store on a real embedded etcd shared by the package's
// tests, each under a prefix of its own.
func openStore(t *testing.T) *store.Store {
	t.Helper()
	etcdOnce.Do(func() {
		etcdDir, etcdErr = os.MkdirTemp("", "pgfleet-store-test-")
		if etcdErr != nil {
			return
		}
		e, err := store.StartEmbedded(context.Background(), store.EmbedConfig{
			Name: "t1", Dir: etcdDir, Addr: fmt.Sprintf("127.%d.1.1", labtest.FreeNet(t)), ClientPort: 2379, PeerPort: 2380,
		})
		if err != nil {
			etcdErr = err
			return
		}
		etcdEnds = e.Endpoints
	})
	if etcdErr != nil {
		t.Fatalf("start embedded etcd: %v", etcdErr)
	}
	s, err := store.Open(etcdEnds, "/test/"+t.Name()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func spec(name string, port int) fleet.ClusterSpec {
	return fleet.ClusterSpec{Name: name, PrimaryRegion: "iad", HA: 1, Port: port}
}

func members(name string, port int) []fleet.MemberSpec {
	return []fleet.MemberSpec{{ID: name + "-1", Cluster: name, Host: "h1", Region: "iad", Role: fleet.RolePrimary, Port: port}}
}

func ev(cluster, msg string) fleet.Event {
	return fleet.Event{Time: time.Now().UTC(), Cluster: cluster, Kind: "created", Message: msg}
}

func TestCreateClusterIsAllOrNothing(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	sec := fleet.Secrets{SuperuserPassword: "a", ReplicationPassword: "b"}
	if err := s.CreateCluster(ctx, spec("one", 6000), sec, members("one", 6000), ev("one", "first")); err != nil {
		t.Fatal(err)
	}
	err := s.CreateCluster(ctx, spec("one", 6010), sec, members("one", 6010), ev("one", "second"))
	if !errors.Is(err, store.ErrClusterExists) {
		t.Fatalf("CreateCluster(duplicate) = %v, want ErrClusterExists", err)
	}
	c, err := s.Cluster(ctx, "one")
	if err != nil || c.Spec.Port != 6000 {
		t.Fatalf("Cluster(one) = port %d, %v; the duplicate must change nothing", c.Spec.Port, err)
	}
	err = s.CreateCluster(ctx, spec("two", 6000), sec, members("two", 6000), ev("two", "x"))
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CreateCluster(taken port) = %v, want ErrConflict", err)
	}
	if _, err := s.Cluster(ctx, "two"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Cluster(two) after a failed create = %v, want ErrNotFound", err)
	}
	if _, err := s.Secrets(ctx, "two"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Secrets(two) after a failed create = %v, want ErrNotFound", err)
	}
	if evs, _ := s.Events(ctx, "two", 0); len(evs) != 0 {
		t.Fatalf("Events(two) after a failed create = %v, want none", evs)
	}
	if ports, _ := s.UsedPorts(ctx); fmt.Sprint(ports) != "[6000]" {
		t.Fatalf("UsedPorts() = %v, want [6000]", ports)
	}
}

func TestStatusVanishesWithHostLease(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if err := s.CreateCluster(ctx, spec("c", 6000), fleet.Secrets{}, members("c", 6000), ev("c", "x")); err != nil {
		t.Fatal(err)
	}
	// A lease whose keeper stops, as when its agent dies.
	lctx, stop := context.WithCancel(ctx)
	lease, err := s.Grant(lctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterHost(ctx, fleet.Host{Name: "h1", Region: "iad"}, lease); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStatus(ctx, "c", fleet.MemberStatus{ID: "c-1", State: fleet.StateRunning}, lease); err != nil {
		t.Fatal(err)
	}
	c, err := s.Cluster(ctx, "c")
	if err != nil || c.Status["c-1"].State != fleet.StateRunning {
		t.Fatalf("Cluster(c) status = %+v, %v; want c-1 running", c.Status, err)
	}
	stop()
	labtest.WaitFor(t, 10*time.Second, "status and host gone with the lease", func() (bool, string) {
		c, err := s.Cluster(ctx, "c")
		hosts, herr := s.Hosts(ctx)
		if err != nil || herr != nil {
			return false, fmt.Sprint(err, herr)
		}
		return len(c.Status) == 0 && len(hosts) == 0, fmt.Sprintf("status %v, hosts %v", c.Status, hosts)
	})
}

// TestNothingOutlivesADeletedCluster: a destroy leaves nothing of the
// cluster but its tombstone, the agents' order to delete its data.
func TestNothingOutlivesADeletedCluster(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	sp := spec("gone", 6000)
	if err := s.CreateCluster(ctx, sp, fleet.Secrets{SuperuserPassword: "x"}, members("gone", 6000), ev("gone", "x")); err != nil {
		t.Fatal(err)
	}
	if gone, err := s.Tombstoned(ctx, "gone", sp.Created); gone || err != nil {
		t.Fatalf("Tombstoned(live cluster) = %v, %v; want false", gone, err)
	}
	lease, err := s.Grant(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Revoke(ctx)
	if ok, err := s.AcquireLeader(ctx, "gone", "gone-1", lease); !ok || err != nil {
		t.Fatalf("AcquireLeader = %v, %v", ok, err)
	}
	if err := s.DeleteCluster(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	// A supervisor that has not noticed yet keeps writing.
	if err := s.PutStatus(ctx, "gone", fleet.MemberStatus{ID: "gone-1"}, lease); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendEvent(ctx, ev("gone", "late")); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.AcquireLeader(ctx, "gone", "gone-1", lease); ok {
		t.Fatal("AcquireLeader succeeded on a deleted cluster")
	}
	resp, err := s.Client().Get(ctx, "/test/"+t.Name()+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if !strings.Contains(string(kv.Key), "/tombstones/gone/") {
			t.Errorf("left behind: %s", kv.Key)
		}
	}
	if gone, err := s.Tombstoned(ctx, "gone", sp.Created); !gone || err != nil {
		t.Fatalf("Tombstoned(destroyed cluster) = %v, %v; want true", gone, err)
	}
	// Another incarnation of the name is not covered by this tombstone.
	if gone, err := s.Tombstoned(ctx, "gone", sp.Created.Add(time.Second)); gone || err != nil {
		t.Fatalf("Tombstoned(other incarnation) = %v, %v; want false", gone, err)
	}
	if err := s.DeleteCluster(ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second DeleteCluster = %v, want ErrNotFound", err)
	}
}

func TestLeaderKey(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if err := s.CreateCluster(ctx, spec("c", 6000), fleet.Secrets{}, members("c", 6000), ev("c", "x")); err != nil {
		t.Fatal(err)
	}
	l1, _ := s.Grant(ctx, 5*time.Second)
	l2, _ := s.Grant(ctx, 5*time.Second)
	if ok, err := s.AcquireLeader(ctx, "c", "c-1", l1); !ok || err != nil {
		t.Fatalf("AcquireLeader(c-1) = %v, %v; want the free key", ok, err)
	}
	if ok, err := s.AcquireLeader(ctx, "c", "c-2", l2); ok || err != nil {
		t.Fatalf("AcquireLeader(c-2) = %v, %v; want false while c-1 holds it", ok, err)
	}
	// The holder re-binds the key to a new lease (its agent restarted).
	if ok, err := s.AcquireLeader(ctx, "c", "c-1", l2); !ok || err != nil {
		t.Fatalf("AcquireLeader(c-1, new lease) = %v, %v; want true", ok, err)
	}
	if err := l1.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if leader, _ := s.Leader(ctx, "c"); leader != "c-1" {
		t.Fatalf("Leader() after revoking the old lease = %q, want c-1 (bound to the new one)", leader)
	}
	if err := l2.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if leader, _ := s.Leader(ctx, "c"); leader != "" {
		t.Fatalf("Leader() after revoking its lease = %q, want none", leader)
	}
}

func TestEventsKeepTheNewest(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if err := s.CreateCluster(ctx, spec("c", 6000), fleet.Secrets{}, members("c", 6000), ev("c", "created")); err != nil {
		t.Fatal(err)
	}
	base := time.Now().UTC()
	for i := range store.MaxEvents + 20 {
		e := fleet.Event{Time: base.Add(time.Duration(i+1) * time.Millisecond), Cluster: "c", Kind: "test", Message: fmt.Sprint(i)}
		if err := s.AppendEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.TrimEvents(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	evs, err := s.Events(ctx, "c", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != store.MaxEvents || evs[0].Message != "20" || evs[len(evs)-1].Message != fmt.Sprint(store.MaxEvents+19) {
		t.Fatalf("Events() = %d events from %q to %q; want the newest %d, oldest first", len(evs), evs[0].Message, evs[len(evs)-1].Message, store.MaxEvents)
	}
	last, _ := s.Events(ctx, "c", 2)
	if len(last) != 2 || last[1].Message != fmt.Sprint(store.MaxEvents+19) {
		t.Fatalf("Events(limit 2) = %+v; want the two newest", last)
	}
}

// TestTimelineRecord: only the leader records the cluster's timeline, and
// the record only grows.
func TestTimelineRecord(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if err := s.CreateCluster(ctx, spec("c", 6000), fleet.Secrets{}, members("c", 6000), ev("c", "x")); err != nil {
		t.Fatal(err)
	}
	l, _ := s.Grant(ctx, 5*time.Second)
	if ok, err := s.AcquireLeader(ctx, "c", "c-1", l); !ok || err != nil {
		t.Fatalf("AcquireLeader = %v, %v", ok, err)
	}
	if err := s.RaiseTimeline(ctx, "c", "c-2", 2); err == nil || !strings.Contains(err.Error(), "does not hold the leader key") {
		t.Fatalf("RaiseTimeline(not the leader) = %v, want a refusal", err)
	}
	for _, tl := range []int64{3, 2, 5, 4} {
		if err := s.RaiseTimeline(ctx, "c", "c-1", tl); err != nil {
			t.Fatalf("RaiseTimeline(%d) = %v", tl, err)
		}
	}
	c, err := s.Cluster(ctx, "c")
	if err != nil || c.Timeline != 5 {
		t.Fatalf("Cluster().Timeline = %d, %v; want 5", c.Timeline, err)
	}
	if c.LeaderTerm == 0 {
		t.Fatal("Cluster().LeaderTerm = 0 while c-1 leads")
	}
}

// TestRetiredKeepsHistory: a cluster destroyed with its backups kept keeps
// its events in the retired record, its destruction last.
func TestRetiredKeepsHistory(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	sp := spec("old", 6000)
	sp.Backup = &fleet.BackupSpec{Store: "file:///var/lib/pgfleet/backups"}
	if err := s.CreateCluster(ctx, sp, fleet.Secrets{SuperuserPassword: "a", ReplicationPassword: "b"}, members("old", 6000), ev("old", "made")); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendEvent(ctx, fleet.Event{Time: time.Now().UTC(), Cluster: "old", Kind: "failover", Message: "old-2 promoted"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCluster(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	r, err := s.Retired(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range r.Events {
		kinds = append(kinds, e.Kind)
	}
	if got := strings.Join(kinds, ","); got != "created,failover,destroyed" {
		t.Errorf("retired history = %s, want created,failover,destroyed", got)
	}
	if evs, err := s.Events(ctx, "old", 0); err != nil || len(evs) != 0 {
		t.Errorf("live events of the destroyed cluster = %v, %v; want none", evs, err)
	}
}
