package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/store"
)

// followRotation takes this host through the phase of the CA rotation
// under way (pki.Rotation explains the phases) and, on the rotation's
// coordinator, moves the rotation on once every host is through. Each step
// is idempotent and starts from what is on disk and in the store, so an
// agent that restarts in the middle carries on where it stopped.
func (a *Agent) followRotation(ctx context.Context) error {
	rot, rev, err := a.store.CARotation(ctx)
	if errors.Is(err, store.ErrNotFound) {
		a.rotation.Store(nil)
		return nil
	}
	if err != nil {
		return err
	}
	a.rotation.Store(&rot)
	a.noteExcluded(rot)
	if a.excluded(rot.ID, a.cfg.Name) {
		return nil
	}
	switch rot.Phase {
	case pki.PhaseRequested:
		return a.takeRotation(ctx, rot, rev)
	case pki.PhaseTrust:
		err = a.trustForRotation(ctx, rot)
	case pki.PhaseReissue:
		err = a.reissueForRotation(ctx, rot)
	case pki.PhaseRetire:
		err = a.retireForRotation(ctx, rot)
	case pki.PhaseMembers:
		err = a.membersForRotation(ctx, rot)
	}
	if err != nil {
		return fmt.Errorf("CA rotation %s, phase %s: %w", rot.ID, rot.Phase, err)
	}
	if err := a.coordinateRotation(ctx, rot, rev); err != nil {
		return fmt.Errorf("CA rotation %s, phase %s: %w", rot.ID, rot.Phase, err)
	}
	return nil
}

// takeRotation makes the new CA on a host that holds the current CA's
// key, and makes this host the rotation's coordinator, unless another key
// holder was quicker. The new key is sealed to this host's own key in the
// store before the claim, so that it outlives this agent.
func (a *Agent) takeRotation(ctx context.Context, rot pki.Rotation, rev int64) error {
	if a.ca.Key == nil {
		return nil
	}
	now := time.Now()
	next, err := pki.NewAuthority(fmt.Sprintf("%s %s", a.cfg.Name, now.UTC().Format("2006-01-02T15:04:05Z")), now)
	if err != nil {
		return err
	}
	if err := a.sealCAKey(ctx, a.cfg.Name, a.identity.Leaf(), next); err != nil {
		return err
	}
	rot.Phase = rot.Phase.Next()
	rot.Coordinator = a.cfg.Name
	rot.OldCA = pki.EncodeCert(a.ca.Cert)
	rot.NewCA = next.CertPEM
	ok, err := a.store.UpdateCARotation(ctx, rot, rev)
	if err != nil || !ok {
		return err
	}
	a.log.Info("CA rotation: made the new CA; this host coordinates the rotation", "id", rot.ID, "new_ca", pki.Pin(next.Cert))
	return nil
}

// sealCAKey stores ca's key sealed to the key of host's certificate.
func (a *Agent) sealCAKey(ctx context.Context, host string, cert *x509.Certificate, ca *pki.Authority) error {
	keyPEM, err := pki.EncodeKey(ca.Key)
	if err != nil {
		return err
	}
	sealed, err := pki.Seal(cert.PublicKey, keyPEM)
	if err != nil {
		return err
	}
	return a.store.PutSealedCAKey(ctx, host, pki.SealedKey{CA: pki.Pin(ca.Cert), To: pki.KeyPin(cert.PublicKey), Sealed: sealed})
}

// trustForRotation: this host trusts both CAs, its members too, and a
// store voter's etcd member does once restarted.
func (a *Agent) trustForRotation(ctx context.Context, rot pki.Rotation) error {
	bundle := pki.Bundle(rot.NewCA, rot.OldCA)
	if err := a.trustCAs(bundle); err != nil {
		return err
	}
	if err := a.refreshPostgresTLS(ctx); err != nil {
		return err
	}
	if done, err := a.restartEtcdInTurn(ctx, rot, bundle); err != nil || !done {
		return err
	}
	return a.ackRotation(ctx, rot)
}

