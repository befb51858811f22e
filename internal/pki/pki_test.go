package pki_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/pki"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func newCA(t *testing.T, name string) *pki.Authority {
	t.Helper()
	ca, err := pki.NewAuthority(name, now)
	if err != nil {
		t.Fatalf("NewAuthority(%s): %v", name, err)
	}
	return ca
}

func pool(cas ...*pki.Authority) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.Cert)
	}
	return p
}

func TestJoinTokenRoundTrip(t *testing.T) {
	ca := newCA(t, "iad-1")
	tok := pki.NewJoinToken(ca.Cert)
	s := tok.String()
	if !strings.HasPrefix(s, "pgfj1."+tok.ID+"."+tok.Secret+".") || strings.Contains(s, "sha256:") {
		t.Errorf("JoinToken.String() = %q, want pgfj1.<id>.<secret>.<pin hex>", s)
	}
	got, err := pki.ParseJoinToken(s)
	if err != nil {
		t.Fatalf("ParseJoinToken(%q): %v", s, err)
	}
	if got != tok {
		t.Errorf("ParseJoinToken(%q) = %+v, want %+v", s, got, tok)
	}
	if got.Pin != pki.Pin(ca.Cert) {
		t.Errorf("ParseJoinToken(%q).Pin = %q, want the CA's pin %q", s, got.Pin, pki.Pin(ca.Cert))
	}
	// A token pasted with its newline still reads.
	if got, err := pki.ParseJoinToken("  " + s + "\n"); err != nil || got != tok {
		t.Errorf("ParseJoinToken(%q) = %+v, %v; want %+v", s+"\n", got, err, tok)
	}
	if !pki.SecretMatches(tok.Secret, tok.SecretHash()) {
		t.Errorf("SecretMatches(secret, SecretHash()) = false, want true")
	}
	if pki.SecretMatches(strings.Repeat("0", 32), tok.SecretHash()) {
		t.Errorf("SecretMatches(another secret, SecretHash()) = true, want false")
	}
	if other := pki.NewJoinToken(ca.Cert); other.ID == tok.ID || other.Secret == tok.Secret {
		t.Errorf("two NewJoinToken() share an id or a secret: %+v, %+v", tok, other)
	}
}

func TestParseJoinTokenRefusesMalformed(t *testing.T) {
	ca := newCA(t, "iad-1")
	good := pki.NewJoinToken(ca.Cert).String()
	parts := strings.Split(good, ".")
	const want = "not a join token: want pgfj1.<id>.<secret>.<ca-pin> as `pgfleet token create` prints it"
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"API token instead", "pgf_0123456789abcdef0123456789abcdef"},
		{"other version", "pgfj2." + strings.Join(parts[1:], ".")},
		{"no pin", strings.Join(parts[:3], ".")},
		{"pin with sha256 prefix", strings.Join(parts[:3], ".") + ".sha256:" + parts[3]},
		{"short id", "pgfj1.abc." + parts[2] + "." + parts[3]},
		{"short secret", "pgfj1." + parts[1] + "." + parts[2][:31] + "." + parts[3]},
		{"short pin", "pgfj1." + parts[1] + "." + parts[2] + "." + parts[3][:63]},
		{"upper case", strings.ToUpper(good[:6]) + good[6:]},
		{"upper-case hex", "pgfj1." + strings.ToUpper(parts[1]) + "." + parts[2] + "." + parts[3]},
		{"not hex", "pgfj1.zzzzzzzz." + parts[2] + "." + parts[3]},
		{"extra field", good + ".00"},
		{"space inside", "pgfj1. " + strings.Join(parts[1:], ".")},
	}
	for _, tt := range tests {
		tok, err := pki.ParseJoinToken(tt.in)
		if err == nil || err.Error() != want {
			t.Errorf("%s: ParseJoinToken(%q) = %+v, %v; want error %q", tt.name, tt.in, tok, err, want)
		}
	}
}

