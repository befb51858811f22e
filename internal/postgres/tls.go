package postgres

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Names of the member's TLS files. They live beside DataDir, not in it, so
// pg_basebackup never copies one member's key to another.
const (
	certFile = "server.crt"
	keyFile  = "server.key"
	caFile   = "root.crt"
)

// CertPath and KeyPath are where the instance's TLS certificate and key are.
func (i *Instance) CertPath() string { return filepath.Join(filepath.Dir(i.cfg.DataDir), certFile) }
func (i *Instance) KeyPath() string  { return filepath.Join(filepath.Dir(i.cfg.DataDir), keyFile) }

// RootCertPath is where the fleet's CA is kept for the instance: what
// its replication connections, pg_basebackup and pg_rewind verify other
// members against (sslrootcert), readable by the OS user postgres runs as.
func (i *Instance) RootCertPath() string { return filepath.Join(filepath.Dir(i.cfg.DataDir), caFile) }

// ServerTLS is what a member serves and trusts: a certificate from the
// fleet's CA with its key, and the CA.
type ServerTLS struct {
	CertPEM, KeyPEM, CAPEM []byte
}

// InstallTLS writes the member's certificate, key and CA where postgres
// and its tools read them, each only if it changed, and reports whether
// anything did: a running postgres then needs a Reload to serve the new
// certificate. The key is written first, so that a certificate is never
// on disk without its key.
func (i *Instance) InstallTLS(t ServerTLS) (bool, error) {
	if err := os.MkdirAll(filepath.Dir(i.cfg.DataDir), 0o700); err != nil {
		return false, err
	}
	changed := false
	for _, f := range []struct {
		path string
		b    []byte
	}{{i.KeyPath(), t.KeyPEM}, {i.CertPath(), t.CertPEM}, {i.RootCertPath(), t.CAPEM}} {
		if old, err := readRegular(f.path); err == nil && bytes.Equal(old, f.b) {
			continue
		}
		if err := i.writeFile(f.path, f.b); err != nil {
			return changed, err
		}
		changed = true
	}
	i.mu.Lock()
	i.tlsInstalled = true
	i.mu.Unlock()
	return changed, nil
}

// ensureCert makes a self-signed certificate for the member's address unless
// a valid one for that address exists or the fleet's was installed
// (InstallTLS). Only an instance without a fleet around it (the package's
// own tests) serves a self-signed one: its clients can encrypt but not
// verify.
func (i *Instance) ensureCert(name, ip string) error {
	i.mu.Lock()
	installed := i.tlsInstalled
	i.mu.Unlock()
	if installed {
		return nil
	}
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

// readRegular reads a file in a directory the postgres OS user owns without
// following a link and without blocking on a FIFO it may have put there:
// only a regular file is read.
func readRegular(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return nil, fmt.Errorf("%s is not a regular file of at most 1 MiB", path)
	}
	return io.ReadAll(f)
}