// reissueForRotation: a key holder takes the new key, and this host's
// certificate and its members' come from the new CA.
func (a *Agent) reissueForRotation(ctx context.Context, rot pki.Rotation) error {
	newCA, err := pki.ParseCert(rot.NewCA)
	if err != nil {
		return fmt.Errorf("the new CA: %w", err)
	}
	if err := a.trustCAs(pki.Bundle(rot.NewCA, rot.OldCA)); err != nil {
		return err
	}
	if a.ca.Key != nil && !pki.KeyMatches(a.ca.Key, newCA) {
		got, err := a.takeSealedKey(ctx, rot, newCA)
		if err != nil || !got {
			return err
		}
	}
	if !pki.IssuedBy(a.identity.Leaf(), newCA) {
		files := a.tlsFiles()
		if a.ca.Key != nil {
			err = a.issueLocally(files, a.ca)
		} else {
			err = a.renewThroughFleet(ctx, files, a.hostRequest(), newCA)
		}
		if err != nil {
			return err
		}
		if err := a.identity.Reload(); err != nil {
			return err
		}
		a.log.Info("CA rotation: this host's certificate is from the new CA", "id", rot.ID)
	}
	// This host's members serve the certificate from the new CA before the
	// old CA can be retired: clients then trust only the new one.
	if err := a.refreshPostgresTLS(ctx); err != nil {
		return err
	}
	if t := a.pgTLS.Load(); t == nil || !issuedBy(t.CertPEM, newCA) {
		return nil // the coordinator has not reissued it yet
	}
	return a.ackRotation(ctx, rot)
}

// issuedBy reports whether the first certificate of certPEM is ca's.
func issuedBy(certPEM []byte, ca *x509.Certificate) bool {
	c, err := pki.ParseCert(certPEM)
	return err == nil && pki.IssuedBy(c, ca)
}

// takeSealedKey installs the new CA's key once the coordinator sealed it
// for this host; until then it publishes this host's certificate, which the
// coordinator seals it to. It reports whether the key is in place.
func (a *Agent) takeSealedKey(ctx context.Context, rot pki.Rotation, newCA *x509.Certificate) (bool, error) {
	leaf := a.identity.Leaf()
	sk, err := a.store.SealedCAKey(ctx, a.cfg.Name)
	if err != nil && !errors.Is(err, store.ErrNotFound) && !store.OnlyInvalid(err) {
		return false, err
	}
	if err != nil || sk.CA != pki.Pin(newCA) || sk.To != pki.KeyPin(leaf.PublicKey) {
		return false, a.store.PutRotationAck(ctx, a.cfg.Name, pki.RotationAck{ID: rot.ID, Phase: pki.PhaseRequested, Cert: pki.EncodeCert(leaf)})
	}
	keyPEM, err := pki.Unseal(a.identity.Key(), sk.Sealed)
	if err != nil {
		return false, err
	}
	key, err := pki.ParseKey(keyPEM)
	if err != nil {
		return false, fmt.Errorf("the new CA's key: %w", err)
	}
	if !pki.KeyMatches(key, newCA) {
		return false, errors.New("the key sealed for this host is not the new CA's")
	}
	if err := a.tlsFiles().Save(nil, keyPEM, nil, nil); err != nil {
		return false, err
	}
	if err := a.reloadCA(); err != nil {
		return false, err
	}
	a.log.Info("CA rotation: this host holds the new CA's key", "id", rot.ID)
	return true, nil
}

// retireForRotation: this host, its members and, once restarted, its
// etcd member trust the new CA only.
func (a *Agent) retireForRotation(ctx context.Context, rot pki.Rotation) error {
	newCA, err := pki.ParseCert(rot.NewCA)
	if err != nil {
		return fmt.Errorf("the new CA: %w", err)
	}
	if a.ca.Key != nil && !pki.KeyMatches(a.ca.Key, newCA) {
		// Its files went back to the old CA (an agent on an existing etcd
		// restarted and read the CA the store still holds): the new key is
		// still sealed for it.
		if err := a.trustCAs(pki.Bundle(rot.NewCA, rot.OldCA)); err != nil {
			return err
		}
		if got, err := a.takeSealedKey(ctx, rot, newCA); err != nil || !got {
			return err
		}
	}
	if err := a.trustCAs(rot.NewCA); err != nil {
		return err
	}
	if err := a.refreshPostgresTLS(ctx); err != nil {
		return err
	}
	if done, err := a.restartEtcdInTurn(ctx, rot, rot.NewCA); err != nil || !done {
		return err
	}
	return a.ackRotation(ctx, rot)
}

