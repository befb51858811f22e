package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Files is a host's TLS material, kept in <data-dir>/tls:
//
//	ca.crt    the fleet's CA certificate (or bundle, during a rotation)
//	ca.key    the CA's key, only on the hosts that hold it (etcd voters)
//	host.pem  this host's key and certificate, in one file, so that a
//	          renewal replaces both with one rename and nothing ever reads a
//	          key with another key's certificate
//
// The directory and the keys are the agent's alone (0700, 0600): postgres
// runs as another OS user on a host whose agent runs as root, and its
// superuser sessions can read any file that user can.
type Files struct{ Dir string }

func (f Files) CAPath() string    { return filepath.Join(f.Dir, "ca.crt") }
func (f Files) CAKeyPath() string { return filepath.Join(f.Dir, "ca.key") }
func (f Files) CertPath() string  { return filepath.Join(f.Dir, "host.pem") }
func (f Files) KeyPath() string   { return f.CertPath() }

// Exists reports whether this host has its certificate.
func (f Files) Exists() bool {
	_, err := os.Stat(f.CertPath())
	return err == nil
}

// Save writes the host's material, each file through a rename (after an
// fsync) so that a crash leaves the old file or the new one. caKeyPEM may
// be nil; certPEM and keyPEM go together or not at all. The host's file is
// written last: its presence is what says the rest is there.
func (f Files) Save(caPEM, caKeyPEM, certPEM, keyPEM []byte) error {
	if (certPEM == nil) != (keyPEM == nil) {
		return errors.New("a host's certificate and key are saved together")
	}
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", f.Dir, err)
	}
	if err := os.Chmod(f.Dir, 0o700); err != nil {
		return err
	}
	var host []byte
	if certPEM != nil {
		host = append(append([]byte{}, keyPEM...), certPEM...)
	}
	files := []struct {
		path string
		b    []byte
		mode os.FileMode
	}{
		{f.CAPath(), caPEM, 0o644},
		{f.CAKeyPath(), caKeyPEM, 0o600},
		{f.CertPath(), host, 0o600},
	}
	for _, x := range files {
		if x.b == nil {
			continue
		}
		if err := writeAtomic(x.path, x.b, x.mode); err != nil {
			return err
		}
	}
	return nil
}

// Authority loads the fleet's CA: its key too where this host holds it.
func (f Files) Authority() (*Authority, error) {
	caPEM, err := os.ReadFile(f.CAPath())
	if err != nil {
		return nil, fmt.Errorf("read the fleet CA: %w", err)
	}
	certs, err := ParseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.CAPath(), err)
	}
	a := &Authority{Cert: certs[0], CertPEM: caPEM}
	keyPEM, err := os.ReadFile(f.CAKeyPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		return a, nil
	case err != nil:
		return nil, fmt.Errorf("read the fleet CA's key: %w", err)
	}
	if a.Key, err = ParseKey(keyPEM); err != nil {
		return nil, fmt.Errorf("read %s: %w", f.CAKeyPath(), err)
	}
	// During a rotation ca.crt holds two CAs: the key says which one this
	// host issues with.
	for _, c := range certs {
		if KeyMatches(a.Key, c) {
			a.Cert = c
			return a, nil
		}
	}
	return nil, fmt.Errorf("%s belongs to none of the CAs in %s: restore the pair from a backup or join the host again", f.CAKeyPath(), f.CAPath())
}

// KeyMatches reports whether key is the private half of cert's key.
func KeyMatches(key crypto.Signer, cert *x509.Certificate) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}

// Identity serves a host's current certificate to TLS. Renew swaps it in
// place, so servers and clients built from it never restart for it.
type Identity struct {
	files Files

	mu   sync.RWMutex
	cert *tls.Certificate
	leaf *x509.Certificate
	pool *x509.CertPool
}

// LoadIdentity reads the host's certificate, key and CA.
func LoadIdentity(f Files) (*Identity, error) {
	id := &Identity{files: f}
	if err := id.Reload(); err != nil {
		return nil, err
	}
	return id, nil
}

// Reload reads the files again, after a renewal.
func (id *Identity) Reload() error {
	pair, err := tls.LoadX509KeyPair(id.files.CertPath(), id.files.KeyPath())
	if err != nil {
		return fmt.Errorf("read this host's certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("read %s: %w", id.files.CertPath(), err)
	}
	caPEM, err := os.ReadFile(id.files.CAPath())
	if err != nil {
		return fmt.Errorf("read the fleet CA: %w", err)
	}
	pool, err := Pool(caPEM)
	if err != nil {
		return fmt.Errorf("read %s: %w", id.files.CAPath(), err)
	}
	ca, err := ParseCert(caPEM)
	if err != nil {
		return fmt.Errorf("read %s: %w", id.files.CAPath(), err)
	}
	// The CA goes with the host's certificate, so that a joining host can
	// check it against its token's pin.
	pair.Certificate = append(pair.Certificate, ca.Raw)
	id.mu.Lock()
	id.cert, id.leaf, id.pool = &pair, leaf, pool
	id.mu.Unlock()
	return nil
}

// Files returns where the identity is kept.
func (id *Identity) Files() Files { return id.files }

// Leaf returns the host's current certificate.
func (id *Identity) Leaf() *x509.Certificate {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.leaf
}

// Pool returns the CAs this host trusts.
func (id *Identity) Pool() *x509.CertPool {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.pool
}

// Key returns the host's current private key.
func (id *Identity) Key() crypto.Signer {
	id.mu.RLock()
	defer id.mu.RUnlock()
	k, _ := id.cert.PrivateKey.(crypto.Signer)
	return k
}

func (id *Identity) certificate() *tls.Certificate {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.cert
}

// ServerTLS is the configuration of a server that presents the host's
// certificate. With clientAuth at tls.RequireAndVerifyClientCert only
// holders of a fleet certificate get through.
func (id *Identity) ServerTLS(clientAuth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*id.certificate()},
				ClientAuth:   clientAuth,
				ClientCAs:    id.Pool(),
			}, nil
		},
	}
}

// ClientTLS is the configuration of a client that verifies its server
// against the fleet's CA and presents the host's certificate when asked.
func (id *Identity) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    id.Pool(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.certificate(), nil
		},
	}
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err == nil {
		_, err = f.Write(b)
		if err == nil {
			err = f.Chmod(mode)
		}
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
