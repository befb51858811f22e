// Package pki is the fleet's certificate authority: the CA made when the
// first agent bootstraps, the certificate every host gets from it, the pin
// a joining host checks the CA against, and the join tokens that admit a
// host. It does no network I/O; the agent and the API carry what it makes.
//
// Every key is ECDSA P-256: small certificates and fast handshakes, which
// matters for connection-heavy clients of the proxy and for etcd's many
// short-lived connections on small machines.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

// Lifetimes. A host certificate is renewed once two thirds of its life have
// passed, so a host that was down for weeks still comes back with a valid
// one.
const (
	CALifetime   = 10 * 365 * 24 * time.Hour
	HostLifetime = 365 * 24 * time.Hour
	// clockSkew backdates certificates so that a host whose clock is a
	// little behind the issuer's accepts them at once.
	clockSkew = 5 * time.Minute
)

// Authority is a CA: its certificate and, on the hosts that hold it, its key.
type Authority struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Key     crypto.Signer // nil where only the certificate is known
}

// NewAuthority makes a fresh CA for the fleet named fleetID.
func NewAuthority(fleetID string, now time.Time) (*Authority, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "pgfleet CA " + fleetID, Organization: []string{"pgfleet"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("make the fleet CA: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &Authority{Cert: cert, CertPEM: encodeCert(der), Key: key}, nil
}

// HostRequest is what a host asks to be certified as: its name and the
// addresses clients and peers reach it at.
type HostRequest struct {
	Name string
	IPs  []net.IP
	DNS  []string
}

// Issue certifies pub as host req, for serving (etcd, the API) and as a
// client (etcd, renewal): what admits a host to the fleet.
func (a *Authority) Issue(pub crypto.PublicKey, req HostRequest, now time.Time) ([]byte, error) {
	return a.issue(pub, req, now, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
}

// IssueServer certifies pub for serving only, never as a client: the
// members' certificate, whose key postgres must read, so that a superuser
// session that reads it gets no way into etcd or the API (Go's TLS, and so
// etcd's, refuses a client certificate without client authentication in
// its extended key usage).
func (a *Authority) IssueServer(pub crypto.PublicKey, req HostRequest, now time.Time) ([]byte, error) {
	return a.issue(pub, req, now, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
}

func (a *Authority) issue(pub crypto.PublicKey, req HostRequest, now time.Time, usage []x509.ExtKeyUsage) ([]byte, error) {
	if a.Key == nil {
		return nil, errors.New("this host does not hold the fleet CA's key")
	}
	if req.Name == "" {
		return nil, errors.New("a host certificate needs a name")
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"pgfleet"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(HostLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		IPAddresses:  req.IPs,
		DNSNames:     append([]string{req.Name}, req.DNS...),
		// Explicitly not a CA.
		BasicConstraintsValid: true,
	}
	if tmpl.NotAfter.After(a.Cert.NotAfter) {
		tmpl.NotAfter = a.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, pub, a.Key)
	if err != nil {
		return nil, fmt.Errorf("certify host %s: %w", req.Name, err)
	}
	return encodeCert(der), nil
}

// NewKey returns a fresh private key.
func NewKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// NewCSR returns a certificate request for key as host req, which is how
// a joining host asks for its certificate without its key ever leaving it.
func NewCSR(key crypto.Signer, req HostRequest) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: req.Name},
		IPAddresses: req.IPs,
		DNSNames:    req.DNS,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("make certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParseCSR reads a host's certificate request and checks its signature, so
// that the host proves it holds the key it asks to be certified for.
func ParseCSR(b []byte) (crypto.PublicKey, HostRequest, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, HostRequest{}, errors.New("not a PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, HostRequest{}, fmt.Errorf("read certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, HostRequest{}, fmt.Errorf("certificate request signature: %w", err)
	}
	if _, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, HostRequest{}, errors.New("certificate request: only ECDSA keys are accepted")
	}
	return csr.PublicKey, HostRequest{Name: csr.Subject.CommonName, IPs: csr.IPAddresses, DNS: csr.DNSNames}, nil
}

// Pin identifies a CA by the SHA-256 of its public key, as "sha256:<hex>".
// A joining host compares the CA the fleet presents with the pin in its
// join token, so that nobody between it and the fleet can pose as the fleet.
func Pin(ca *x509.Certificate) string {
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseCert reads the first certificate of a PEM bundle.
func ParseCert(b []byte) (*x509.Certificate, error) {
	certs, err := ParseCerts(b)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// Pool returns a pool of every certificate of a PEM bundle: the fleet's CA,
// or during a rotation the old and the new one.
func Pool(pemCerts []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemCerts) {
		return nil, errors.New("no PEM certificate found")
	}
	return p, nil
}

// EncodeKey returns key in PEM (PKCS #8).
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey reads a PEM (PKCS #8) private key.
func ParseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("private key cannot sign")
	}
	return s, nil
}

// NeedsRenewal reports whether cert has used two thirds of its life at now.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return now.After(cert.NotBefore.Add(life * 2 / 3))
}

// ClientCapable reports whether cert may authenticate a client: a
// members' certificate from before members' certificates were server-only
// is replaced.
func ClientCapable(cert *x509.Certificate) bool {
	for _, u := range cert.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return len(cert.ExtKeyUsage) == 0
}

// Covers reports whether cert names every address and name of req, so an
// agent whose address changed asks for a new certificate.
func Covers(cert *x509.Certificate, req HostRequest) bool {
	for _, ip := range req.IPs {
		if cert.VerifyHostname(ip.String()) != nil {
			return false
		}
	}
	for _, d := range append([]string{req.Name}, req.DNS...) {
		if cert.VerifyHostname(d) != nil {
			return false
		}
	}
	return true
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("read random: %v", err)) // the kernel's RNG does not fail
	}
	return n
}

// normalizePin accepts a pin with or without its "sha256:" prefix.
func normalizePin(p string) string {
	return "sha256:" + strings.ToLower(strings.TrimPrefix(p, "sha256:"))
}
