package agent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/store"
)

// TestFleetSecurity checks what an attacker on the network would try
// against a running fleet: its store without a fleet certificate, its API
// over plain HTTP or from a client that trusts another CA, joining without
// a valid token or through an agent of another fleet, and holding API
// connections open with slow requests. One two-host fleet serves every
// subtest; they run side by side.
func TestFleetSecurity(t *testing.T) {
	start := time.Now()
	f := labtest.StartFleet(t, "iad:2")
	t.Logf("fleet of 2 started in %s", time.Since(start).Round(time.Millisecond))
	fleetCA := fleetAuthority(t, f)
	// Another fleet's CA: the certificates it issues are well-formed, and
	// from the wrong authority.
	evil, err := pki.NewAuthority("evil-1", time.Now())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("store refuses clients without a fleet certificate", func(t *testing.T) {
		t.Parallel()
		storeRefusesStrangers(t, f, evil)
	})
	t.Run("API is HTTPS from the fleet's CA only", func(t *testing.T) {
		t.Parallel()
		apiRefusesStrangers(t, f, evil)
	})
	t.Run("joins", func(t *testing.T) {
		t.Parallel()
		joins(t, f, fleetCA, evil)
	})
	t.Run("slow clients", func(t *testing.T) {
		t.Parallel()
		slowClients(t, f)
	})
	t.Run("the members' certificate opens nothing", func(t *testing.T) {
		t.Parallel()
		membersCertOpensNothing(t, f)
	})
}

