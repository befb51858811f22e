package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// tlsFiles is where this host keeps its certificate, key and the CA.
func (a *Agent) tlsFiles() pki.Files { return pki.Files{Dir: filepath.Join(a.cfg.DataDir, "tls")} }

// CAPath is where the fleet's CA certificate is kept on a host.
func CAPath(dataDir string) string { return pki.Files{Dir: filepath.Join(dataDir, "tls")}.CAPath() }

// hostRequest is what this host's certificate must name: its name and
// every address clients, peers and the CLI reach it at.
func (a *Agent) hostRequest() pki.HostRequest {
	req := pki.HostRequest{Name: a.cfg.Name, IPs: []net.IP{net.ParseIP(a.cfg.Advertise)}}
	if h, _, err := net.SplitHostPort(a.cfg.APIListen); err == nil {
		if ip := net.ParseIP(h); ip != nil && !ip.IsUnspecified() && !ip.Equal(req.IPs[0]) {
			req.IPs = append(req.IPs, ip)
		}
	}
	return req
}

// embeddedIdentity gives a host of a fleet on embedded etcd its
// certificate before the store starts: the first host makes the fleet's
// CA, a joining host is admitted by an agent of the fleet with a join
// token, and a restarting host reads what it has. It returns the etcd
// client URL a joining host joins the store through.
func (a *Agent) embeddedIdentity(ctx context.Context) (*pki.Identity, *pki.Authority, string, error) {
	files := a.tlsFiles()
	if files.Exists() {
		id, ca, err := a.loadIdentity(files)
		if err != nil {
			return nil, nil, "", err
		}
		// Admitted, but stopped before its store member was in place: it
		// joins the store again rather than make a fleet of its own.
		join, err := a.unfinishedJoin()
		return id, ca, join, err
	}
	if a.hasStoreMember() {
		return nil, nil, "", fmt.Errorf("%s holds a store member but no certificate (%s): it was made by a pgfleet without TLS: move the data dir away and join the host again (for a dev fleet, `pgfleet dev down --purge` then `pgfleet dev up`)", a.cfg.DataDir, files.CertPath())
	}
	if a.cfg.Join == "" {
		ca, err := pki.NewAuthority(a.cfg.Name, time.Now())
		if err != nil {
			return nil, nil, "", err
		}
		if err := a.issueLocally(files, ca); err != nil {
			return nil, nil, "", err
		}
		a.log.Info("created the fleet's certificate authority", "ca", files.CAPath(), "pin", pki.Pin(ca.Cert))
		id, err := pki.LoadIdentity(files)
		return id, ca, "", err
	}
	return a.join(ctx, files)
}

// join asks the agent at --join to admit this host.
func (a *Agent) join(ctx context.Context, files pki.Files) (*pki.Identity, *pki.Authority, string, error) {
	if a.cfg.JoinToken == "" {
		return nil, nil, "", errors.New("--join needs a join token: make one with `pgfleet token create --ttl 1h` on a host of the fleet and pass it in PGFLEET_JOIN_TOKEN (or --join-token)")
	}
	tok, err := pki.ParseJoinToken(a.cfg.JoinToken)
	if err != nil {
		return nil, nil, "", fmt.Errorf("--join-token: %w", err)
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, nil, "", err
	}
	csr, err := pki.NewCSR(key, a.hostRequest())
	if err != nil {
		return nil, nil, "", err
	}
	jctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := api.Join(jctx, a.cfg.Join, tok, csr)
	if err != nil {
		return nil, nil, "", err
	}
	if err := checkAdmission(resp, tok, key); err != nil {
		return nil, nil, "", fmt.Errorf("join through %s: %w", a.cfg.Join, err)
	}
	if len(resp.Etcd) == 0 {
		return nil, nil, "", fmt.Errorf("join through %s: the fleet named no store endpoint", a.cfg.Join)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return nil, nil, "", err
	}
	// Recorded before the certificate: a host with a certificate and no
	// store member of its own either made the fleet or has this record.
	if err := a.recordJoin(resp.Etcd); err != nil {
		return nil, nil, "", err
	}
	var caKey []byte
	if resp.CAKey != "" {
		caKey = []byte(resp.CAKey)
	}
	if err := files.Save([]byte(resp.CA), caKey, []byte(resp.Cert), keyPEM); err != nil {
		return nil, nil, "", err
	}
	id, ca, err := a.loadIdentity(files)
	if err != nil {
		return nil, nil, "", err
	}
	a.log.Info("admitted to the fleet", "through", a.cfg.Join, "ca", pki.Pin(ca.Cert), "holds_ca_key", ca.Key != nil)
	return id, ca, resp.Etcd[0], nil
}

