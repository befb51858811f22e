package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/pki"
)

func ptr[T any](v T) *T { return &v }

func clusterReady(v api.ClusterView) (bool, string) {
	var s []string
	ok := v.Primary != ""
	for _, m := range v.Members {
		s = append(s, fmt.Sprintf("%s %s %s lag=%d", m.ID, m.Role, m.State, m.LagBytes))
		if !m.Healthy || (m.Role != fleet.RolePrimary && m.LagBytes != 0) {
			ok = false
		}
	}
	return ok, "primary=" + v.Primary + ": " + strings.Join(s, ", ")
}

// TestThreeRegionFleet is the foundation end to end, in process: five hosts
// in three regions, a cluster with two standbys and two remote replicas, a
// thousand rows written on the primary and read back on every other member.
func TestThreeRegionFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five agents and five postgres instances")
	}
	f := labtest.StartFleet(t, "iad:3,ams,syd")
	ctx := context.Background()
	c := f.Client

	hosts, err := c.Hosts(ctx)
	if err != nil || len(hosts) != 5 {
		t.Fatalf("Hosts() = %d hosts, %v; want 5", len(hosts), err)
	}

	v, err := c.Create(ctx, api.CreateRequest{Name: "demo", PrimaryRegion: "iad", HA: ptr(3), Replicas: []string{"ams", "syd"}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	labtest.WaitFor(t, 3*time.Minute, "cluster demo ready", func() (bool, string) {
		v, err = c.Cluster(ctx, "demo")
		if err != nil {
			return false, err.Error()
		}
		return clusterReady(v)
	})

	roles := map[string][]string{}
	for _, m := range v.Members {
		roles[string(m.Role)] = append(roles[string(m.Role)], m.Region)
		if m.Timeline != 1 {
			t.Errorf("member %s timeline = %d, want 1", m.ID, m.Timeline)
		}
	}
	if got := fmt.Sprint(roles); got != "map[primary:[iad] replica:[ams syd] standby:[iad iad]]" {
		t.Fatalf("roles by region = %s, want one primary and two standbys in iad, a replica in ams and syd", got)
	}

	primaryURL, err := c.URL(ctx, "demo", "")
	if err != nil {
		t.Fatal(err)
	}
	if primaryURL.Member != v.Primary {
		t.Fatalf("URL() member = %s, want primary %s", primaryURL.Member, v.Primary)
	}
	conn, err := pgx.Connect(ctx, primaryURL.URL)
	if err != nil {
		t.Fatalf("connect to primary: %v", err)
	}
	defer conn.Close(ctx)
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		t.Fatalf("primary pg_is_in_recovery() = %v, %v; want false", inRecovery, err)
	}
	var checksums string
	if err := conn.QueryRow(ctx, "SHOW data_checksums").Scan(&checksums); err != nil || checksums != "on" {
		t.Fatalf("data_checksums = %q, %v; want on", checksums, err)
	}
	var enc string
	if err := conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").Scan(&enc); err != nil || !strings.HasPrefix(enc, "SCRAM-SHA-256$") {
		t.Fatalf("postgres password is stored as %.14q (%v); want SCRAM-SHA-256", enc, err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, note text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	var slots int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE active").Scan(&slots); err != nil || slots != 4 {
		t.Fatalf("active replication slots on the primary = %d, %v; want 4 (one per other member)", slots, err)
	}
	// Every connection is encrypted: clients, and the standbys' WAL streams.
	var tlsClient bool
	var tlsStreams int
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&tlsClient); err != nil || !tlsClient {
		t.Fatalf("client connection TLS = %v, %v; want TLS", tlsClient, err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl").Scan(&tlsStreams); err != nil || tlsStreams != 4 {
		t.Fatalf("replication streams over TLS = %d, %v; want 4", tlsStreams, err)
	}
	plain := strings.Replace(primaryURL.URL, "sslmode=verify-full", "sslmode=disable", 1)
	if pc, err := pgx.Connect(ctx, plain); err == nil || !strings.Contains(err.Error(), "no encryption") {
		if pc != nil {
			pc.Close(ctx)
		}
		t.Fatalf("connect without TLS = %v, want it refused (no encryption)", err)
	}

	for _, m := range v.Members {
		if m.ID == v.Primary {
			continue
		}
		u, err := c.URL(ctx, "demo", m.ID)
		if err != nil {
			t.Fatal(err)
		}
		mc, err := pgx.Connect(ctx, u.URL)
		if err != nil {
			t.Fatalf("connect to %s: %v", m.ID, err)
		}
		labtest.WaitFor(t, 30*time.Second, "1000 rows on "+m.ID, func() (bool, string) {
			var n int
			var rec bool
			err := mc.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM items").Scan(&n, &rec)
			if err != nil {
				return false, err.Error()
			}
			return n == 1000 && rec, fmt.Sprintf("%d rows, in recovery %v", n, rec)
		})
		mc.Close(ctx)
	}
	labtest.WaitFor(t, 30*time.Second, "all lags 0", func() (bool, string) {
		v, err = c.Cluster(ctx, "demo")
		if err != nil {
			return false, err.Error()
		}
		return clusterReady(v)
	})

	evs, err := c.Events(ctx, "demo", 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
		if strings.Contains(e.Message, primaryURL.URL[strings.Index(primaryURL.URL, ":")+3:strings.Index(primaryURL.URL, "@")]) {
			t.Errorf("event %q reveals credentials", e.Message)
		}
	}
	if kinds["created"] != 1 || kinds["primary"] != 1 || kinds["cloned"] != 4 {
		t.Errorf("events by kind = %v; want 1 created, 1 primary, 4 cloned", kinds)
	}

	t.Run("bad input changes nothing", func(t *testing.T) { badInput(t, f) })
	t.Run("destroy removes data", func(t *testing.T) { destroy(t, f) })
	t.Run("duplicate host name", func(t *testing.T) { duplicateHost(t, f) })
	t.Run("certificate renewal", func(t *testing.T) { renewal(t, f) })
	t.Run("no quorum", func(t *testing.T) { noQuorum(t, f) })
}

