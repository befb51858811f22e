package pki_test

import (
	"crypto/x509"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/pki"
)

// TestRotationWaiting checks whom a rotation waits for: every host that
// has not reported this rotation's phase, never an excluded one.
func TestRotationWaiting(t *testing.T) {
	r := pki.Rotation{ID: "r1", Phase: pki.PhaseReissue, Exclude: []string{"ams-2"}}
	acks := map[string]pki.RotationAck{
		"iad-1": {ID: "r1", Phase: pki.PhaseReissue},
		"iad-2": {ID: "r1", Phase: pki.PhaseTrust},     // a phase behind
		"iad-3": {ID: "r0", Phase: pki.PhaseReissue},   // another rotation's
		"ams-1": {ID: "r1", Phase: pki.PhaseRequested}, // asked for the key only
	}
	got := r.Waiting([]string{"iad-1", "iad-2", "iad-3", "ams-1", "ams-2", "iad-2"}, acks)
	if want := []string{"ams-1", "iad-2", "iad-3"}; !slices.Equal(got, want) {
		t.Errorf("Waiting = %v, want %v", got, want)
	}
	var p pki.Phase = pki.PhaseRequested
	var order []pki.Phase
	for ; p != ""; p = p.Next() {
		order = append(order, p)
	}
	if want := []pki.Phase{pki.PhaseRequested, pki.PhaseTrust, pki.PhaseReissue, pki.PhaseRetire, pki.PhaseMembers}; !slices.Equal(order, want) {
		t.Errorf("phases %v, want %v", order, want)
	}
}

// TestBundle checks the trust bundle of a rotation: both CAs, no repeats,
// and an issuer check that tells them apart.
func TestBundle(t *testing.T) {
	now := time.Now()
	old, _ := pki.NewAuthority("old", now)
	next, _ := pki.NewAuthority("new", now)
	b := pki.Bundle(next.CertPEM, old.CertPEM, next.CertPEM)
	certs, err := pki.ParseCerts(b)
	if err != nil || len(certs) != 2 || !pki.SameCerts(b, append(append([]byte{}, next.CertPEM...), old.CertPEM...)) {
		t.Fatalf("Bundle = %d certificates (%v), want the new CA then the old", len(certs), err)
	}
	key, _ := pki.NewKey()
	leafPEM, err := next.Issue(key.Public(), pki.HostRequest{Name: "iad-1", IPs: []net.IP{net.ParseIP("127.0.0.1")}}, now)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := pki.ParseCert(leafPEM)
	if !pki.IssuedBy(leaf, next.Cert) || pki.IssuedBy(leaf, old.Cert) {
		t.Error("IssuedBy does not tell the new CA's certificates from the old's")
	}
	pool, _ := pki.Pool(b)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
		t.Errorf("a certificate from the new CA against the bundle: %v", err)
	}
	if !pki.KeyMatches(next.Key, next.Cert) || pki.KeyMatches(next.Key, old.Cert) {
		t.Error("KeyMatches does not pair a CA's key with its certificate")
	}
}

// TestSeal checks that only the recipient's key opens a sealed message,
// and that a changed message is refused.
func TestSeal(t *testing.T) {
	to, _ := pki.NewKey()
	other, _ := pki.NewKey()
	msg := []byte("the new CA's key")
	sealed, err := pki.Seal(to.Public(), msg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := pki.Unseal(to, sealed); err != nil || string(got) != string(msg) {
		t.Fatalf("Unseal = %q, %v; want %q", got, err, msg)
	}
	if _, err := pki.Unseal(other, sealed); err == nil {
		t.Error("another key opened the sealed message")
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := pki.Unseal(to, sealed); err == nil {
		t.Error("a changed message opened")
	}
	if _, err := pki.Unseal(to, sealed[:10]); err == nil {
		t.Error("a truncated message opened")
	}
}