func TestPin(t *testing.T) {
	ca, other := newCA(t, "iad-1"), newCA(t, "iad-1")
	pin := pki.Pin(ca.Cert)
	if len(pin) != len("sha256:")+64 || !strings.HasPrefix(pin, "sha256:") {
		t.Fatalf("Pin() = %q, want sha256:<64 hex digits>", pin)
	}
	if pki.Pin(other.Cert) == pin {
		t.Fatalf("two CAs made with the same name share pin %s", pin)
	}
	// The pin is of the public key: a certificate re-read from its PEM
	// has the same one.
	again, err := pki.ParseCert(ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	if pki.Pin(again) != pin {
		t.Errorf("Pin(ParseCert(CertPEM)) = %s, want %s", pki.Pin(again), pin)
	}
	hex := strings.TrimPrefix(pin, "sha256:")
	tests := []struct {
		name string
		ca   *x509.Certificate
		pin  string
		want bool
	}{
		{"own pin", ca.Cert, pin, true},
		{"without prefix", ca.Cert, hex, true},
		{"upper-case hex", ca.Cert, "sha256:" + strings.ToUpper(hex), true},
		{"another CA's pin", ca.Cert, pki.Pin(other.Cert), false},
		{"pin of another CA checked against it", other.Cert, pin, false},
		{"empty", ca.Cert, "", false},
		{"prefix only", ca.Cert, "sha256:", false},
		{"truncated", ca.Cert, pin[:len(pin)-1], false},
		{"one digit changed", ca.Cert, pin[:len(pin)-1] + flipHex(pin[len(pin)-1]), false},
	}
	for _, tt := range tests {
		if got := pki.PinMatches(tt.ca, tt.pin); got != tt.want {
			t.Errorf("%s: PinMatches(%q) = %v, want %v", tt.name, tt.pin, got, tt.want)
		}
	}
}

func flipHex(c byte) string {
	if c == '0' {
		return "1"
	}
	return "0"
}

func TestIssueRefusesWithoutKey(t *testing.T) {
	ca := newCA(t, "iad-1")
	// What a host that is not one of the store's voters knows of the CA.
	certOnly := &pki.Authority{Cert: ca.Cert, CertPEM: ca.CertPEM}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certOnly.Issue(key.Public(), pki.HostRequest{Name: "iad-4", IPs: []net.IP{net.ParseIP("10.0.0.4")}}, now)
	const want = "this host does not hold the fleet CA's key"
	if err == nil || err.Error() != want || cert != nil {
		t.Errorf("Issue() without the CA's key = %d bytes, %v; want error %q", len(cert), err, want)
	}
	if _, err := ca.Issue(key.Public(), pki.HostRequest{IPs: []net.IP{net.ParseIP("10.0.0.4")}}, now); err == nil || err.Error() != "a host certificate needs a name" {
		t.Errorf("Issue() of a host without a name = %v, want %q", err, "a host certificate needs a name")
	}
}

func TestIssuedCertificateVerifies(t *testing.T) {
	ca, other := newCA(t, "iad-1"), newCA(t, "evil")
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	req := pki.HostRequest{Name: "iad-2", IPs: []net.IP{net.ParseIP("10.0.0.2"), net.ParseIP("192.168.7.2")}, DNS: []string{"db2.example.net"}}
	certPEM, err := ca.Issue(key.Public(), req, time.Now())
	if err != nil {
		t.Fatalf("Issue(): %v", err)
	}
	cert, err := pki.ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if cert.IsCA {
		t.Errorf("host certificate IsCA = true: a host could then certify others")
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		t.Errorf("host certificate is not for the requested key")
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		for _, name := range []string{"10.0.0.2", "192.168.7.2", "iad-2", "db2.example.net"} {
			_, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
			if err != nil {
				t.Errorf("Verify(%s, usage %v) against the fleet CA: %v", name, usage, err)
			}
		}
	}
	for _, name := range []string{"10.0.0.3", "iad-3", "example.net"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: name}); err == nil {
			t.Errorf("Verify(%s) = ok for a certificate issued to %+v, want a name mismatch", name, req)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(other), DNSName: "10.0.0.2"}); err == nil {
		t.Errorf("Verify() against another CA = ok, want unknown authority")
	}
	if !pki.Covers(cert, req) {
		t.Errorf("Covers(cert, %+v) = false, want true", req)
	}
	moved := pki.HostRequest{Name: "iad-2", IPs: []net.IP{net.ParseIP("10.0.0.9")}}
	if pki.Covers(cert, moved) {
		t.Errorf("Covers(cert, %+v) = true for a host whose address changed, want false", moved)
	}
	// The CA's certificate itself verifies only as a CA for its own fleet.
	if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: pool(ca)}); err != nil {
		t.Errorf("CA certificate does not verify against itself: %v", err)
	}
}

func TestParseCSR(t *testing.T) {
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	req := pki.HostRequest{Name: "host-a", IPs: []net.IP{net.ParseIP("10.1.2.3").To4()}, DNS: []string{"a.example.net"}}
	csrPEM, err := pki.NewCSR(key, req)
	if err != nil {
		t.Fatal(err)
	}
	pub, got, err := pki.ParseCSR(csrPEM)
	if err != nil {
		t.Fatalf("ParseCSR(NewCSR()): %v", err)
	}
	if got.Name != req.Name || len(got.IPs) != 1 || !got.IPs[0].Equal(req.IPs[0]) || len(got.DNS) != 1 || got.DNS[0] != req.DNS[0] {
		t.Errorf("ParseCSR(NewCSR(%+v)) = %+v", req, got)
	}
	if !key.PublicKey.Equal(pub) {
		t.Errorf("ParseCSR() public key is not the requester's")
	}

	blk, _ := pem.Decode(csrPEM)
	reencode := func(der []byte) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	// Someone between the host and the fleet changes the name asked for:
	// the signature no longer covers what is asked.
	renamed := bytes.Replace(blk.Bytes, []byte("host-a"), []byte("host-b"), 1)
	if bytes.Equal(renamed, blk.Bytes) {
		t.Fatal("the CSR's DER does not hold the host name")
	}
	// Or the signature's last byte is changed.
	badSig := bytes.Clone(blk.Bytes)
	badSig[len(badSig)-1] ^= 0x01
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"name changed", reencode(renamed), "certificate request signature: "},
		{"signature changed", reencode(badSig), "certificate request signature: "},
		{"not PEM", blk.Bytes, "not a PEM certificate request"},
		{"a certificate instead", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: blk.Bytes}), "not a PEM certificate request"},
		{"truncated", reencode(blk.Bytes[:len(blk.Bytes)/2]), "read certificate request: "},
	}
	for _, tt := range tests {
		_, hr, err := pki.ParseCSR(tt.in)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s: ParseCSR() = %+v, %v; want an error starting %q", tt.name, hr, err, tt.want)
		}
	}
}

