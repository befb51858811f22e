// The handlers are tested from outside the package, against a real embedded
// etcd: labtest, which finds a free loopback network, imports api.
package api_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/store"
)

// openStore starts an embedded etcd of its own in the test's directory and
// returns a store on it.
func openStore(t *testing.T) *store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		Name: "t1", Dir: t.TempDir(), Addr: fmt.Sprintf("127.%d.1.1", labtest.FreeNet(t)), ClientPort: 2379, PeerPort: 2380,
	})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(e.Close)
	s, err := store.Open(e.Endpoints, "/test/"+t.Name()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testFleet is a store holding cluster db (sync on): primary db-1 on iad-1,
// standby db-2 on iad-2 (in the sync set, 2 kB behind), replica db-3 on
// ams-1; iad-3 runs no member. Every host has an API server.
type testFleet struct {
	st      *store.Store
	servers map[string]*httptest.Server
	status  *store.Lease // the members' statuses are bound to it
}

const testToken = "pgf_test"

func newTestFleet(t *testing.T) *testFleet {
	t.Helper()
	st := openStore(t)
	ctx := context.Background()
	if _, err := st.InitToken(ctx, api.HashToken(testToken)); err != nil {
		t.Fatal(err)
	}
	hostLease, err := st.Grant(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hosts := []fleet.Host{
		{Name: "iad-1", Region: "iad", Addr: "127.0.1.1"},
		{Name: "iad-2", Region: "iad", Addr: "127.0.1.2"},
		{Name: "iad-3", Region: "iad", Addr: "127.0.1.3"},
		{Name: "ams-1", Region: "ams", Addr: "127.0.2.1"},
	}
	f := &testFleet{st: st, servers: map[string]*httptest.Server{}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, h := range hosts {
		if err := st.RegisterHost(ctx, h, hostLease); err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewTLSServer(api.NewServer(st, h, log).Handler())
		t.Cleanup(srv.Close)
		f.servers[h.Name] = srv
	}
	spec := fleet.ClusterSpec{Name: "db", PrimaryRegion: "iad", HA: 2, Replicas: []string{"ams"}, Port: 6010, Sync: fleet.SyncOn}
	members := []fleet.MemberSpec{
		{ID: "db-1", Cluster: "db", Host: "iad-1", Region: "iad", Role: fleet.RolePrimary, Port: 6010},
		{ID: "db-2", Cluster: "db", Host: "iad-2", Region: "iad", Role: fleet.RoleStandby, Port: 6010},
		{ID: "db-3", Cluster: "db", Host: "ams-1", Region: "ams", Role: fleet.RoleReplica, Port: 6010},
	}
	if err := st.CreateCluster(ctx, spec, fleet.Secrets{SuperuserPassword: "pw"}, members, fleet.Event{Cluster: "db", Kind: "created", Message: "test"}); err != nil {
		t.Fatal(err)
	}
	leaderLease, err := st.Grant(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := st.AcquireLeader(ctx, "db", "db-1", leaderLease); !ok || err != nil {
		t.Fatalf("AcquireLeader(db-1) = %v, %v", ok, err)
	}
	if err := st.PutSync(ctx, "db", fleet.SyncState{Primary: "db-1", Members: []string{"db-2"}}); err != nil {
		t.Fatal(err)
	}
	if f.status, err = st.Grant(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	for _, s := range []fleet.MemberStatus{
		{ID: "db-1", Host: "iad-1", Role: fleet.RolePrimary, State: fleet.StateRunning, Healthy: true, Timeline: 3, Updated: now},
		{ID: "db-2", Host: "iad-2", Role: fleet.RoleStandby, State: fleet.StateStreaming, Healthy: true, Timeline: 3, LagBytes: 2048, Updated: now},
		{ID: "db-3", Host: "ams-1", Role: fleet.RoleReplica, State: fleet.StateStreaming, Healthy: true, Timeline: 3, LagBytes: 0, Updated: now},
	} {
		if err := st.PutStatus(ctx, "db", s, f.status); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// ca is what a client of host's API trusts.
func (f *testFleet) ca(host string) *x509.CertPool {
	return f.servers[host].Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
}

// get sends an untokened request to host's API and returns the code and body.
func (f *testFleet) get(t *testing.T, host, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.servers[host].URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.servers[host].Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHealthURLs(t *testing.T) {
	f := newTestFleet(t)
	tests := []struct {
		name   string
		host   string
		method string
		path   string
		code   int
		body   string // a part of the body; "" for an empty body
	}{
		{"primary on the primary's host", "iad-1", "GET", "/health/db/primary", 200, `"role": "primary"`},
		{"master alias answers HEAD without a body", "iad-1", "HEAD", "/health/db/master", 200, ""},
		{"leader alias answers OPTIONS with the code only", "iad-1", "OPTIONS", "/health/db/leader", 200, ""},
		{"read-write on a standby's host", "iad-2", "GET", "/health/db/read-write", 503, "the primary is db-1"},
		{"replica on a standby's host", "iad-2", "GET", "/health/db/replica", 200, `"lag_bytes": 2048`},
		{"replica over the lag limit", "iad-2", "GET", "/health/db/replica?lag=1kB", 503, "over the limit of 1024"},
		{"replica within the lag limit", "iad-2", "GET", "/health/db/replica?lag=16MB", 200, `"timeline": 3`},
		{"replica on the primary's host", "iad-1", "GET", "/health/db/replica", 503, "not a streaming standby"},
		{"read-only on the primary's host", "iad-1", "GET", "/health/db/read-only", 200, `"leader": true`},
		{"sync standby", "iad-2", "GET", "/health/db/sync", 200, `"sync_standby": true`},
		{"replica is not sync", "ams-1", "GET", "/health/db/synchronous", 503, "sync set (db-2)"},
		{"replica is async", "ams-1", "GET", "/health/db/async", 200, `"role": "replica"`},
		{"health", "ams-1", "GET", "/health/db/health", 200, `"state": "streaming"`},
		{"host without a member", "iad-3", "GET", "/health/db/health", 503, "cluster db has no member on host iad-3"},
		{"unknown cluster", "iad-1", "GET", "/health/nope/primary", 404, "not found"},
		{"invalid cluster name", "iad-1", "GET", "/health/No_pe/primary", 404, "not valid"},
		{"unknown check", "iad-1", "GET", "/health/db/writer", 404, "valid checks are primary"},
		{"bad lag", "iad-2", "GET", "/health/db/replica?lag=much", 400, "not a byte count"},
		{"other methods", "iad-1", "POST", "/health/db/primary", 405, "use GET, HEAD or OPTIONS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := f.get(t, tt.host, tt.method, tt.path)
			if code != tt.code || (tt.body == "" && body != "") || !strings.Contains(body, tt.body) {
				t.Errorf("%s %s on %s = %d %s; want %d with %q", tt.method, tt.path, tt.host, code, body, tt.code, tt.body)
			}
		})
	}

	// The statuses vanish with their host's lease: no check passes.
	if err := f.status.Revoke(context.Background()); err != nil {
		t.Fatal(err)
	}
	code, body := f.get(t, "iad-1", "GET", "/health/db/primary")
	var v api.MemberHealthView
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("GET /health/db/primary after the lease: %v in %s", err, body)
	}
	if code != 503 || v.State != fleet.StateUnknown || v.LagBytes != -1 || !strings.Contains(v.Reason, "db-1 has no status") {
		t.Errorf("GET /health/db/primary after the lease = %d %+v; want 503, state unknown, lag -1, no status", code, v)
	}
}

func TestClusterURLs(t *testing.T) {
	f := newTestFleet(t)
	ctx := context.Background()
	c := api.NewClient([]string{f.servers["iad-3"].URL}, testToken, f.ca("iad-3"))
	tests := []struct {
		name string
		o    api.URLOptions
		url  string
		err  string
	}{
		{name: "through the primary region's proxies", o: api.URLOptions{},
			url: "postgres://postgres:pw@127.0.1.1:6011,127.0.1.2:6011,127.0.1.3:6011/postgres?sslmode=verify-full"},
		{name: "replicas in ams", o: api.URLOptions{Region: "ams", Replica: true},
			url: "postgres://postgres:pw@127.0.2.1:6012/postgres?sslmode=verify-full"},
		{name: "direct", o: api.URLOptions{Direct: true},
			url: "postgres://postgres:pw@127.0.1.1:6010,127.0.1.2:6010,127.0.2.1:6010/postgres?sslmode=verify-full&target_session_attrs=read-write"},
		{name: "member", o: api.URLOptions{Member: "db-3"}, url: "postgres://postgres:pw@127.0.2.1:6010/postgres?sslmode=verify-full"},
		{name: "no such region", o: api.URLOptions{Region: "syd"}, err: `region "syd" has no live host (regions with live hosts: ams (1), iad (3))`},
		{name: "member and direct", o: api.URLOptions{Member: "db-3", Direct: true}, err: "--member cannot be combined with --direct"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := c.ClusterURL(ctx, "db", tt.o)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ClusterURL(%+v) = %+v, %v; want an error with %q", tt.o, v, err, tt.err)
				}
				return
			}
			if err != nil || v.URL != tt.url {
				t.Fatalf("ClusterURL(%+v) = %q, %v; want %q", tt.o, v.URL, err, tt.url)
			}
		})
	}

	// URL keeps its meaning for tools: a direct URL of the current primary.
	if v, err := c.URL(ctx, "db", ""); err != nil || v.Member != "db-1" || v.Via != "member" || !strings.Contains(v.URL, "@127.0.1.1:6010/") {
		t.Errorf("URL(db, \"\") = %+v, %v; want db-1 direct", v, err)
	}

	// The server checks the query itself, for clients other than ours.
	for query, want := range map[string]string{
		"member=db-1&replica=true": "member cannot be combined with replica",
		"direct=maybe":             `direct="maybe" is not valid`,
		"port=6011":                `unknown parameter "port"`,
	} {
		req, _ := http.NewRequest("GET", f.servers["iad-1"].URL+"/v1/clusters/db/url?"+query, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := f.servers["iad-1"].Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var ev api.ErrorView
		err = json.NewDecoder(resp.Body).Decode(&ev)
		resp.Body.Close()
		if resp.StatusCode != 400 || err != nil || !strings.Contains(ev.Error, want) {
			t.Errorf("GET /v1/clusters/db/url?%s = %d %q, %v; want 400 with %q", query, resp.StatusCode, ev.Error, err, want)
		}
	}
	if code, _ := f.get(t, "iad-1", "GET", "/v1/clusters/db/url"); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/clusters/db/url without a token = %d; want 401", code)
	}
}

func TestCreateMaxReplicaLag(t *testing.T) {
	f := newTestFleet(t)
	ctx := context.Background()
	c := api.NewClient([]string{f.servers["iad-1"].URL}, testToken, f.ca("iad-1"))
	one := 1
	_, err := c.Create(ctx, api.CreateRequest{Name: "neg", PrimaryRegion: "iad", HA: &one, MaxReplicaLag: -1})
	if ae, ok := err.(*api.APIError); !ok || ae.Status != 400 || !strings.Contains(ae.Message, "max replica lag is -1 bytes") {
		t.Fatalf("Create(max_replica_lag -1) = %v; want a 400 that says the lag must not be negative", err)
	}
	v, err := c.Create(ctx, api.CreateRequest{Name: "lagged", PrimaryRegion: "iad", HA: &one, MaxReplicaLag: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if v.MaxReplicaLag != 1<<20 || v.PrimaryProxyPort != v.Port+1 || v.ReplicaProxyPort != v.Port+2 {
		t.Errorf("Create(max_replica_lag 1 MiB) = lag %d, ports %d/%d/%d; want 1048576 and the proxies on port+1, port+2", v.MaxReplicaLag, v.Port, v.PrimaryProxyPort, v.ReplicaProxyPort)
	}
	if v, err := c.Cluster(ctx, "db"); err != nil || v.MaxReplicaLag != fleet.DefaultMaxReplicaLag || v.PrimaryProxyPort != 6011 {
		t.Errorf("Cluster(db) = lag %d, primary proxy %d, %v; want the default lag and port 6011", v.MaxReplicaLag, v.PrimaryProxyPort, err)
	}
}