func badInput(t *testing.T, f *labtest.Fleet) {
	ctx := context.Background()
	c := f.Client
	before, err := c.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		req    api.CreateRequest
		status int
		want   string
	}{
		{"unknown region", api.CreateRequest{Name: "x", PrimaryRegion: "fra"}, 422, `unknown region "fra": no host of the fleet is in it`},
		{"unknown replica region", api.CreateRequest{Name: "x", PrimaryRegion: "iad", Replicas: []string{"lhr"}}, 422, `unknown region "lhr"`},
		{"duplicate name", api.CreateRequest{Name: "demo", PrimaryRegion: "iad"}, 409, `cluster "demo" already exists`},
		{"invalid name", api.CreateRequest{Name: "My_DB", PrimaryRegion: "iad"}, 400, `cluster name "My_DB" is not valid`},
		{"empty name", api.CreateRequest{PrimaryRegion: "iad"}, 400, "cluster name is empty"},
		{"ha 0", api.CreateRequest{Name: "x", PrimaryRegion: "iad", HA: ptr(0)}, 400, "ha is 0"},
		{"too many standbys", api.CreateRequest{Name: "x", PrimaryRegion: "ams", HA: ptr(2)}, 422, "needs 2 hosts in region ams"},
	}
	for _, tt := range tests {
		_, err := c.Create(ctx, tt.req)
		var ae *api.APIError
		if !errors.As(err, &ae) || ae.Status != tt.status || !strings.Contains(ae.Message, tt.want) {
			t.Errorf("%s: Create(%+v) = %v, want HTTP %d with %q", tt.name, tt.req, err, tt.status, tt.want)
		}
	}

	raw := []struct {
		name, method, path, body, token string
		status                          int
		want                            string
	}{
		{"malformed json", "POST", "/v1/clusters", `{"name": "x",`, f.Token, 400, "request body is not valid"},
		{"unknown field", "POST", "/v1/clusters", `{"name": "x", "primary_region": "iad", "hha": 3}`, f.Token, 400, `unknown field "hha"`},
		{"wrong type", "POST", "/v1/clusters", `{"name": "x", "primary_region": "iad", "ha": "three"}`, f.Token, 400, "request body is not valid"},
		{"trailing data", "POST", "/v1/clusters", `{"name": "x", "primary_region": "iad"} {}`, f.Token, 400, "data after the JSON object"},
		{"empty body", "POST", "/v1/clusters", ``, f.Token, 400, "request body is empty"},
		{"no token", "GET", "/v1/clusters", ``, "", 401, "missing bearer token"},
		{"wrong token", "GET", "/v1/clusters", ``, "pgf_wrong", 401, "invalid API token"},
		{"unknown cluster", "GET", "/v1/clusters/nope", ``, f.Token, 404, `cluster "nope": not found`},
		{"invalid cluster in path", "GET", "/v1/clusters/No_Pe", ``, f.Token, 400, "is not valid"},
		{"unknown member", "GET", "/v1/clusters/demo/url?member=demo-9", ``, f.Token, 404, "has no member \"demo-9\""},
		{"bad events limit", "GET", "/v1/clusters/demo/events?limit=-1", ``, f.Token, 400, "limit \"-1\" is not valid"},
		{"unknown endpoint", "GET", "/v1/nope", ``, f.Token, 404, "no such endpoint"},
		{"destroy without confirmation", "DELETE", "/v1/clusters/demo", ``, f.Token, 400, "repeat its name as ?confirm=demo"},
		{"destroy with another name", "DELETE", "/v1/clusters/demo?confirm=other", ``, f.Token, 400, "repeat its name as ?confirm=demo"},
	}
	for _, tt := range raw {
		req, _ := http.NewRequest(tt.method, "https://"+f.Plan.Hosts[1].API()+tt.path, strings.NewReader(tt.body))
		if tt.token != "" {
			req.Header.Set("Authorization", "Bearer "+tt.token)
		}
		resp, err := f.Client.HTTP.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var ev api.ErrorView
		err = json.NewDecoder(resp.Body).Decode(&ev)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tt.status || !strings.Contains(ev.Error, tt.want) {
			t.Errorf("%s: %s %s = %d %q (%v), want %d with %q", tt.name, tt.method, tt.path, resp.StatusCode, ev.Error, err, tt.status, tt.want)
		}
	}

	after, err := c.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("bad requests changed the cluster list: %d clusters before, %d after", len(before), len(after))
	}
	for _, h := range f.Plan.Hosts {
		entries, _ := os.ReadDir(filepath.Join(f.DataDir(h.Name), "members"))
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "demo-") {
				t.Errorf("host %s has member data %s that no request should have made", h.Name, e.Name())
			}
		}
	}
}