func TestNeedsRenewal(t *testing.T) {
	ca := newCA(t, "iad-1")
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.Issue(key.Public(), pki.HostRequest{Name: "iad-2"}, now)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := pki.ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	synthetic := &x509.Certificate{NotBefore: now, NotAfter: now.Add(300 * 24 * time.Hour)}
	for _, c := range []struct {
		name string
		cert *x509.Certificate
	}{{"issued", issued}, {"300-day", synthetic}} {
		life := c.cert.NotAfter.Sub(c.cert.NotBefore)
		tests := []struct {
			at   string
			t    time.Time
			want bool
		}{
			{"issue", c.cert.NotBefore, false},
			{"1/2 of life", c.cert.NotBefore.Add(life / 2), false},
			{"just before 2/3", c.cert.NotBefore.Add(life*2/3 - time.Minute), false},
			{"just after 2/3", c.cert.NotBefore.Add(life*2/3 + time.Minute), true},
			{"3/4 of life", c.cert.NotBefore.Add(life * 3 / 4), true},
			{"expired", c.cert.NotAfter.Add(time.Hour), true},
		}
		for _, tt := range tests {
			if got := pki.NeedsRenewal(c.cert, tt.t); got != tt.want {
				t.Errorf("%s certificate: NeedsRenewal() at %s = %v, want %v", c.name, tt.at, got, tt.want)
			}
		}
	}
	if life := issued.NotAfter.Sub(issued.NotBefore); life < pki.HostLifetime {
		t.Errorf("issued certificate lives %s, want at least %s", life, pki.HostLifetime)
	}
}

func TestFilesSaveModes(t *testing.T) {
	ca := newCA(t, "iad-1")
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.Issue(key.Public(), pki.HostRequest{Name: "iad-1", IPs: []net.IP{net.ParseIP("127.0.0.1")}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caKeyPEM, err := pki.EncodeKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	// A directory left open by someone else is closed by Save.
	f := pki.Files{Dir: filepath.Join(t.TempDir(), "tls")}
	if err := os.Mkdir(f.Dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f.Dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if f.Exists() {
		t.Fatal("Exists() = true before Save")
	}
	if err := f.Save(ca.CertPEM, caKeyPEM, certPEM, keyPEM); err != nil {
		t.Fatalf("Save(): %v", err)
	}
	want := map[string]os.FileMode{
		f.Dir:         0o700 | os.ModeDir,
		f.CAKeyPath(): 0o600,
		f.CAPath():    0o644,
		f.CertPath():  0o600, // the host's key and certificate, in one file
	}
	for path, mode := range want {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("after Save(): %v", err)
			continue
		}
		if got := fi.Mode() & (os.ModePerm | os.ModeDir); got != mode {
			t.Errorf("mode of %s = %s, want %s", filepath.Base(path), got, mode)
		}
	}
	ents, err := os.ReadDir(f.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 3 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("files in %s after Save() = %v, want ca.crt, ca.key, host.pem only (no temporary files)", f.Dir, names)
	}
	if !f.Exists() {
		t.Error("Exists() = false after Save")
	}

	// What was saved reads back as the same identity and CA.
	id, err := pki.LoadIdentity(f)
	if err != nil {
		t.Fatalf("LoadIdentity(): %v", err)
	}
	if !bytes.Equal(id.Leaf().Raw, mustCert(t, certPEM).Raw) {
		t.Error("LoadIdentity().Leaf() is not the saved certificate")
	}
	got, err := f.Authority()
	if err != nil || got.Key == nil || pki.Pin(got.Cert) != pki.Pin(ca.Cert) {
		t.Errorf("Authority() after Save() = %+v, %v; want the CA with its key", got, err)
	}

	// A host that is not a voter saves no CA key, and reads the CA without one.
	g := pki.Files{Dir: filepath.Join(t.TempDir(), "tls")}
	if err := g.Save(ca.CertPEM, nil, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.CAKeyPath()); !os.IsNotExist(err) {
		t.Errorf("Save() with no CA key wrote %s (%v)", g.CAKeyPath(), err)
	}
	if fi, err := os.Stat(g.KeyPath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("host.pem of a non-voter: %v, %v; want mode 0600", fi, err)
	}
	if a, err := g.Authority(); err != nil || a.Key != nil {
		t.Errorf("Authority() of a host without the CA key = %+v, %v; want the CA without key", a, err)
	}
}

func mustCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	c, err := pki.ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