// restartEtcdInTurn restarts this host's etcd member, if it runs one that
// was started with other CAs than want, once every voter before it in name
// order is through the phase: the store never misses more than one voter.
// It reports whether this host's member trusts want.
func (a *Agent) restartEtcdInTurn(ctx context.Context, rot pki.Rotation, want []byte) (bool, error) {
	if a.etcd == nil || !a.etcd.Member() || pki.SameCerts(a.etcdCA, want) {
		return true, nil
	}
	voters, err := a.store.EtcdVoters(ctx)
	if err != nil {
		return false, err
	}
	acks, err := a.store.RotationAcks(ctx)
	if err != nil {
		return false, err
	}
	slices.Sort(voters)
	for _, v := range voters {
		if v == a.cfg.Name {
			break
		}
		if ack := acks[v]; ack.ID != rot.ID || ack.Phase != rot.Phase {
			return false, nil // its turn comes first
		}
	}
	restore, err := a.store.Avoid(ctx, a.etcd.Endpoints[0])
	if err != nil {
		return false, err
	}
	defer restore()
	// The client's balancer takes the new endpoints asynchronously, and
	// calls already on their way to this member finish first.
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-time.After(time.Second):
	}
	a.log.Info("CA rotation: restarting this host's etcd member for the CAs it trusts", "id", rot.ID, "phase", rot.Phase)
	if err := a.etcd.Restart(ctx); err != nil {
		return false, err
	}
	a.etcdCA = want
	return true, nil
}

// membersForRotation: this host's members serve the members' certificate
// issued with a fresh key once the old CA was retired.
func (a *Agent) membersForRotation(ctx context.Context, rot pki.Rotation) error {
	if err := a.refreshPostgresTLS(ctx); err != nil {
		return err
	}
	t := a.pgTLS.Load()
	if t == nil {
		return nil
	}
	c, err := pki.ParseCert(t.CertPEM)
	if err != nil || c.SerialNumber.String() != rot.MembersSerial {
		return nil // not installed here yet
	}
	return a.ackRotation(ctx, rot)
}

// reissueMembersCert issues the members' certificate again with a fresh
// key, whatever its age, and returns its serial.
func (a *Agent) reissueMembersCert(ctx context.Context) (string, error) {
	cur, err := a.store.PostgresCert(ctx)
	if err != nil {
		return "", err
	}
	old, err := pki.ParseCert(cur.CertPEM)
	if err != nil {
		return "", fmt.Errorf("the members' certificate in the store: %w", err)
	}
	key, err := pki.NewKey()
	if err != nil {
		return "", err
	}
	req := pki.HostRequest{Name: postgresCertName, IPs: old.IPAddresses}
	for _, n := range old.DNSNames {
		if n != postgresCertName {
			req.DNS = append(req.DNS, n)
		}
	}
	certPEM, err := a.ca.IssueServer(key.Public(), req, time.Now())
	if err != nil {
		return "", err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return "", err
	}
	ok, err := a.store.ReplacePostgresCert(ctx, store.PostgresCert{CertPEM: certPEM, KeyPEM: keyPEM}, cur.Revision)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", errors.New("the members' certificate changed meanwhile; trying again")
	}
	c, err := pki.ParseCert(certPEM)
	if err != nil {
		return "", err
	}
	return c.SerialNumber.String(), nil
}

