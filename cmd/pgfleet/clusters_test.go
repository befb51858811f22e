package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pgfleet/pgfleet/internal/api"
)

// fakeAPI answers the few requests the commands under test send, and
// records them. The API itself is tested against a real store in
// internal/api; here only the CLI's flags and output are.
type fakeAPI struct {
	mu       sync.Mutex
	requests []string // "METHOD path?query"
	created  api.CreateRequest
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.RequestURI())
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == "GET" && r.URL.Path == "/v1/clusters/db/url":
		json.NewEncoder(w).Encode(api.URLView{URL: "postgres://postgres:pw@127.0.1.1:6011/postgres?" + r.URL.RawQuery, Via: "proxy"})
	case r.Method == "GET" && r.URL.Path == "/v1/clusters/db":
		json.NewEncoder(w).Encode(api.ClusterView{Name: "db", PrimaryRegion: "iad", Port: 6010, PrimaryProxyPort: 6011, ReplicaProxyPort: 6012,
			PooledProxyPort: 6013, MaxReplicaLag: 16 << 20, Sync: "off", Primary: "db-1"})
	case r.Method == "POST" && r.URL.Path == "/v1/clusters":
		json.NewDecoder(r.Body).Decode(&f.created)
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(api.ClusterView{Name: f.created.Name, Port: 6010})
	default:
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(api.ErrorView{Error: "fake API: no " + r.Method + " " + r.URL.Path})
	}
}

// runCLI runs pgfleet in-process against f and returns its output and error.
func runCLI(t *testing.T, f http.Handler, args ...string) (string, error) {
	t.Helper()
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	t.Setenv("PGFLEET_HOME", t.TempDir())
	t.Setenv("PGFLEET_API", "")
	t.Setenv("PGFLEET_TOKEN", "")
	t.Setenv("PGFLEET_CA", "")
	// The server's own certificate stands for the fleet's CA.
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--api", srv.URL, "--token", "t", "--ca", ca}, args...))
	err := root.Execute()
	return out.String(), err
}

// TestURLDatabase: --db names another database in the URL; the
// credentials and the parameters stay as the server gave them.
func TestURLDatabase(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"url", "db"}, "postgres://postgres:pw@127.0.1.1:6011/postgres?&sslrootcert="},
		{[]string{"url", "db", "--db", "inventory"}, "postgres://postgres:pw@127.0.1.1:6011/inventory?&sslrootcert="},
		{[]string{"url", "db", "--db", "my db", "--replica"}, "postgres://postgres:pw@127.0.1.1:6011/my%20db?replica=true&sslrootcert="},
	} {
		out, err := runCLI(t, &fakeAPI{}, tt.args...)
		if err != nil || !strings.HasPrefix(out, tt.want) {
			t.Errorf("pgfleet %s = %q, %v; want it to start with %q", strings.Join(tt.args, " "), out, err, tt.want)
		}
	}
}

func TestURLFlags(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		query string // of the request sent; "-" when none must be sent
		usage string // a part of the usage error; "" for none
	}{
		{name: "through the proxy", args: []string{"url", "db"}, query: ""},
		{name: "replicas of a region", args: []string{"url", "db", "--replica", "--region", "ams"}, query: "region=ams&replica=true"},
		{name: "direct", args: []string{"url", "db", "--direct"}, query: "direct=true"},
		{name: "direct to readers", args: []string{"url", "db", "--direct", "--replica"}, query: "direct=true&replica=true"},
		{name: "one member", args: []string{"url", "db", "--member", "db-2"}, query: "member=db-2"},
		{name: "member with replica", args: []string{"url", "db", "--member", "db-2", "--replica"}, query: "-",
			usage: "--member cannot be combined with --replica"},
		{name: "member with region and direct", args: []string{"url", "db", "--member", "db-2", "--region", "ams", "--direct"}, query: "-",
			usage: "--member cannot be combined with --region or --direct"},
		{name: "direct with region", args: []string{"url", "db", "--direct", "--region", "ams"}, query: "-",
			usage: "--direct cannot be combined with --region"},
		{name: "connect checks the same", args: []string{"connect", "db", "--member", "db-2", "--direct"}, query: "-",
			usage: "--member cannot be combined with --direct"},
		{name: "pooled in a region", args: []string{"url", "db", "--pooled", "--region", "ams"}, query: "pooled=true&region=ams"},
		{name: "pooled replicas", args: []string{"url", "db", "--pooled", "--replica"}, query: "-",
			usage: "--pooled cannot be combined with --replica or --direct"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeAPI{}
			out, err := runCLI(t, f, tt.args...)
			var ue usageError
			if tt.usage != "" {
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.usage) {
					t.Fatalf("pgfleet %s = %v; want a usage error with %q", strings.Join(tt.args, " "), err, tt.usage)
				}
			} else if err != nil {
				t.Fatalf("pgfleet %s = %v\n%s", strings.Join(tt.args, " "), err, out)
			}
			want := []string{"GET /v1/clusters/db/url"}
			if tt.query != "" {
				want[0] += "?" + tt.query
			}
			if tt.query == "-" {
				want = nil
			}
			if strings.Join(f.requests, "\n") != strings.Join(want, "\n") {
				t.Errorf("pgfleet %s sent %q; want %q", strings.Join(tt.args, " "), f.requests, want)
			}
		})
	}
}

func TestStatusHeaderShowsProxyPorts(t *testing.T) {
	out, err := runCLI(t, &fakeAPI{}, "status", "db")
	if err != nil {
		t.Fatal(err)
	}
	// The fake's view has no disk guard threshold: 0 means the guard is off.
	want := "cluster db  primary db-1  region iad  port 6010 (proxy: primary 6011, replicas 6012 within 16.0 MB lag, pooled 6013)  sync off  disk guard off\n"
	if first := strings.SplitAfter(out, "\n")[0]; first != want {
		t.Errorf("status db header = %q, want %q", first, want)
	}
}

func TestCreateMaxReplicaLag(t *testing.T) {
	f := &fakeAPI{}
	if _, err := runCLI(t, f, "create", "db", "--primary-region", "iad", "--max-replica-lag", "1048576"); err != nil {
		t.Fatal(err)
	}
	if f.created.MaxReplicaLag != 1<<20 {
		t.Errorf("create --max-replica-lag 1048576 sent max_replica_lag %d", f.created.MaxReplicaLag)
	}
	f = &fakeAPI{}
	if _, err := runCLI(t, f, "create", "db", "--primary-region", "iad"); err != nil || f.created.MaxReplicaLag != 16<<20 {
		t.Errorf("create without --max-replica-lag sent max_replica_lag %d, %v; want the default 16 MiB", f.created.MaxReplicaLag, err)
	}
	f = &fakeAPI{}
	_, err := runCLI(t, f, "create", "db", "--primary-region", "iad", "--max-replica-lag", "-1")
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--max-replica-lag -1") || len(f.requests) != 0 {
		t.Errorf("create --max-replica-lag -1 = %v after %d requests; want a usage error before any request", err, len(f.requests))
	}
}
