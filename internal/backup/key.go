package backup

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// KeySize is the size of an encryption key: AES-256.
const KeySize = 32

// Key is the secret objects are encrypted with. Losing it loses every backup
// made with it, so it belongs somewhere safer than the hosts that use it.
type Key struct {
	secret [KeySize]byte
	id     [8]byte
}

// NewKey returns a Key holding secret, which must be KeySize bytes.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) != KeySize {
		return nil, fmt.Errorf("encryption key is %d bytes, want %d", len(secret), KeySize)
	}
	k := &Key{}
	copy(k.secret[:], secret)
	h := sha256.Sum256(append([]byte("pgfleet key id\x00"), secret...))
	copy(k.id[:], h[:])
	return k, nil
}

// ID names the key without revealing it: objects record the ID of the key
// they were encrypted with, so that reading one with another key says so
// instead of failing as if the object were corrupt.
func (k *Key) ID() string { return hex.EncodeToString(k.id[:]) }

// LoadKey reads a key file: 32 bytes written as 64 hexadecimal digits or in
// base64, surrounding white space ignored. A file that the group or others
// may read (or write) is refused, as ssh refuses such a private key.
func LoadKey(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o: others than its owner may read it; run `chmod 600 %s`", path, perm, path)
	}
	buf := make([]byte, 1024)
	n, err := f.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("read key file %s: %w", path, err)
	}
	k, err := ParseKey(string(buf[:n]))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// ParseKey parses a key written as a key file holds it: 32 bytes as 64
// hexadecimal digits or in base64, surrounding white space ignored.
func ParseKey(s string) (*Key, error) {
	secret, err := decodeKey(strings.TrimSpace(s))
	if err != nil {
		return nil, err
	}
	return NewKey(secret)
}

// decodeKey decodes 32 bytes written in hex or base64.
func decodeKey(s string) ([]byte, error) {
	if len(s) == 2*KeySize {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == KeySize {
			return b, nil
		}
	}
	return nil, errors.New("want 32 bytes written as 64 hexadecimal digits or in base64 (create one with `openssl rand -hex 32`)")
}

// WriteNewKey creates a key file at path (mode 0600, hexadecimal) holding a
// new random key. It never replaces an existing file.
func WriteNewKey(path string) (*Key, error) {
	secret := make([]byte, KeySize)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create key file: %w", err)
	}
	_, err = f.WriteString(hex.EncodeToString(secret) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write key file %s: %w", path, err)
	}
	return NewKey(secret)
}
