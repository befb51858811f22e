package postgres

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Names of the member's TLS files. They live beside DataDir, not in it, so
// pg_basebackup never copies one member's key to another.
const (
	certFile = "server.crt"
	keyFile  = "server.key"
)

// CertPath and KeyPath are where the instance's TLS certificate and key are.
func (i *Instance) CertPath() string { return filepath.Join(filepath.Dir(i.cfg.DataDir), certFile) }
func (i *Instance) KeyPath() string  { return filepath.Join(filepath.Dir(i.cfg.DataDir), keyFile) }

// ensureCert makes a self-signed certificate for the member's address unless
// a valid one for that address exists. Every connection to a member, from
// clients and from standbys, is then encrypted (pg_hba accepts only TLS);
// verifying the server needs a fleet CA, which is not there yet.
func (i *Instance) ensureCert(name, ip string) error {
	if certCovers(i.CertPath(), ip) {
		if _, err := os.Stat(i.KeyPath()); err == nil {
			return nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return fmt.Errorf("generate TLS serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"pgfleet"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP(ip)},
		DNSNames:     []string{name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create TLS certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode TLS key: %w", err)
	}
	// Key first: a certificate without its key is useless, the reverse is
	// repaired on the next call.
	if err := i.writeFile(i.KeyPath(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return err
	}
	return i.writeFile(i.CertPath(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// certCovers reports whether the PEM certificate at path is valid for ip
// for at least another 30 days.
func certCovers(path, ip string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return false
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil || time.Now().AddDate(0, 0, 30).After(c.NotAfter) {
		return false
	}
	want := net.ParseIP(ip)
	for _, a := range c.IPAddresses {
		if a.Equal(want) {
			return true
		}
	}
	return false
}