// noteExcluded remembers the hosts each rotation leaves behind, as first
// seen: a host left behind can write the store until the old CA is
// retired, and must not take itself off the list.
func (a *Agent) noteExcluded(rot pki.Rotation) {
	a.exclMu.Lock()
	defer a.exclMu.Unlock()
	if a.rotExcluded == nil {
		a.rotExcluded = map[string]map[string]bool{}
	}
	m := a.rotExcluded[rot.ID]
	if m == nil {
		m = map[string]bool{}
		a.rotExcluded[rot.ID] = m
	}
	for _, h := range rot.Exclude {
		m[h] = true
	}
}

// excluded reports whether rotation id leaves host behind, by the record
// as this agent first saw it.
func (a *Agent) excluded(id, host string) bool {
	a.exclMu.Lock()
	defer a.exclMu.Unlock()
	return a.rotExcluded[id][host]
}

func (a *Agent) ackRotation(ctx context.Context, rot pki.Rotation) error {
	acks, err := a.store.RotationAcks(ctx)
	if err != nil {
		return err
	}
	if ack, ok := acks[a.cfg.Name]; ok && ack.ID == rot.ID && ack.Phase == rot.Phase {
		return nil
	}
	return a.store.PutRotationAck(ctx, a.cfg.Name, pki.RotationAck{ID: rot.ID, Phase: rot.Phase})
}

// coordinateRotation, on the coordinator, seals the new key for the other
// key holders and moves the rotation to its next phase once every host is
// through this one. A key holder that has the new key takes over when the
// coordinator is not running.
func (a *Agent) coordinateRotation(ctx context.Context, rot pki.Rotation, rev int64) error {
	newCA, err := pki.ParseCert(rot.NewCA)
	if err != nil {
		return err
	}
	if rot.Phase != pki.PhaseTrust && (a.ca.Key == nil || !pki.KeyMatches(a.ca.Key, newCA)) {
		return nil
	}
	if rot.Phase == pki.PhaseTrust && rot.Coordinator != a.cfg.Name {
		return nil // no other key holder has the new key yet to take over with
	}
	hosts, err := api.RotationHosts(ctx, a.store, a.storeVoters())
	if err != nil {
		return err
	}
	hosts = slices.DeleteFunc(hosts, func(h string) bool { return a.excluded(rot.ID, h) })
	if rot.Coordinator != a.cfg.Name {
		live, err := a.store.Hosts(ctx)
		if err != nil && !store.OnlyInvalid(err) {
			return err
		}
		if slices.ContainsFunc(live, func(h fleet.Host) bool { return h.Name == rot.Coordinator }) {
			return nil
		}
		rot.Coordinator = a.cfg.Name
		if ok, err := a.store.UpdateCARotation(ctx, rot, rev); err != nil || !ok {
			return err
		}
		a.log.Warn("CA rotation: its coordinator is not running; this host takes over", "id", rot.ID)
		return nil // the next step starts from the new revision
	}
	acks, err := a.store.RotationAcks(ctx)
	if err != nil {
		return err
	}
	if rot.Phase == pki.PhaseReissue {
		if err := a.sealForHolders(ctx, rot, newCA, acks); err != nil {
			return err
		}
	}
	if waiting := rot.Waiting(hosts, acks); len(waiting) > 0 {
		a.log.Debug("CA rotation: waiting for hosts", "id", rot.ID, "phase", rot.Phase, "hosts", waiting)
		return nil
	}
	switch rot.Phase {
	case pki.PhaseTrust, pki.PhaseReissue:
		if rot.Phase == pki.PhaseReissue {
			pc, err := a.store.PostgresCert(ctx)
			if err != nil {
				return err
			}
			if !issuedBy(pc.CertPEM, newCA) {
				return nil // refreshPostgresTLS reissues it on this host
			}
		}
		done := rot.Phase
		rot.Phase = rot.Phase.Next()
		if ok, err := a.store.UpdateCARotation(ctx, rot, rev); err != nil || !ok {
			return err
		}
		a.log.Info("CA rotation: every host is through a phase", "id", rot.ID, "done", done, "next", rot.Phase)
	case pki.PhaseRetire:
		serial, err := a.reissueMembersCert(ctx)
		if err != nil {
			return err
		}
		rot.Phase, rot.MembersSerial = pki.PhaseMembers, serial
		if ok, err := a.store.UpdateCARotation(ctx, rot, rev); err != nil || !ok {
			return err
		}
		a.log.Info("CA rotation: every host trusts only the new CA; the members' certificate has a fresh key", "id", rot.ID)
	case pki.PhaseMembers:
		if a.etcd == nil {
			// On an existing etcd the CA lives there: later agents read it.
			keyPEM, err := pki.EncodeKey(a.ca.Key)
			if err != nil {
				return err
			}
			if err := a.store.ReplaceCA(ctx, rot.NewCA, keyPEM); err != nil {
				return err
			}
		}
		if err := a.store.FinishCARotation(ctx, rot.ID); err != nil {
			return err
		}
		a.log.Info("CA rotation finished: the fleet trusts only the new CA", "id", rot.ID, "ca", pki.Pin(newCA))
	}
	return nil
}