func destroy(t *testing.T, f *labtest.Fleet) {
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "tmp", PrimaryRegion: "ams"}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.DataDir("ams-1"), "members", "tmp-1")
	labtest.WaitFor(t, time.Minute, "tmp-1 running", func() (bool, string) {
		v, err := c.Cluster(ctx, "tmp")
		if err != nil {
			return false, err.Error()
		}
		return clusterReady(v)
	})
	if err := c.Destroy(ctx, "tmp"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cluster(ctx, "tmp"); !api.IsNotFound(err) {
		t.Fatalf("Cluster(tmp) after destroy = %v, want not found", err)
	}
	labtest.WaitFor(t, 30*time.Second, "tmp-1 data removed", func() (bool, string) {
		_, err := os.Stat(dir)
		return errors.Is(err, os.ErrNotExist), fmt.Sprintf("stat %s: %v", dir, err)
	})
	if err := c.Destroy(ctx, "tmp"); !api.IsNotFound(err) {
		t.Fatalf("second Destroy(tmp) = %v, want not found", err)
	}
	// The port block is free again: the next cluster gets it.
	v, err := c.Create(ctx, api.CreateRequest{Name: "tmp2", PrimaryRegion: "syd"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Port != 6010 {
		t.Errorf("tmp2 port = %d, want 6010 (the block tmp freed)", v.Port)
	}
	if err := c.Destroy(ctx, "tmp2"); err != nil {
		t.Fatal(err)
	}
}

func duplicateHost(t *testing.T, f *labtest.Fleet) {
	// A fourth client host that calls itself ams-1 from another address.
	addr := strings.Replace(f.Host("ams-1").Addr, ".2.1", ".9.9", 1)
	jt, err := f.Client.CreateJoinToken(context.Background(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{
		Name: "ams-1", Region: "ams", Advertise: addr, DataDir: filepath.Join(labtest.TestDir(t), "dup"),
		Join: f.Host("iad-1").API(), JoinToken: jt.Token, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = a.Run(ctx)
	want := "--name ams-1: a host of that name is already registered at " + f.Host("ams-1").Addr
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Run() of a second ams-1 = %v, want %q", err, want)
	}
	hosts, err := f.Client.Hosts(context.Background())
	if err != nil || len(hosts) != 5 {
		t.Fatalf("Hosts() = %d, %v; want the 5 hosts unchanged", len(hosts), err)
	}
}

func noQuorum(t *testing.T, f *labtest.Fleet) {
	ctx := context.Background()
	// Two of the three etcd voters go away: the fleet loses quorum.
	f.Stop("iad-2")
	f.Stop("iad-3")
	c := api.NewClient([]string{f.Plan.Hosts[0].API()}, f.Token, f.CA)
	start := time.Now()
	_, err := c.Create(ctx, api.CreateRequest{Name: "later", PrimaryRegion: "iad"})
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || !strings.Contains(ae.Message, "no quorum") {
		t.Fatalf("Create without quorum = %v, want HTTP 503 saying the store has no quorum", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Create without quorum took %s; it must fail fast", d)
	}
	// Quorum back: the request that failed left nothing behind.
	f.Start("iad-2", "")
	labtest.WaitFor(t, time.Minute, "store answers again", func() (bool, string) {
		cs, err := c.Clusters(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, cl := range cs {
			if cl.Name == "later" {
				return true, "cluster later exists"
			}
		}
		return true, ""
	})
	if _, err := c.Cluster(ctx, "later"); !api.IsNotFound(err) {
		t.Fatalf("Cluster(later) after a failed create = %v, want not found", err)
	}
}

// renewal restarts a host that does not hold the CA's key (ams-1, a store
// client) with a certificate that no longer names its address, as after an
// address change: its agent gets a new one through a voter's API while it
// runs, and serves it without a restart.
func renewal(t *testing.T, f *labtest.Fleet) {
	files := pki.Files{Dir: filepath.Join(f.DataDir("ams-1"), "tls")}
	if _, err := os.Stat(files.CAKeyPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ams-1 holds the CA key (%v): only the store's voters do", err)
	}
	ca, err := pki.Files{Dir: filepath.Join(f.DataDir("iad-1"), "tls")}.Authority()
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	stale, err := ca.Issue(key.Public(), pki.HostRequest{Name: "ams-1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.EncodeKey(key)
	f.Stop("ams-1")
	if err := files.Save(nil, nil, stale, keyPEM); err != nil {
		t.Fatal(err)
	}
	f.Start("ams-1", "")
	addr := net.ParseIP(f.Host("ams-1").Addr)
	labtest.WaitFor(t, 30*time.Second, "ams-1's certificate names its address again", func() (bool, string) {
		b, err := os.ReadFile(files.CertPath())
		if err != nil {
			return false, err.Error()
		}
		c, err := pki.ParseCert(b)
		if err != nil {
			return false, err.Error()
		}
		return pki.Covers(c, pki.HostRequest{Name: "ams-1", IPs: []net.IP{addr}}), fmt.Sprintf("names %v %v", c.DNSNames, c.IPAddresses)
	})
	hc := api.NewClient([]string{f.Host("ams-1").API()}, f.Token, f.CA)
	labtest.WaitFor(t, 10*time.Second, "ams-1's API verified with its new certificate", func() (bool, string) {
		_, err := hc.Hosts(context.Background())
		return err == nil, fmt.Sprint(err)
	})
}
