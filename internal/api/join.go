package api

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/store"
)

// JoinRequest is how a new host asks to be admitted: the join token's id
// and secret, and a certificate request for a key that never leaves it.
type JoinRequest struct {
	TokenID string `json:"token_id"`
	Secret  string `json:"secret"`
	CSR     string `json:"csr"`
}

// JoinResponse admits a host: its certificate, the fleet's CA, where the
// store is, and, for a host that will be one of the store's voters, the CA's
// key, so that the fleet can still admit hosts and renew certificates when
// any one host is lost.
type JoinResponse struct {
	CA    string   `json:"ca"`
	Cert  string   `json:"cert"`
	CAKey string   `json:"ca_key,omitempty"`
	Etcd  []string `json:"etcd"`
}

// TokenRequest asks for a join token valid for TTL.
type TokenRequest struct {
	TTL string `json:"ttl"`
}

// TokenView is a freshly made join token: shown once, kept only hashed.
type TokenView struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// MaxJoinTokenTTL bounds a join token's life: a token is for joining a
// host now, not a standing credential.
const MaxJoinTokenTTL = 24 * time.Hour

var joinTokenIDRE = regexp.MustCompile(`^[0-9a-f]{8}$`)

// authFailureDelay slows down anyone guessing tokens.
const authFailureDelay = time.Second

func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) {
	ca := s.authority()
	if ca == nil {
		writeError(w, http.StatusServiceUnavailable, "this agent does not know the fleet's CA")
		return
	}
	var req TokenRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	ttl, err := time.ParseDuration(req.TTL)
	if err != nil || ttl < time.Minute || ttl > MaxJoinTokenTTL {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("--ttl %q: want a duration from 1m to %s, e.g. 1h", req.TTL, MaxJoinTokenTTL))
		return
	}
	if s.rotating(w, r, "make a join token") {
		return
	}
	tok := pki.NewJoinToken(ca.Cert)
	exp := time.Now().Add(ttl).UTC()
	if err := s.store.PutJoinToken(r.Context(), tok.ID, store.JoinTokenRecord{SecretHash: tok.SecretHash(), Expires: exp}); err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, TokenView{Token: tok.String(), Expires: exp})
}

// join admits a host that holds a valid join token: it certifies the key
// of the host's certificate request with the fleet's CA.
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	ca := s.authority()
	if ca == nil || ca.Key == nil {
		writeError(w, http.StatusServiceUnavailable, "this agent does not hold the fleet CA's key: join through one of the first three hosts (the store's voters)")
		return
	}
	var req JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 16<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	if !joinTokenIDRE.MatchString(req.TokenID) {
		writeError(w, http.StatusBadRequest, "token_id: want the 8 hex digits of a join token's id")
		return
	}
	rec, err := s.store.JoinToken(r.Context(), req.TokenID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.storeError(w, err)
		return
	}
	if err != nil || time.Now().After(rec.Expires) || !pki.SecretMatches(req.Secret, rec.SecretHash) {
		time.Sleep(authFailureDelay)
		s.log.Warn("join refused: unknown, expired or wrong join token", "remote", r.RemoteAddr)
		writeError(w, http.StatusForbidden, "join token unknown, expired or wrong: make a new one with `pgfleet token create --ttl 1h` on a host of the fleet")
		return
	}
	pub, host, err := pki.ParseCSR([]byte(req.CSR))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := fleet.ValidateHostName(host.Name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(host.DNS) > 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("certificate request names %v: a host's certificate names only the host and its addresses", host.DNS))
		return
	}
	if s.rotating(w, r, "admit a host") {
		return
	}
	voters, etcd, err := s.store.EtcdMembers(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	cert, err := ca.Issue(pub, host, time.Now())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	resp := JoinResponse{CA: string(ca.CertPEM), Cert: string(cert), Etcd: etcd}
	if voters < store.MaxVoters {
		key, err := pki.EncodeKey(ca.Key)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		resp.CAKey = string(key)
	}
	s.log.Info("host admitted to the fleet", "host", host.Name, "ips", host.IPs, "token", req.TokenID, "ca_key", resp.CAKey != "")
	writeJSON(w, http.StatusOK, resp)
}