// sealForHolders seals the new CA's key to every key holder that asked
// for it with a certificate of its own from the fleet's CA: on embedded
// etcd the store's voters, on an existing etcd (which holds the CA's key
// for every agent anyway) every host.
func (a *Agent) sealForHolders(ctx context.Context, rot pki.Rotation, newCA *x509.Certificate, acks map[string]pki.RotationAck) error {
	var voters []string
	if a.etcd != nil {
		var err error
		if voters, err = a.store.EtcdVoters(ctx); err != nil {
			return err
		}
	}
	for host, ack := range acks {
		if ack.ID != rot.ID || len(ack.Cert) == 0 || rot.Excludes(host) || a.excluded(rot.ID, host) {
			continue
		}
		if a.etcd != nil && !slices.Contains(voters, host) {
			a.log.Warn("CA rotation: a host that is not a store voter asked for the new CA's key; refused", "host", host)
			continue
		}
		cert, err := pki.ParseCert(ack.Cert)
		if err != nil {
			continue
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: a.identity.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || cert.Subject.CommonName != host {
			a.log.Warn("CA rotation: a request for the new CA's key came with a certificate that is not that host's; refused", "host", host, "err", err)
			continue
		}
		if sk, err := a.store.SealedCAKey(ctx, host); err == nil && sk.CA == pki.Pin(newCA) && sk.To == pki.KeyPin(cert.PublicKey) {
			continue
		}
		if err := a.sealCAKey(ctx, host, cert, a.ca); err != nil {
			return err
		}
		a.log.Info("CA rotation: sealed the new CA's key for a key holder", "host", host)
	}
	return nil
}

// trustCAs makes this host trust exactly the CAs of bundle: its CA file,
// which its etcd member reads at start, its API and store clients, and
// (through refreshPostgresTLS) its members' root certificates.
func (a *Agent) trustCAs(bundle []byte) error {
	if pki.SameCerts(a.ca.CertPEM, bundle) {
		return nil
	}
	if err := a.tlsFiles().Save(bundle, nil, nil, nil); err != nil {
		return err
	}
	return a.reloadCA()
}

// reloadCA reads the CA files again and hands them to everything that uses
// them.
func (a *Agent) reloadCA() error {
	ca, err := a.tlsFiles().Authority()
	if err != nil {
		return err
	}
	if err := a.identity.Reload(); err != nil {
		return err
	}
	a.ca = ca
	if a.api != nil {
		a.api.SetCA(ca)
	}
	return nil
}

// storeVoters lists the store's voters on a fleet with embedded etcd,
// where they are hosts that take part in a rotation even while down; nil
// on an existing etcd.
func (a *Agent) storeVoters() func(context.Context) ([]string, error) {
	if a.etcd == nil {
		return nil
	}
	return a.store.EtcdVoters
}

// readCAFile reads this host's CA file as its etcd member loads it.
func readCAFile(f pki.Files) []byte {
	b, _ := os.ReadFile(f.CAPath())
	return b
}
