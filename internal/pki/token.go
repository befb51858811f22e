package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// JoinToken admits hosts to the fleet until it expires. It carries the
// pin of the fleet's CA, so one string tells the new host both how to prove
// itself to the fleet and how to recognise the fleet:
//
//	pgfj1.<id>.<secret>.<pin>
//
// The fleet keeps only the id and a hash of the secret.
type JoinToken struct {
	ID     string // 8 hex digits: names the token in the store
	Secret string // 32 hex digits
	Pin    string // "sha256:<hex>" of the CA's public key
}

var tokenRE = regexp.MustCompile(`^pgfj1\.([0-9a-f]{8})\.([0-9a-f]{32})\.([0-9a-f]{64})$`)

// NewJoinToken returns a fresh token for the fleet whose CA is ca.
func NewJoinToken(ca *x509.Certificate) JoinToken {
	return JoinToken{ID: randomHex(4), Secret: randomHex(16), Pin: Pin(ca)}
}

// ParseJoinToken reads a token as `pgfleet token create` prints it.
func ParseJoinToken(s string) (JoinToken, error) {
	m := tokenRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return JoinToken{}, errors.New("not a join token: want pgfj1.<id>.<secret>.<ca-pin> as `pgfleet token create` prints it")
	}
	return JoinToken{ID: m[1], Secret: m[2], Pin: "sha256:" + m[3]}, nil
}

func (t JoinToken) String() string {
	return fmt.Sprintf("pgfj1.%s.%s.%s", t.ID, t.Secret, strings.TrimPrefix(t.Pin, "sha256:"))
}

// SecretHash is what the fleet stores of a token's secret.
func (t JoinToken) SecretHash() string { return HashSecret(t.Secret) }

// HashSecret hashes a join token's secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SecretMatches compares a presented secret with a stored hash in constant
// time.
func SecretMatches(secret, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(hash)) == 1
}

// PinMatches reports whether ca is the CA pin names.
func PinMatches(ca *x509.Certificate, pin string) bool {
	return subtle.ConstantTimeCompare([]byte(Pin(ca)), []byte(normalizePin(pin))) == 1
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("read random: %v", err)) // the kernel's RNG does not fail
	}
	return hex.EncodeToString(b)
}
