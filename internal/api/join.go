package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"

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

var hostNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// authFailureDelay slows down anyone guessing tokens.
const authFailureDelay = time.Second

func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) {
	if s.ca == nil {
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
	tok := pki.NewJoinToken(s.ca.Cert)
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
	if s.ca == nil || s.ca.Key == nil {
		writeError(w, http.StatusServiceUnavailable, "this agent does not hold the fleet CA's key: join through one of the first three hosts (the store's voters)")
		return
	}
	var req JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 16<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
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
	if !hostNameRE.MatchString(host.Name) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("host name %q: use lowercase letters, digits and dashes", host.Name))
		return
	}
	for _, d := range host.DNS {
		if !hostNameRE.MatchString(d) && net.ParseIP(d) == nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("certificate request names %q: not a host name", d))
			return
		}
	}
	voters, etcd, err := s.store.EtcdMembers(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	cert, err := s.ca.Issue(pub, host, time.Now())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	resp := JoinResponse{CA: string(s.ca.CertPEM), Cert: string(cert), Etcd: etcd}
	if voters < store.MaxVoters {
		key, err := pki.EncodeKey(s.ca.Key)
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
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: host})
			return err
		},
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: tr}
	body, _ := json.Marshal(JoinRequest{TokenID: tok.ID, Secret: tok.Secret, CSR: string(csr)})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+strings.TrimPrefix(addr, "https://")+"/v1/join", bytes.NewReader(body))
	if err != nil {
		return JoinResponse{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return JoinResponse{}, fmt.Errorf("join through %s: %w", addr, unwrapURLError(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return JoinResponse{}, fmt.Errorf("join through %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		var ev ErrorView
		if json.Unmarshal(b, &ev) != nil || ev.Error == "" {
			ev.Error = resp.Status
		}
		return JoinResponse{}, fmt.Errorf("join through %s: %s", addr, ev.Error)
	}
	var jr JoinResponse
	if err := json.Unmarshal(b, &jr); err != nil {
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
