package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/store"
)

// TestCARotation replaces a running fleet's CA while an app connects and
// writes through the proxy with sslmode=verify-full the whole time, and
// leaves one host behind. Afterwards every other host has a certificate
// from the new CA and trusts only it, the store's voters hold only the new
// key, a certificate from the old CA opens neither etcd nor the API, the
// cluster never failed over, and every acknowledged write is there.
func TestCARotation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five agents and three postgres instances")
	}
	f := labtest.StartFleet(t, "iad:3,ams:2")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "rot", PrimaryRegion: "iad", HA: ptr(2), Replicas: []string{"ams"}}); err != nil {
		t.Fatal(err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, "cluster rot ready", func() (bool, string) {
		var err error
		if v, err = c.Cluster(ctx, "rot"); err != nil {
			return false, err.Error()
		}
		return clusterReady(v)
	})
	primary := v.Primary
	// The ams host without a member is the one the rotation leaves behind.
	left := "ams-1"
	for _, m := range v.Members {
		if m.Host == "ams-1" {
			left = "ams-2"
		}
	}
	oldFiles := pki.Files{Dir: filepath.Join(f.DataDir("iad-1"), "tls")}
	oldCA, err := oldFiles.Authority()
	if err != nil || oldCA.Key == nil {
		t.Fatalf("the first host's CA: %v (key held: %v)", err, oldCA != nil && oldCA.Key != nil)
	}

	// The app: a new verified connection through the proxy for every
	// write, so that every handshake of the rotation is tried. Its CA file
	// is the first host's, which the rotation changes under it, as an
	// operator's copy would be after `pgfleet ca`.
	u, err := c.ClusterURL(ctx, "rot", api.URLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(u.URL, "sslmode=verify-full") {
		t.Fatalf("URL %s does not verify the server", u.URL)
	}
	if _, err := pgxExec(ctx, u.URL, "CREATE TABLE writes (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	var acked, failed atomic.Int64
	var firstFail atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := pgxExec(ctx, u.URL, fmt.Sprintf("INSERT INTO writes VALUES (%d)", i)); err != nil {
				failed.Add(1)
				firstFail.CompareAndSwap(nil, err.Error())
				continue
			}
			acked.Add(1)
		}
	}()

	// A join token from before: the rotation ends them all (a host left
	// behind could have written one while it could reach the store).
	jt, err := c.CreateJoinToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := pki.ParseJoinToken(jt.Token)
	if err != nil {
		t.Fatal(err)
	}
	rv, err := c.RotateCA(ctx, []string{left})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RotateCA(ctx, nil); err == nil || !strings.Contains(err.Error(), "already under way") {
		t.Errorf("a second rotation while one runs: %v, want refused as already under way", err)
	}
	if _, err := c.CreateJoinToken(ctx, time.Hour); err == nil || !strings.Contains(err.Error(), "CA rotation") {
		t.Errorf("a join token during the rotation: %v, want refused (it would pin the old CA)", err)
	}
	// The CLI's way: trust the new CA beside the old one as soon as the
	// rotation names it, since hosts start presenting it.
	seen := map[pki.Phase]bool{}
	labtest.WaitFor(t, 4*time.Minute, "CA rotation "+rv.ID+" finished", func() (bool, string) {
		s, err := c.CARotation(ctx)
		if api.IsNotFound(err) {
			return true, ""
		}
		if err != nil {
			return false, err.Error()
		}
		seen[s.Phase] = true
		if s.NewCA != "" && c == f.Client {
			pool, err := pki.Pool(pki.Bundle([]byte(s.NewCA), oldCA.CertPEM))
			if err != nil {
				return false, err.Error()
			}
			c = api.NewClient(lab.Endpoints(f.Plan), f.Token, pool)
		}
		return false, fmt.Sprintf("phase %s, waiting for %v", s.Phase, s.Waiting)
	})
	t.Logf("phases seen: %v", seen)
	close(stop)
	wg.Wait()

	newCAPEM, err := os.ReadFile(filepath.Join(f.DataDir("iad-1"), "tls", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCerts(newCAPEM)
	if err != nil || len(certs) != 1 || pki.Pin(certs[0]) == pki.Pin(oldCA.Cert) {
		t.Fatalf("iad-1 trusts %d CAs (%v) after the rotation; want one, the new one", len(certs), err)
	}
	newCA := certs[0]
	for _, h := range f.Plan.Hosts {
		files := pki.Files{Dir: filepath.Join(f.DataDir(h.Name), "tls")}
		id, err := pki.LoadIdentity(files)
		if err != nil {
			t.Fatal(err)
		}
		ca, err := files.Authority()
		if err != nil {
			t.Fatal(err)
		}
		fromNew := pki.IssuedBy(id.Leaf(), newCA)
		if h.Name == left {
			if fromNew {
				t.Errorf("%s, left behind, has a certificate from the new CA", h.Name)
			}
			continue
		}
		if !fromNew || !pki.SameCerts(ca.CertPEM, newCAPEM) {
			t.Errorf("%s: certificate from the new CA %v, trusts only the new CA %v", h.Name, fromNew, pki.SameCerts(ca.CertPEM, newCAPEM))
		}
		voter := strings.HasPrefix(h.Name, "iad-")
		if voter != (ca.Key != nil) || (ca.Key != nil && !pki.KeyMatches(ca.Key, newCA)) {
			t.Errorf("%s: holds a CA key %v, want %v, and only the new CA's", h.Name, ca.Key != nil, voter)
		}
	}

	if _, err := f.Store("iad-1").JoinToken(ctx, tok.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the join token made before the rotation: %v; want gone", err)
	}
	if !seen[pki.PhaseMembers] && !seen[pki.PhaseRetire] {
		t.Errorf("phases seen %v: the rotation went through no retire or members phase", seen)
	}

	// The old CA's key, as a thief of it would use it.
	stolen := issue(t, oldCA, "iad-2", f.Host("iad-2").Addr)
	for _, h := range f.Plan.Hosts[:3] {
		ep := "https://" + h.Addr + ":2379"
		if _, err := etcdTry(t, ep, presenting(stolen), "/pgfleet/stolen"); err == nil {
			t.Errorf("etcd on %s accepts a client certificate from the retired CA", h.Name)
		}
	}
	// The API asks for client certificates only optionally: one from the
	// retired CA fails the handshake rather than pass for a host's.
	if err := tlsRefusal(f.Host("iad-1").API(), presenting(stolen)); err == nil {
		t.Error("the API accepts a client certificate from the retired CA")
	}
	// Each voter's store client, with its new certificate, still works.
	for _, h := range f.Plan.Hosts[:3] {
		if _, err := f.Store(h.Name).Hosts(ctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("%s's store client after the rotation: %v", h.Name, err)
		}
	}

	// A CLI that trusts only the new CA reaches the API; the cluster never
	// failed over; every acknowledged write is there.
	pool, err := pki.Pool(newCAPEM)
	if err != nil {
		t.Fatal(err)
	}
	nc := api.NewClient(lab.Endpoints(f.Plan), f.Token, pool)
	nc.CAFile = filepath.Join(f.DataDir("iad-1"), "tls", "ca.crt")
	v, err = nc.Cluster(ctx, "rot")
	if err != nil {
		t.Fatalf("the API with the new CA: %v", err)
	}
	if v.Primary != primary {
		t.Errorf("primary %s after the rotation, was %s: the rotation caused a failover", v.Primary, primary)
	}
	for _, m := range v.Members {
		if m.Timeline != 1 || !m.Healthy || (m.Role != fleet.RolePrimary && m.State != fleet.StateStreaming) {
			t.Errorf("member %s: %s %s timeline %d healthy %v after the rotation", m.ID, m.Role, m.State, m.Timeline, m.Healthy)
		}
	}
	var rows int64
	conn, err := pgx.Connect(ctx, u.URL)
	if err != nil {
		t.Fatalf("connect with the new CA: %v", err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM writes").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	t.Logf("app during the rotation: %d writes acknowledged, %d failed", acked.Load(), failed.Load())
	if rows != acked.Load() {
		t.Errorf("%d rows, %d acknowledged writes", rows, acked.Load())
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of the app's verified connections failed during the rotation; first: %v", n, firstFail.Load())
	}

	// A client that trusts only the old CA no longer verifies the members.
	oldRoot := filepath.Join(t.TempDir(), "old.crt")
	if err := os.WriteFile(oldRoot, oldCA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	oldURL := strings.Replace(u.URL, "sslrootcert="+nc.CAFile, "sslrootcert="+oldRoot, 1)
	if oldURL == u.URL {
		t.Fatalf("URL %s names no sslrootcert to swap", u.URL)
	}
	if _, err := pgxExec(ctx, oldURL, "SELECT 1"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client that trusts only the old CA: %v, want a certificate verification failure", err)
	}
}

// pgxExec runs sql on a connection of its own.
func pgxExec(ctx context.Context, url, sql string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	tag, err := conn.Exec(ctx, sql)
	return tag.RowsAffected(), err
}