// Join asks the agent at addr to admit this host. The agent must present a
// certificate chain ending in the CA the token pins; nothing is sent before
// that is checked, so a host in the middle learns neither the token's
// secret nor anything else.
func Join(ctx context.Context, addr string, tok pki.JoinToken, csr []byte) (JoinResponse, error) {
	host, _, err := net.SplitHostPort(strings.TrimPrefix(addr, "https://"))
	if err != nil {
		return JoinResponse{}, fmt.Errorf("--join %q: want HOST:PORT of an agent's API (%v)", addr, err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified below, against the pinned CA instead of the system's.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain := cs.PeerCertificates
			if len(chain) < 2 {
				return errors.New("the agent presented no CA certificate")
			}
			ca := chain[len(chain)-1]
			if !pki.PinMatches(ca, tok.Pin) {
				return fmt.Errorf("the agent's CA is %s, not %s as the join token says: this is not the fleet the token is from", pki.Pin(ca), tok.Pin)
			}
			return verifyFrom(chain, ca, host)
		},
	}
	var jr JoinResponse
	err = postTo(ctx, &http.Client{Timeout: 30 * time.Second, Transport: tr}, addr, "/v1/join",
		JoinRequest{TokenID: tok.ID, Secret: tok.Secret, CSR: string(csr)}, &jr)
	if err != nil {
		return JoinResponse{}, fmt.Errorf("join through %s: %w", addr, err)
	}
	return jr, nil
}

// CreateJoinToken asks for a join token valid for ttl.
func (c *Client) CreateJoinToken(ctx context.Context, ttl time.Duration) (TokenView, error) {
	var v TokenView
	err := c.do(ctx, http.MethodPost, "/v1/tokens", TokenRequest{TTL: ttl.String()}, &v)
	return v, err
}

// CAView is the fleet's CA with a proof that the agent knows the fleet's
// API token, for `pgfleet login`: a client that has only the token learns
// the CA without trusting the network in between.
type CAView struct {
	CA    string `json:"ca"`
	Proof string `json:"proof"` // CAProof(token hash, nonce, CA)
}

// CAProof binds a CA to a client's nonce with the API token's hash as the
// key: only who knows the token (or its hash, kept in the store) can make
// it.
func CAProof(tokenHash, nonce string, caPEM []byte) string {
	m := hmac.New(sha256.New, []byte(tokenHash))
	m.Write([]byte("pgfleet-login\x00" + nonce + "\x00"))
	m.Write(caPEM)
	return hex.EncodeToString(m.Sum(nil))
}

var nonceRE = regexp.MustCompile(`^[0-9a-f]{32,128}$`)

func (s *Server) caProof(w http.ResponseWriter, r *http.Request) {
	nonce := r.URL.Query().Get("nonce")
	if !nonceRE.MatchString(nonce) {
		writeError(w, http.StatusBadRequest, "nonce: want 32 to 128 lowercase hex digits")
		return
	}
	ca := s.authority()
	if ca == nil {
		writeError(w, http.StatusServiceUnavailable, "this agent does not know the fleet's CA")
		return
	}
	hash, err := s.wantHash(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, CAView{CA: string(ca.CertPEM), Proof: CAProof(hash, nonce, ca.CertPEM)})
}