// checkAdmission checks what the fleet answered a join with: the CA is the
// one the token pins, and the certificate is for this host's key and from
// that CA.
func checkAdmission(resp api.JoinResponse, tok pki.JoinToken, key *ecdsa.PrivateKey) error {
	ca, err := pki.ParseCert([]byte(resp.CA))
	if err != nil {
		return fmt.Errorf("the fleet's CA: %w", err)
	}
	if !pki.PinMatches(ca, tok.Pin) {
		return fmt.Errorf("the fleet answered with CA %s, not the %s the join token pins", pki.Pin(ca), tok.Pin)
	}
	cert, err := pki.ParseCert([]byte(resp.Cert))
	if err != nil {
		return fmt.Errorf("this host's certificate: %w", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return errors.New("the certificate the fleet issued is not for this host's key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("the certificate the fleet issued: %w", err)
	}
	if resp.CAKey != "" {
		k, err := pki.ParseKey([]byte(resp.CAKey))
		if err != nil {
			return fmt.Errorf("the fleet CA's key: %w", err)
		}
		if pub, ok := k.Public().(*ecdsa.PublicKey); !ok || !pub.Equal(ca.PublicKey) {
			return errors.New("the CA key the fleet sent does not belong to its CA")
		}
	}
	return nil
}

// loadIdentity reads this host's material and, on a host that holds the
// CA's key, renews its own certificate when two thirds of its life are
// gone or its addresses changed.
func (a *Agent) loadIdentity(files pki.Files) (*pki.Identity, *pki.Authority, error) {
	ca, err := files.Authority()
	if err != nil {
		return nil, nil, err
	}
	id, err := pki.LoadIdentity(files)
	if err != nil {
		return nil, nil, err
	}
	leaf := id.Leaf()
	stale := pki.NeedsRenewal(leaf, time.Now()) || !pki.Covers(leaf, a.hostRequest())
	switch {
	case stale && ca.Key != nil:
		if err := a.issueLocally(files, ca); err != nil {
			return nil, nil, err
		}
		if err := id.Reload(); err != nil {
			return nil, nil, err
		}
		a.log.Info("renewed this host's certificate", "expires", id.Leaf().NotAfter)
	case time.Now().After(leaf.NotAfter):
		return nil, nil, fmt.Errorf("this host's certificate expired on %s and this host does not hold the CA's key: join it again with a join token", leaf.NotAfter.Format(time.DateOnly))
	case stale:
		a.log.Info("this host's certificate is due for renewal: a voter's agent renews it once this agent runs", "expires", leaf.NotAfter)
	}
	return id, ca, nil
}

// issueLocally certifies a fresh key for this host with the CA it holds.
func (a *Agent) issueLocally(files pki.Files, ca *pki.Authority) error {
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	cert, err := ca.Issue(key.Public(), a.hostRequest(), time.Now())
	if err != nil {
		return err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	caKey, err := pki.EncodeKey(ca.Key)
	if err != nil {
		return err
	}
	return files.Save(ca.CertPEM, caKey, cert, keyPEM)
}

// externalIdentity gives a host of a fleet on an existing etcd its
// certificate. The fleet's CA is kept in that etcd, whose own TLS protects
// it: the first agent makes it, every agent issues its own certificate.
func (a *Agent) externalIdentity(ctx context.Context, st *store.Store) (*pki.Identity, *pki.Authority, error) {
	files := a.tlsFiles()
	ca, err := pki.NewAuthority(a.cfg.Name, time.Now())
	if err != nil {
		return nil, nil, err
	}
	caKey, err := pki.EncodeKey(ca.Key)
	if err != nil {
		return nil, nil, err
	}
	certPEM, keyPEM, err := st.InitCA(ctx, ca.CertPEM, caKey)
	if err != nil {
		return nil, nil, err
	}
	stored, err := pki.ParseCert(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("the fleet's CA in the store: %w", err)
	}
	key, err := pki.ParseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("the fleet's CA key in the store: %w", err)
	}
	ca = &pki.Authority{Cert: stored, CertPEM: certPEM, Key: key}
	_, _, rotErr := st.CARotation(ctx)
	switch {
	case !files.Exists():
		if err := a.issueLocally(files, ca); err != nil {
			return nil, nil, err
		}
	case rotErr == nil:
		// A CA rotation is under way: this host's files are ahead of the
		// CA the store holds until its end.
	case !errors.Is(rotErr, store.ErrNotFound):
		return nil, nil, rotErr
	default:
		if err := files.Save(ca.CertPEM, keyPEM, nil, nil); err != nil {
			return nil, nil, err
		}
	}
	id, ca, err := a.loadIdentity(files)
	return id, ca, err
}

// externalTLS is how the agent reaches an existing etcd: with the
// --etcd-cacert/--etcd-cert/--etcd-key it was given.
func (a *Agent) externalTLS() (*tls.Config, error) {
	c := a.cfg
	if c.EtcdCACert == "" && c.EtcdCert == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.EtcdCACert != "" {
		b, err := os.ReadFile(c.EtcdCACert)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cacert: %w", err)
		}
		if cfg.RootCAs, err = pki.Pool(b); err != nil {
			return nil, fmt.Errorf("--etcd-cacert %s: %w", c.EtcdCACert, err)
		}
	}
	if c.EtcdCert != "" {
		pair, err := tls.LoadX509KeyPair(c.EtcdCert, c.EtcdKey)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// postgresCertName is the name the members' certificate is issued to.
const postgresCertName = "pgfleet-postgres"

// postgresTLSEvery is how often an agent checks that the members'
// certificate still names every host: a host that joined is covered that
// long after a store voter's agent notices it.
const postgresTLSEvery = 10 * time.Second

// postgresTLS returns what members on this host serve and trust; empty
// until refreshPostgresTLS first succeeded.
func (a *Agent) postgresTLS() postgres.ServerTLS {
	if t := a.pgTLS.Load(); t != nil {
		return *t
	}
	return postgres.ServerTLS{}
}

// refreshPostgresTLS keeps the members' certificate (store.PostgresCert)
// naming every host of the fleet, renews it when it ages, and installs it
// for this host's members when it changed. Only a host that holds the CA's
// key issues one; the others wait for it.
func (a *Agent) refreshPostgresTLS(ctx context.Context) error {
	hosts, err := a.store.Hosts(ctx)
	if err != nil && !store.OnlyInvalid(err) {
		return err
	}
	cur, err := a.store.PostgresCert(ctx)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	want := pki.HostRequest{Name: postgresCertName}
	seen := map[string]bool{postgresCertName: true}
	addName := func(n string) {
		if !seen[n] {
			seen[n] = true
			want.DNS = append(want.DNS, n)
		}
	}
	addIP := func(ip net.IP) {
		if ip != nil && !seen[ip.String()] {
			seen[ip.String()] = true
			want.IPs = append(want.IPs, ip)
		}
	}
	addIP(net.ParseIP(a.cfg.Advertise))
	addName(a.cfg.Name)
	for _, h := range hosts {
		addIP(net.ParseIP(h.Addr))
		addName(h.Name)
	}
	var leaf *x509.Certificate
	if cur.CertPEM != nil {
		if leaf, err = pki.ParseCert(cur.CertPEM); err != nil {
			return fmt.Errorf("the members' certificate in the store: %w", err)
		}
		// A host that is down now keeps its place: its clients come back.
		for _, ip := range leaf.IPAddresses {
			addIP(ip)
		}
		for _, n := range leaf.DNSNames {
			addName(n)
		}
	}
	stale := leaf == nil || !pki.Covers(leaf, want) || pki.NeedsRenewal(leaf, time.Now()) || pki.ClientCapable(leaf)
	issuer := a.ca != nil && a.ca.Key != nil
	if rot := a.rotation.Load(); rot != nil && rot.Phase != pki.PhaseRequested {
		// During a CA rotation only its coordinator issues, and from the
		// new CA once it holds its key: two key holders on different CAs
		// would otherwise undo each other's work.
		newCA, err := pki.ParseCert(rot.NewCA)
		if err != nil {
			return fmt.Errorf("the new CA: %w", err)
		}
		onNew := issuer && pki.KeyMatches(a.ca.Key, newCA)
		issuer = issuer && rot.Coordinator == a.cfg.Name && (onNew || rot.Phase == pki.PhaseTrust)
		stale = stale || (onNew && !pki.IssuedBy(leaf, newCA))
	}
	if stale && issuer {
		key, err := pki.NewKey()
		if err != nil {
			return err
		}
		certPEM, err := a.ca.IssueServer(key.Public(), want, time.Now())
		if err != nil {
			return err
		}
		keyPEM, err := pki.EncodeKey(key)
		if err != nil {
			return err
		}
		next := store.PostgresCert{CertPEM: certPEM, KeyPEM: keyPEM}
		ok, err := a.store.ReplacePostgresCert(ctx, next, cur.Revision)
		if err != nil {
			return err
		}
		if ok {
			a.log.Info("issued the members' certificate", "hosts", len(want.IPs))
			cur = next
		} else if cur, err = a.store.PostgresCert(ctx); err != nil {
			return err // another host renewed it at the same moment
		}
	}
	if cur.CertPEM == nil {
		return errors.New("the fleet has no certificate for its members yet: one of the store's voters makes it")
	}
	next := postgres.ServerTLS{CertPEM: cur.CertPEM, KeyPEM: cur.KeyPEM, CAPEM: a.ca.CertPEM}
	if old := a.pgTLS.Load(); old == nil || !bytes.Equal(old.CertPEM, next.CertPEM) || !bytes.Equal(old.CAPEM, next.CAPEM) {
		a.pgTLS.Store(&next)
	}
	// Every time, not only on a change: an install that failed (a full
	// disk) is tried again, and one that is in place costs three reads.
	for _, r := range a.sups {
		r.sup.installTLS()
	}
	return nil
}

// renewHostCert renews this host's certificate once two thirds of its life
// have passed (or its addresses changed): itself on a host that holds the
// CA's key, otherwise through any agent that does, presenting the current
// certificate. Servers and clients pick the new one up at their next
// handshake: nothing restarts.
func (a *Agent) renewHostCert(ctx context.Context) error {
	leaf := a.identity.Leaf()
	req := a.hostRequest()
	if !pki.NeedsRenewal(leaf, time.Now()) && pki.Covers(leaf, req) {
		return nil
	}
	files := a.tlsFiles()
	rot := a.rotation.Load()
	if rot != nil && a.ca.Key != nil && (rot.Phase == pki.PhaseRequested || rot.Phase == pki.PhaseTrust) {
		// A key holder's new CA key is sealed to this host's key: it keeps
		// that key until it has taken the new one.
		return nil
	}
	// The CA that issued the certificate now: during a rotation a host
	// trusts two, and keeps to the one it has until the reissue.
	issuer := a.ca.Cert
	if certs, err := pki.ParseCerts(a.ca.CertPEM); err == nil {
		for _, c := range certs {
			if pki.IssuedBy(leaf, c) {
				issuer = c
			}
		}
	}
	if a.ca.Key != nil && pki.KeyMatches(a.ca.Key, issuer) {
		if err := a.issueLocally(files, a.ca); err != nil {
			return err
		}
	} else if err := a.renewThroughFleet(ctx, files, req, issuer); err != nil {
		return err
	}
	if err := a.identity.Reload(); err != nil {
		return err
	}
	a.log.Info("renewed this host's certificate", "expires", a.identity.Leaf().NotAfter)
	return nil
}

// renewThroughFleet asks the agents that hold the CA's key for a
// certificate from issuer.
func (a *Agent) renewThroughFleet(ctx context.Context, files pki.Files, req pki.HostRequest, issuer *x509.Certificate) error {
	hosts, err := a.store.Hosts(ctx)
	if err != nil && !store.OnlyInvalid(err) {
		return err
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	csr, err := pki.NewCSR(key, req)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hosts {
		if h.Name == a.cfg.Name || h.APIAddr == "" {
			continue
		}
		resp, err := api.Renew(ctx, h.APIAddr, a.identity.ClientTLS(), csr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cert, err := pki.ParseCert([]byte(resp.Cert))
		if err != nil {
			return fmt.Errorf("renew through %s: %w", h.Name, err)
		}
		if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
			return fmt.Errorf("renew through %s: the certificate is not for this host's key", h.Name)
		}
		if !pki.IssuedBy(cert, issuer) {
			// During a CA rotation a key holder may not have the new key yet.
			errs = append(errs, fmt.Errorf("%s issued from another CA than %s", h.Name, pki.Pin(issuer)))
			continue
		}
		keyPEM, err := pki.EncodeKey(key)
		if err != nil {
			return err
		}
		return files.Save(nil, nil, pki.EncodeCert(cert), keyPEM)
	}
	return fmt.Errorf("no host renewed this host's certificate: %w", errors.Join(errs...))
}

// joinRecord is <data-dir>/tls/join.json: where a joining host was told the
// store is, kept until its store member is in place.
type joinRecord struct {
	Etcd []string `json:"etcd"`
}

func (a *Agent) joinRecordPath() string { return filepath.Join(a.tlsFiles().Dir, "join.json") }

func (a *Agent) recordJoin(etcd []string) error {
	if err := os.MkdirAll(a.tlsFiles().Dir, 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(joinRecord{Etcd: etcd})
	tmp := a.joinRecordPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("record the join: %w", err)
	}
	return os.Rename(tmp, a.joinRecordPath())
}

// hasStoreMember reports whether this host has taken its part in the
// embedded store (store.StartEmbedded records it in etcd/role.json).
func (a *Agent) hasStoreMember() bool {
	_, err := os.Stat(filepath.Join(a.cfg.DataDir, "etcd", "role.json"))
	return err == nil
}

// unfinishedJoin returns the store endpoint of a join that stopped after
// the host was admitted and before its store member was in place; "" when
// the host's store member exists or the host made the fleet.
func (a *Agent) unfinishedJoin() (string, error) {
	if a.hasStoreMember() {
		return "", nil
	}
	b, err := os.ReadFile(a.joinRecordPath())
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", a.joinRecordPath(), err)
	}
	var r joinRecord
	if err := json.Unmarshal(b, &r); err != nil || len(r.Etcd) == 0 {
		return "", fmt.Errorf("read %s: %v (move the data dir away and join the host again)", a.joinRecordPath(), err)
	}
	a.log.Warn("the last join stopped before this host's store member was in place; joining the store again", "etcd", r.Etcd[0])
	return r.Etcd[0], nil
}
