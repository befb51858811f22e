package pki

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"slices"
	"time"
)

// A CA rotation replaces the fleet's CA without stopping anything, in
// phases that every host of the fleet goes through before the next begins:
//
//	requested  `pgfleet ca rotate` asked for it; a host that holds the CA's
//	           key makes the new CA and becomes the rotation's coordinator.
//	trust      every host trusts the old CA and the new one. The store's
//	           voters restart their etcd member, one at a time, because etcd
//	           loads the CAs it trusts only at start.
//	reissue    the hosts that hold the CA's key get the new one, sealed to
//	           their own key (Seal); every host gets a certificate from the
//	           new CA, and so does the members' certificate.
//	retire     every host trusts the new CA only, and the voters restart
//	           their etcd member once more.
//	members    the members' certificate is issued again with a fresh key:
//	           a host left behind (Exclude) could read the store, and so
//	           the previous one's key, until the voters' restarts in retire.
//
// Once every host is through members the coordinator removes the record:
// the old CA is trusted nowhere in the fleet, and its key is gone. (A
// cross-signature would spare the restarts, but a CA made with a path
// length of zero, as the fleet's is, cannot vouch for another CA.)
type Rotation struct {
	ID          string    `json:"id"`
	Phase       Phase     `json:"phase"`
	Started     time.Time `json:"started"`
	Coordinator string    `json:"coordinator,omitempty"` // the host that made the new CA
	OldCA       []byte    `json:"old_ca,omitempty"`      // PEM
	NewCA       []byte    `json:"new_ca,omitempty"`      // PEM
	// MembersSerial is the serial of the members' certificate issued in
	// the members phase, which every host installs before it reports.
	MembersSerial string `json:"members_serial,omitempty"`
	// Exclude names hosts that get no certificate from the new CA: a host
	// that was stolen or lost, which the rotation leaves behind.
	Exclude []string `json:"exclude,omitempty"`
}

// Phase is a rotation's step.
type Phase string

const (
	PhaseRequested Phase = "requested"
	PhaseTrust     Phase = "trust"
	PhaseReissue   Phase = "reissue"
	PhaseRetire    Phase = "retire"
	PhaseMembers   Phase = "members"
)

// Next is the phase after p; "" after the last.
func (p Phase) Next() Phase {
	switch p {
	case PhaseRequested:
		return PhaseTrust
	case PhaseTrust:
		return PhaseReissue
	case PhaseReissue:
		return PhaseRetire
	case PhaseRetire:
		return PhaseMembers
	}
	return ""
}

// RotationAck is what a host reports once it is through a phase.
type RotationAck struct {
	ID    string `json:"id"`
	Phase Phase  `json:"phase"`
	// Cert (PEM) is the host's current certificate, published by a host
	// that holds the CA's key so that the coordinator can seal the new key
	// to it. The certificate, not a bare key, because only the fleet's CA
	// makes one: another host that writes a report under a key holder's
	// name cannot have the new key sealed to a key of its own.
	Cert []byte `json:"cert,omitempty"`
}

// SealedKey is the new CA's key on its way to one key holder.
type SealedKey struct {
	CA     string `json:"ca"` // Pin of the CA whose key it is
	To     string `json:"to"` // KeyPin of the key it is sealed to
	Sealed []byte `json:"sealed"`
}

// Waiting returns the hosts, of those that must take part, that have not
// reported being through r's phase. Excluded hosts are never waited for.
func (r Rotation) Waiting(hosts []string, acks map[string]RotationAck) []string {
	var out []string
	for _, h := range hosts {
		if slices.Contains(r.Exclude, h) || slices.Contains(out, h) {
			continue
		}
		if a, ok := acks[h]; !ok || a.ID != r.ID || a.Phase != r.Phase {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return out
}

// Excludes reports whether host is left behind by the rotation.
func (r Rotation) Excludes(host string) bool { return slices.Contains(r.Exclude, host) }

// NewRotationID returns a fresh rotation ID.
func NewRotationID() string { return randomHex(8) }

// ParseCerts reads every certificate of a PEM bundle.
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// Bundle joins PEM certificates, dropping repeats, in the order given.
func Bundle(pems ...[]byte) []byte {
	var out []byte
	var seen [][]byte
	for _, p := range pems {
		certs, err := ParseCerts(p)
		if err != nil {
			continue
		}
		for _, c := range certs {
			if slices.ContainsFunc(seen, func(r []byte) bool { return bytes.Equal(r, c.Raw) }) {
				continue
			}
			seen = append(seen, c.Raw)
			out = append(out, encodeCert(c.Raw)...)
		}
	}
	return out
}

// SameCerts reports whether two PEM bundles hold the same certificates in
// the same order.
func SameCerts(a, b []byte) bool {
	ca, errA := ParseCerts(a)
	cb, errB := ParseCerts(b)
	if errA != nil || errB != nil || len(ca) != len(cb) {
		return false
	}
	for i := range ca {
		if !bytes.Equal(ca[i].Raw, cb[i].Raw) {
			return false
		}
	}
	return true
}

// EncodeCert returns cert in PEM.
func EncodeCert(cert *x509.Certificate) []byte { return encodeCert(cert.Raw) }

// KeyPin identifies a public key as Pin does a CA's.
func KeyPin(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// IssuedBy reports whether cert was signed by ca's key.
func IssuedBy(cert, ca *x509.Certificate) bool {
	return cert.CheckSignatureFrom(ca) == nil
}