// Login learns the fleet's CA from the agent at addr, which must prove it
// knows token: the proof, not the connection's certificate, is what is
// trusted, since the client has no CA yet. The agent's certificate must
// then come from that CA.
func Login(ctx context.Context, addr, token string) ([]byte, error) {
	base := "https://" + strings.TrimPrefix(addr, "https://")
	var chain []*x509.Certificate
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // checked below, against the proven CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain = cs.PeerCertificates
			return nil
		},
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	nonce := randomString(16)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/ca?nonce="+nonce, nil)
	if err != nil {
		return nil, fmt.Errorf("--api %q: %w", addr, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("log in to %s: %w", addr, unwrapURLError(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("log in to %s: %w", addr, err)
	}
	var v CAView
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &v) != nil {
		return nil, fmt.Errorf("log in to %s: %s: is it a pgfleet agent's API?", addr, resp.Status)
	}
	if !hmac.Equal([]byte(v.Proof), []byte(CAProof(HashToken(token), nonce, []byte(v.CA)))) {
		return nil, fmt.Errorf("log in to %s: the agent could not prove it knows the token: a wrong token, or not the fleet's agent", addr)
	}
	ca, err := pki.ParseCert([]byte(v.CA))
	if err != nil {
		return nil, fmt.Errorf("log in to %s: the fleet's CA: %w", addr, err)
	}
	host, _, _ := net.SplitHostPort(strings.TrimPrefix(addr, "https://"))
	if len(chain) == 0 {
		return nil, fmt.Errorf("log in to %s: no certificate presented", addr)
	}
	if err := verifyFrom(chain, ca, host); err != nil {
		return nil, fmt.Errorf("log in to %s: the agent's certificate is not from the fleet's CA for that address: %w", addr, err)
	}
	return []byte(v.CA), nil
}

// APITokenView is a fresh API token, shown once.
type APITokenView struct {
	Token string `json:"token"`
}

// NewReadOnlyToken returns a fresh read-only token: pgfro_<id>_<secret>.
func NewReadOnlyToken() string { return "pgfro_" + randomString(4) + "_" + randomString(16) }

var readOnlyRE = regexp.MustCompile(`^pgfro_([0-9a-f]{8})_([0-9a-f]{32})$`)

func parseReadOnlyToken(tok string) (id, secret string, ok bool) {
	m := readOnlyRE.FindStringSubmatch(tok)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// createReadOnlyToken makes a token for dashboards and monitoring: it
// reads hosts, clusters, events and backups, and never a secret.
func (s *Server) createReadOnlyToken(w http.ResponseWriter, r *http.Request) {
	tok := NewReadOnlyToken()
	id, _, _ := parseReadOnlyToken(tok)
	if err := s.store.PutReadOnlyToken(r.Context(), id, HashToken(tok)); err != nil {
		s.storeError(w, err)
		return
	}
	s.log.Info("read-only API token made", "id", id)
	writeJSON(w, http.StatusCreated, APITokenView{Token: tok})
}

// rotateToken replaces the fleet's API token: the one that made the
// request stops working on every agent within tokenCacheFor.
func (s *Server) rotateToken(w http.ResponseWriter, r *http.Request) {
	old, err := s.wantHash(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	tok := NewToken()
	ok, err := s.store.RotateToken(r.Context(), old, HashToken(tok))
	if err != nil {
		s.storeError(w, err)
		return
	}
	if !ok {
		writeError(w, http.StatusConflict, "the API token changed while this request ran: log in with the new one")
		return
	}
	s.mu.Lock()
	s.tokenHash = ""
	s.mu.Unlock()
	s.log.Info("API token rotated")
	writeJSON(w, http.StatusOK, APITokenView{Token: tok})
}

// CreateReadOnlyToken asks for a read-only API token.
func (c *Client) CreateReadOnlyToken(ctx context.Context) (string, error) {
	var v APITokenView
	err := c.do(ctx, http.MethodPost, "/v1/tokens/read-only", struct{}{}, &v)
	return v.Token, err
}

// RotateToken replaces the fleet's API token and returns the new one.
func (c *Client) RotateToken(ctx context.Context) (string, error) {
	var v APITokenView
	err := c.do(ctx, http.MethodPost, "/v1/tokens/rotate", struct{}{}, &v)
	return v.Token, err
}

// RenewRequest asks for a new certificate for a fresh key of the host
// that makes the request, which proves who it is with its current
// certificate.
type RenewRequest struct {
	CSR string `json:"csr"`
}

// renew certifies a fleet host's new key. The host is the one named by the
// client certificate it connected with, which must be from the fleet's
// CA; it can renew only its own name.
func (s *Server) renew(w http.ResponseWriter, r *http.Request) {
	ca := s.authority()
	if ca == nil || ca.Key == nil {
		writeError(w, http.StatusServiceUnavailable, "this agent does not hold the fleet CA's key: ask one of the store's voters")
		return
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		writeError(w, http.StatusUnauthorized, "renewing a certificate needs the host's current certificate from the fleet's CA")
		return
	}
	client := r.TLS.VerifiedChains[0][0]
	var req RenewRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 16<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	pub, host, err := pki.ParseCSR([]byte(req.CSR))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if host.Name != client.Subject.CommonName {
		writeError(w, http.StatusForbidden, fmt.Sprintf("host %s may renew only its own certificate, not %s's", client.Subject.CommonName, host.Name))
		return
	}
	// Only a live host of the fleet, and only for the name and addresses
	// of its record: a certificate that outlived its host, or one asking
	// for more, gets nothing.
	rec, err := s.store.Host(r.Context(), host.Name)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("host %s is not registered in the fleet: only a running host renews its certificate", host.Name))
		return
	}
	if err != nil {
		s.storeError(w, err)
		return
	}
	allowed := map[string]bool{rec.Addr: true}
	if h, _, err := net.SplitHostPort(rec.APIAddr); err == nil {
		allowed[h] = true
	}
	for _, ip := range host.IPs {
		if !allowed[ip.String()] {
			writeError(w, http.StatusForbidden, fmt.Sprintf("host %s asks for address %s, which its record (%s) does not have", host.Name, ip, rec.Addr))
			return
		}
	}
	rot, _, err := s.store.CARotation(r.Context())
	switch {
	case err == nil && (rot.Excludes(host.Name) || (s.excluded != nil && s.excluded(rot.ID, host.Name))):
		writeError(w, http.StatusForbidden, fmt.Sprintf("host %s is excluded from CA rotation %s: it gets no new certificate", host.Name, rot.ID))
		return
	case err != nil && !errors.Is(err, store.ErrNotFound):
		s.storeError(w, err)
		return
	}
	host.DNS = nil
	cert, err := ca.Issue(pub, host, time.Now())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log.Info("host certificate renewed", "host", host.Name, "ips", host.IPs)
	writeJSON(w, http.StatusOK, JoinResponse{CA: string(ca.CertPEM), Cert: string(cert)})
}

// Renew asks the agent at addr for a new certificate for csr, presenting
// the host's current one (clientTLS) and verifying the agent's against
// the fleet's CA.
func Renew(ctx context.Context, addr string, clientTLS *tls.Config, csr []byte) (JoinResponse, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = clientTLS
	var jr JoinResponse
	if err := postTo(ctx, &http.Client{Timeout: 10 * time.Second, Transport: tr}, addr, "/v1/renew", RenewRequest{CSR: string(csr)}, &jr); err != nil {
		return JoinResponse{}, fmt.Errorf("renew through %s: %w", addr, err)
	}
	return jr, nil
}

// postTo posts body as JSON to path on the agent at addr with c, whose TLS
// configuration decides whom it trusts, and decodes a 200 answer into out.
func postTo(ctx context.Context, c *http.Client, addr, path string, body, out any) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+strings.TrimPrefix(addr, "https://")+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return unwrapURLError(err)
	}
	defer resp.Body.Close()
	b, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var ev ErrorView
		if json.Unmarshal(b, &ev) != nil || ev.Error == "" {
			ev.Error = resp.Status
		}
		return errors.New(ev.Error)
	}
	return json.Unmarshal(b, out)
}

// verifyFrom checks that the server certificate a chain starts with is
// from ca and names host: what a client does by hand when it learned the
// CA from a pin or a proof instead of its trust store.
func verifyFrom(chain []*x509.Certificate, ca *x509.Certificate, host string) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: host})
	return err
}