// membersCertOpensNothing checks that the certificate every member serves,
// whose key postgres (and so any superuser session) can read, is refused
// by etcd and by the API's renewal as a client certificate.
func membersCertOpensNothing(t *testing.T, f *labtest.Fleet) {
	pc, err := f.Store("iad-1").PostgresCert(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(pc.CertPEM, pc.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	h := f.Host("iad-1")
	err = tlsRefusal(net.JoinHostPort(h.Addr, "2379"), presenting(pair))
	if err == nil || !strings.Contains(err.Error(), "bad certificate") && !strings.Contains(err.Error(), "unsupported certificate") {
		t.Errorf("etcd with the members' certificate: %v; want the handshake refused", err)
	}
	cfg := presenting(pair)
	cfg.InsecureSkipVerify = false
	cfg.RootCAs = f.CA
	if _, err := etcdTry(t, "https://"+net.JoinHostPort(h.Addr, "2379"), cfg, "/pgfleet/members-cert-was-here"); err == nil {
		t.Fatal("an etcd client with the members' certificate read and wrote the store")
	}
}

func fleetAuthority(t *testing.T, f *labtest.Fleet) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(agent.CAPath(f.DataDir("iad-1")))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// hostIdentity is host name's certificate and key, as its agent uses them.
func hostIdentity(t *testing.T, f *labtest.Fleet, name string) *pki.Identity {
	t.Helper()
	id, err := pki.LoadIdentity(pki.Files{Dir: filepath.Join(f.DataDir(name), "tls")})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// issue certifies a fresh key with ca for ip, as a TLS client certificate.
func issue(t *testing.T, ca *pki.Authority, name, ip string) tls.Certificate {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.Issue(key.Public(), pki.HostRequest{Name: name, IPs: []net.IP{net.ParseIP(ip)}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// presenting is a TLS client configuration that presents cert whatever
// CAs the server says it accepts (crypto/tls would otherwise send no
// certificate at all when cert's issuer is not among them), and does not
// check the server: an attacker's.
func presenting(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
	}
}

// tlsRefusal connects to addr with cfg and returns the error the server's
// TLS alert makes on the first read: with TLS 1.3 the client's handshake
// completes before the server has checked the client's certificate.
func tlsRefusal(addr string, cfg *tls.Config) error {
	d := &net.Dialer{Timeout: 3 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	return err
}

// etcdTry reads and writes a key through the etcd client URL with tlsCfg,
// each within a few seconds, and returns the first error.
func etcdTry(t *testing.T, endpoint string, tlsCfg *tls.Config, key string) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second, TLS: tlsCfg, Logger: zap.NewNop(),
	})
	if err != nil {
		return time.Since(start), err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "/pgfleet/", clientv3.WithPrefix(), clientv3.WithKeysOnly()); err != nil {
		return time.Since(start), fmt.Errorf("get: %w", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, "written by "+t.Name()); err != nil {
		return time.Since(start), fmt.Errorf("put: %w", err)
	}
	return time.Since(start), nil
}

func storeRefusesStrangers(t *testing.T, f *labtest.Fleet, evil *pki.Authority) {
	h := f.Host("iad-1")
	url := "https://" + h.Addr + ":2379"
	evilCert := issue(t, evil, "evil-1", "127.0.0.1")

	// What the server answers a handshake, on the client and peer ports.
	for _, port := range []string{"2379", "2380"} {
		for _, tt := range []struct {
			name string
			cfg  *tls.Config
			want string
		}{
			{"no certificate", &tls.Config{InsecureSkipVerify: true}, "remote error: tls: certificate required"},
			{"another CA's certificate", presenting(evilCert), "remote error: tls: unknown certificate authority"},
		} {
			addr := net.JoinHostPort(h.Addr, port)
			if err := tlsRefusal(addr, tt.cfg); err == nil || err.Error() != tt.want {
				t.Errorf("TLS to etcd at %s with %s: %v, want %q", addr, tt.name, err, tt.want)
			}
		}
	}
	// The attacker does not care who the server is: only what the server
	// asks of the client stands in its way.
	tests := []struct {
		name     string
		endpoint string
		tls      *tls.Config
	}{
		{"no certificate", url, &tls.Config{InsecureSkipVerify: true}},
		{"no certificate, trusting the fleet's CA", url, &tls.Config{RootCAs: f.CA}},
		{"another CA's certificate", url, presenting(evilCert)},
		{"another CA's certificate naming the host", url, presenting(issue(t, evil, "iad-1", h.Addr))},
		{"plain text", "http://" + h.Addr + ":2379", nil},
	}
	for i, tt := range tests {
		key := fmt.Sprintf("/pgfleet/attacker-%d", i)
		took, err := etcdTry(t, tt.endpoint, tt.tls, key)
		if err == nil {
			t.Errorf("%s: etcd at %s let a client read and write the store", tt.name, tt.endpoint)
			continue
		}
		t.Logf("%s: refused after %s: %v", tt.name, took.Round(time.Millisecond), err)
		if took > 5*time.Second {
			t.Errorf("%s: took %s to refuse, want a few seconds", tt.name, took)
		}
	}

	// The host's own certificate gets through, so the refusals above are
	// the certificate's doing, not a wrong address.
	own := hostIdentity(t, f, "iad-1").ClientTLS()
	if _, err := etcdTry(t, url, own, "/pgfleet-security-test/probe"); err != nil {
		t.Fatalf("etcd with iad-1's own certificate: %v", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 3 * time.Second, TLS: own, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/pgfleet/attacker-", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("keys the refused clients tried to write: %v, %v; want none", resp, err)
	}
	if _, err := cli.Delete(ctx, "/pgfleet-security-test/", clientv3.WithPrefix()); err != nil {
		t.Error(err)
	}

	// The peer URL, through which a new voter would join, asks for a fleet
	// certificate too.
	peer := "https://" + h.Addr + ":2380/members"
	for _, tt := range []struct {
		name string
		tls  *tls.Config
		ok   bool
	}{
		{"no certificate", &tls.Config{InsecureSkipVerify: true}, false},
		{"another CA's certificate", presenting(evilCert), false},
		{"own certificate", own, true},
	} {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tt.tls}}
		resp, err := c.Get(peer)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !tt.ok {
				t.Errorf("etcd peer URL with %s: GET /members = %s %q; want the TLS handshake refused", tt.name, resp.Status, b)
			} else if resp.StatusCode != http.StatusOK {
				t.Errorf("etcd peer URL with %s: GET /members = %s; want 200", tt.name, resp.Status)
			}
			continue
		}
		if tt.ok {
			t.Errorf("etcd peer URL with %s: %v", tt.name, err)
		} else {
			t.Logf("etcd peer URL with %s: refused: %v", tt.name, err)
		}
	}
}

func apiRefusesStrangers(t *testing.T, f *labtest.Fleet, evil *pki.Authority) {
	ctx := context.Background()
	addr := f.Host("iad-1").API()
	// The fleet's own client answers: what follows fails for its reason.
	hosts, err := f.Client.Hosts(ctx)
	if err != nil || len(hosts) < 2 {
		t.Fatalf("Hosts() through the fleet's client = %v, %v; want the 2 hosts", hosts, err)
	}

	plain := &http.Client{Timeout: 5 * time.Second}
	for _, tt := range []struct{ method, path, body string }{
		{"GET", "/v1/hosts", ""},
		{"GET", "/v1/clusters", ""},
		{"POST", "/v1/tokens", `{"ttl":"1h"}`},
		{"POST", "/v1/clusters", `{"name":"plain","primary_region":"iad"}`},
	} {
		req, _ := http.NewRequest(tt.method, "http://"+addr+tt.path, strings.NewReader(tt.body))
		req.Header.Set("Authorization", "Bearer "+f.Token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := plain.Do(req)
		if err != nil {
			t.Logf("plain HTTP %s %s: %v", tt.method, tt.path, err)
			continue // refused outright is fine too
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		const want = "Client sent an HTTP request to an HTTPS server."
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), want) {
			t.Errorf("plain HTTP %s %s = %s %q; want 400 %q", tt.method, tt.path, resp.Status, b, want)
		}
		if json.Valid(b) || strings.Contains(string(b), "iad-1") || strings.Contains(string(b), "pgfj1.") {
			t.Errorf("plain HTTP %s %s answered fleet data: %q", tt.method, tt.path, b)
		}
	}
	if cs, err := f.Client.Clusters(ctx); err != nil || len(cs) != 0 {
		t.Errorf("Clusters() after plain-HTTP creates = %v, %v; want none", cs, err)
	}

	// A client that trusts another CA (a stale --ca, or a man in the
	// middle's) gets no answer, and is told what to do.
	evilPool := x509.NewCertPool()
	evilPool.AddCert(evil.Cert)
	const wantCA = "its certificate is not from the fleet's CA; pass --ca FILE with the CA that `pgfleet ca` prints on a host of the fleet"
	c := api.NewClient([]string{addr}, f.Token, evilPool)
	hosts, err = c.Hosts(ctx)
	if err == nil || !strings.Contains(err.Error(), addr+": x509: certificate signed by unknown authority") || !strings.Contains(err.Error(), wantCA) {
		t.Errorf("Hosts() trusting another CA = %v, %v; want an error with %q", hosts, err, wantCA)
	} else {
		t.Logf("Hosts() trusting another CA: %v", err)
	}
	tok, err := c.CreateJoinToken(ctx, time.Hour)
	if err == nil || !strings.Contains(err.Error(), wantCA) {
		t.Errorf("CreateJoinToken() trusting another CA = %v, %v; want an error with %q", tok, err, wantCA)
	} else {
		t.Logf("CreateJoinToken() trusting another CA: %v", err)
	}
	// No CA at all: the system's roots are not trusted instead.
	hosts, err = api.NewClient([]string{addr}, f.Token, nil).Hosts(ctx)
	if err == nil || !strings.Contains(err.Error(), wantCA) {
		t.Errorf("Hosts() with no CA = %v, %v; want an error with %q", hosts, err, wantCA)
	}
}

// joiner is the configuration of a host that asks to join f at a free
// address of f's loopback network.
func joiner(t *testing.T, f *labtest.Fleet, name, token string) agent.Config {
	oct := strings.Split(f.Host("iad-1").Addr, ".")
	return agent.Config{
		Name: name, Region: "iad", Advertise: fmt.Sprintf("%s.%s.9.9", oct[0], oct[1]),
		DataDir: filepath.Join(labtest.TestDir(t), name), Join: f.Host("iad-1").API(), JoinToken: token,
		Logger: slog.New(slog.DiscardHandler),
	}
}

// runJoiner runs an agent that must fail to join and returns its error.
func runJoiner(t *testing.T, cfg agent.Config) error {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-a.Ready():
		cancel()
		<-done
		return errors.New("the agent joined the fleet")
	}
}

func joins(t *testing.T, f *labtest.Fleet, fleetCA *x509.Certificate, evil *pki.Authority) {
	ctx := context.Background()
	joinAddr := f.Host("iad-1").API()
	minted, err := f.Client.CreateJoinToken(ctx, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	valid, err := pki.ParseJoinToken(minted.Token)
	if err != nil {
		t.Fatalf("ParseJoinToken(%q) of a token the fleet made: %v", minted.Token, err)
	}
	if valid.Pin != pki.Pin(fleetCA) {
		t.Fatalf("the fleet's join token pins %s, want its CA %s", valid.Pin, pki.Pin(fleetCA))
	}

	wrongSecret := valid
	wrongSecret.Secret = strings.Repeat("0", 32)
	unknownID := valid
	unknownID.ID = "00000000"
	otherPin := valid
	otherPin.Pin = pki.Pin(evil.Cert)

	// An expired token, as it would look in the store in the second before
	// etcd drops it (the store itself refuses to record a past expiry).
	expired := pki.NewJoinToken(fleetCA)
	rec, _ := json.Marshal(store.JoinTokenRecord{SecretHash: expired.SecretHash(), Expires: time.Now().Add(-time.Minute).UTC()})
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{"https://" + f.Host("iad-1").Addr + ":2379"}, DialTimeout: 3 * time.Second,
		TLS: hostIdentity(t, f, "iad-1").ClientTLS(), Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Put(pctx, "/pgfleet/join-tokens/"+expired.ID, string(rec)); err != nil {
		t.Fatalf("write an expired join token: %v", err)
	}
	if err := f.Store("iad-1").PutJoinToken(ctx, "0badbad0", store.JoinTokenRecord{SecretHash: expired.SecretHash(), Expires: time.Now().Add(-time.Minute)}); err == nil {
		t.Errorf("PutJoinToken() of an expired token = nil, want an error")
	}

	const refused = "join token unknown, expired or wrong: make a new one with `pgfleet token create --ttl 1h` on a host of the fleet"
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{"no token", "",
			"--join needs a join token: make one with `pgfleet token create --ttl 1h` on a host of the fleet and pass it in PGFLEET_JOIN_TOKEN (or --join-token)"},
		{"malformed token", "pgfj1." + valid.ID + "." + valid.Secret,
			"--join-token: not a join token: want pgfj1.<id>.<secret>.<ca-pin> as `pgfleet token create` prints it"},
		{"wrong secret", wrongSecret.String(), "join through " + joinAddr + ": " + refused},
		{"unknown token", unknownID.String(), "join through " + joinAddr + ": " + refused},
		{"expired token", expired.String(), "join through " + joinAddr + ": " + refused},
		// A valid id and secret, but the fleet's CA is not the one pinned:
		// to the joining host this is someone posing as its fleet.
		{"another fleet's pin", otherPin.String(),
			"join through " + joinAddr + ": the agent's CA is " + pki.Pin(fleetCA) + ", not " + pki.Pin(evil.Cert) + " as the join token says: this is not the fleet the token is from"},
	}
	for _, tt := range tests {
		start := time.Now()
		cfg := joiner(t, f, "joiner", tt.token)
		err := runJoiner(t, cfg)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: Run() = %v\nwant %q", tt.name, err, tt.want)
		}
		if _, serr := os.Stat(filepath.Join(cfg.DataDir, "tls", "host.pem")); serr == nil {
			t.Errorf("%s: a refused join left a certificate in %s", tt.name, cfg.DataDir)
		}
		t.Logf("%s: refused in %s", tt.name, time.Since(start).Round(time.Millisecond))
	}
	// Nothing was sent to the fleet with the wrong pin: had the request
	// reached the agent, it would have admitted the host (the id and secret
	// are valid) and logged it.
	for _, l := range strings.Split(readFile(t, filepath.Join(f.Dir, "iad-1.log")), "\n") {
		if strings.Contains(l, `msg="host admitted to the fleet"`) && strings.Contains(l, " host=joiner ") {
			t.Errorf("iad-1 admitted joiner although every join above was refused: %s", l)
		}
	}
	if hosts, err := f.Client.Hosts(ctx); err != nil || len(hosts) != 2 {
		t.Errorf("Hosts() after refused joins = %v, %v; want the 2 hosts", hosts, err)
	}

	// The valid token admits the host: it gets a certificate from the
	// fleet's CA for its address, and its agent becomes ready.
	start := time.Now()
	cfg := joiner(t, f, "joiner", minted.Token)
	logPath := cfg.DataDir + "-agent.log"
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cfg.Logger = slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("joined agent's Run() = %v, want nil after its context ended", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("joined agent did not stop within 60s")
		}
	}()
	select {
	case <-a.Ready():
	case err := <-done:
		done <- err // for the deferred stop
		t.Fatalf("joining with a valid token: Run() = %v\n%s", err, lab.Tail(logPath, 20))
	case <-time.After(90 * time.Second):
		t.Fatalf("joining agent not ready after 90s\n%s", lab.Tail(logPath, 20))
	}
	t.Logf("valid join: ready in %s", time.Since(start).Round(time.Millisecond))
	files := pki.Files{Dir: filepath.Join(cfg.DataDir, "tls")}
	cert, err := pki.ParseCert([]byte(readFile(t, files.CertPath())))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(fleetCA)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: cfg.Advertise, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("joined host's certificate (usage %v) against the fleet's CA: %v", usage, err)
		}
	}
	if cert.Subject.CommonName != "joiner" {
		t.Errorf("joined host's certificate is for %q, want joiner", cert.Subject.CommonName)
	}
	if ca := readFile(t, files.CAPath()); ca != readFile(t, agent.CAPath(f.DataDir("iad-1"))) {
		t.Errorf("joined host's ca.crt is not the fleet's CA")
	}
	// The fleet had two voters, so the joined host is the third and holds
	// the CA's key, as only the agent should read it.
	for _, p := range []string{files.KeyPath(), files.CAKeyPath()} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("joined host's %s: %v, %v; want mode 0600", filepath.Base(p), fi, err)
		}
	}
	if fi, err := os.Stat(files.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("joined host's %s: %v, %v; want mode 0700", files.Dir, fi, err)
	}
	labtest.WaitFor(t, 30*time.Second, "joiner listed among the hosts", func() (bool, string) {
		hosts, err := f.Client.Hosts(ctx)
		if err != nil {
			return false, err.Error()
		}
		var names []string
		for _, h := range hosts {
			names = append(names, h.Name)
		}
		return len(hosts) == 3 && strings.Contains(strings.Join(names, ","), "joiner"), strings.Join(names, ",")
	})
	// The joined host's API serves the fleet's certificate for its address.
	c := api.NewClient([]string{cfg.Advertise + ":7480"}, f.Token, f.CA)
	if _, err := c.Health(ctx); err != nil {
		t.Errorf("Health() of the joined host with the fleet's CA: %v", err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// slowClients hold API connections open: one sends its request's body too
// slowly, one its header, one never even finishes the TLS handshake. The
// agent must drop each after its timeout (ReadTimeout for the whole request,
// ReadHeaderTimeout for the header and the handshake), or a few hundred such
// clients would hold every API connection.
func slowClients(t *testing.T, f *labtest.Fleet) {
	// The API server's timeouts in agent.go.
	const readTimeout, readHeaderTimeout = 30 * time.Second, 10 * time.Second
	h := f.Host("iad-2")
	tlsCfg := &tls.Config{RootCAs: f.CA, ServerName: h.Addr}
	header := fmt.Sprintf("POST /v1/clusters HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", h.API(), f.Token)
	type result struct {
		name   string
		took   time.Duration
		answer string
		err    error
	}
	hold := func(name string, handshake bool, send string) result {
		raw, err := net.DialTimeout("tcp", h.API(), 3*time.Second)
		if err != nil {
			return result{name: name, err: err}
		}
		defer raw.Close()
		start := time.Now()
		conn := raw
		if handshake {
			tc := tls.Client(raw, tlsCfg)
			if err := tc.Handshake(); err != nil {
				return result{name: name, err: err}
			}
			conn = tc
		}
		io.WriteString(conn, send)
		conn.SetReadDeadline(time.Now().Add(readTimeout + 15*time.Second))
		var answer strings.Builder
		_, err = io.Copy(&answer, bufio.NewReader(conn))
		return result{name, time.Since(start), answer.String(), err}
	}
	tests := []struct {
		name      string
		handshake bool
		send      string
		limit     time.Duration
	}{
		// The header and one byte of a 1000-byte body, then nothing.
		{"slow body", true, header + "{", readTimeout},
		// Half a header, then nothing.
		{"slow header", true, header[:40], readHeaderTimeout},
		// A TCP connection that never starts TLS.
		{"no handshake", false, "", readHeaderTimeout},
	}
	results := make(chan result, len(tests))
	for _, tt := range tests {
		go func() { results <- hold(tt.name, tt.handshake, tt.send) }()
	}
	got := map[string]result{}
	for range tests {
		r := <-results
		got[r.name] = r
	}
	for _, tt := range tests {
		r := got[tt.name]
		t.Logf("%s: connection closed after %s (%v), answer %q", tt.name, r.took.Round(time.Millisecond), r.err, firstLine(r.answer))
		var ne net.Error
		if errors.As(r.err, &ne) && ne.Timeout() {
			t.Errorf("%s: the agent still held the connection after %s", tt.name, r.took.Round(time.Millisecond))
			continue
		}
		if r.took == 0 {
			t.Errorf("%s: %v", tt.name, r.err)
			continue
		}
		if r.took > tt.limit+5*time.Second {
			t.Errorf("%s: the agent held the connection %s, want at most %s and a margin", tt.name, r.took.Round(time.Millisecond), tt.limit)
		}
		if strings.HasPrefix(r.answer, "HTTP/1.1 2") {
			t.Errorf("%s: the agent answered %q to an incomplete request", tt.name, firstLine(r.answer))
		}
	}
	if cs, err := f.Client.Clusters(context.Background()); err != nil || len(cs) != 0 {
		t.Errorf("Clusters() after slow clients = %v, %v; want none", cs, err)
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}
