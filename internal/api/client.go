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
	"net/url"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

// Client talks to the fleet through any of its agents. It tries each
// endpoint in turn, so the CLI keeps working when the host it usually
// talks to is down. Every agent serves HTTPS with a certificate from the
// fleet's CA, and the client accepts no other.
type Client struct {
	Endpoints []string // host:port or https://host:port of agents' APIs
	Token     string
	HTTP      *http.Client
	// CAFile is where this client keeps the fleet's CA, for the
	// sslrootcert of the connection URLs it returns.
	CAFile string
}

// NewClient returns a client that trusts only ca, with sane timeouts. Every
// request the API serves takes at most a few store calls, each bounded by
// store.RequestTimeout, so an agent that does not answer within 8 s is
// stopped or hung, and the next one is tried.
func NewClient(endpoints []string, token string, ca *x509.CertPool) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca}
	if ca == nil {
		// No CA known: refuse every server rather than fall back to the
		// system's roots, which never sign a fleet's certificates.
		tr.TLSClientConfig.RootCAs = x509.NewCertPool()
	}
	return &Client{Endpoints: endpoints, Token: token, HTTP: &http.Client{Timeout: 8 * time.Second, Transport: tr}}
}

// CA returns the CAs the client trusts, for a client of other agents of
// the same fleet.
func (c *Client) CA() *x509.CertPool {
	if tr, ok := c.HTTP.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
		return tr.TLSClientConfig.RootCAs
	}
	return nil
}

// APIError is a non-2xx answer of an agent.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// IsNotFound reports whether err is a 404 from the API.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	if len(c.Endpoints) == 0 {
		return errors.New("no agent address known: run `pgfleet dev up`, or pass --api HOST:PORT")
	}
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return err
		}
	}
	var errs []string
	var lastErr error
	for _, ep := range c.Endpoints {
		base, err := endpointBase(ep)
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(payload))
		if err != nil {
			return err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// An agent whose certificate is not from the fleet's CA was
			// sent nothing, and no other agent will do better: the CA
			// the client trusts is wrong.
			var cv *tls.CertificateVerificationError
			if errors.As(err, &cv) {
				return fmt.Errorf("%s %s: %s: %w", method, path, ep, unwrapURLError(err))
			}
			// A read is safe to repeat elsewhere, and so is a write that
			// never reached the agent. A write that may have been received
			// is not: repeating a create would report a conflict with itself.
			var op *net.OpError
			if method != http.MethodGet && !(errors.As(err, &op) && op.Op == "dial") {
				return fmt.Errorf("%s %s: no answer from %s (%v): the request may or may not have taken effect; check with a read command", method, path, ep, unwrapURLError(err))
			}
			errs = append(errs, fmt.Sprintf("%s: %v", ep, dialReason(err)))
			continue // the next agent may answer
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		resp.Body.Close()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: read answer: %v", ep, err))
			continue
		}
		if resp.StatusCode >= 300 {
			var ev ErrorView
			if json.Unmarshal(b, &ev) != nil || ev.Error == "" {
				ev.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
			}
			apiErr := &APIError{Status: resp.StatusCode, Message: ev.Error}
			// An agent cut off from the store's quorum answers 503; another
			// agent may still be on the majority side.
			if resp.StatusCode == http.StatusServiceUnavailable && method == http.MethodGet && ep != c.Endpoints[len(c.Endpoints)-1] {
				errs = append(errs, fmt.Sprintf("%s: %s", ep, ev.Error))
				lastErr = apiErr
				continue
			}
			return apiErr
		}
		if out != nil && len(b) > 0 {
			if err := json.Unmarshal(b, out); err != nil {
				return fmt.Errorf("decode answer of %s: %w", ep, err)
			}
		}
		return nil
	}
	if lastErr != nil {
		return lastErr
	}
	return fmt.Errorf("no agent answered (%s): is the fleet running? (`pgfleet dev up` starts a local one)", groupErrors(errs))
}

// endpointBase is the URL an endpoint's paths go after: HOST:PORT means
// https://HOST:PORT, and nothing but HTTPS is taken.
func endpointBase(ep string) (string, error) {
	base := ep
	if !strings.Contains(base, "://") {
		base = "https://" + base
	}
	if !strings.HasPrefix(base, "https://") {
		return "", fmt.Errorf("API address %s: agents serve the API over HTTPS only; give HOST:PORT or https://HOST:PORT", ep)
	}
	return base, nil
}

// dialReason is why a request got no answer, without the address the
// error repeats.
func dialReason(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" && op.Err != nil {
		return op.Err
	}
	return unwrapURLError(err)
}

// groupErrors joins "endpoint: reason" lines, naming each reason once
// with every endpoint that gave it.
func groupErrors(errs []string) string {
	var reasons []string
	eps := map[string][]string{}
	for _, e := range errs {
		ep, why, _ := strings.Cut(e, ": ")
		if _, ok := eps[why]; !ok {
			reasons = append(reasons, why)
		}
		eps[why] = append(eps[why], ep)
	}
	var out []string
	for _, why := range reasons {
		out = append(out, fmt.Sprintf("%s: %s", strings.Join(eps[why], ", "), why))
	}
	return strings.Join(out, "; ")
}

func unwrapURLError(err error) error {
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return fmt.Errorf("%v: its certificate is not from the fleet's CA; pass --ca FILE with the CA that `pgfleet ca` prints on a host of the fleet", cv.Err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Health asks one endpoint whether its agent and the store answer.
func (c *Client) Health(ctx context.Context) (HealthView, error) {
	var v HealthView
	err := c.do(ctx, http.MethodGet, "/v1/health", nil, &v)
	return v, err
}

// Hosts lists the live hosts.
func (c *Client) Hosts(ctx context.Context) ([]HostView, error) {
	var v []HostView
	err := c.do(ctx, http.MethodGet, "/v1/hosts", nil, &v)
	return v, err
}

// Clusters lists every cluster.
func (c *Client) Clusters(ctx context.Context) ([]ClusterView, error) {
	var v []ClusterView
	err := c.do(ctx, http.MethodGet, "/v1/clusters", nil, &v)
	return v, err
}

// Cluster reads one cluster.
func (c *Client) Cluster(ctx context.Context, name string) (ClusterView, error) {
	var v ClusterView
	err := c.do(ctx, http.MethodGet, "/v1/clusters/"+url.PathEscape(name), nil, &v)
	return v, err
}

// Create asks for a new cluster.
func (c *Client) Create(ctx context.Context, req CreateRequest) (ClusterView, error) {
	var v ClusterView
	err := c.do(ctx, http.MethodPost, "/v1/clusters", req, &v)
	return v, err
}

// Destroy deletes a cluster and, through its agents, its data.
func (c *Client) Destroy(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/clusters/"+url.PathEscape(name)+"?confirm="+url.QueryEscape(name), nil, nil)
}

// Events reads a cluster's events, oldest first.
func (c *Client) Events(ctx context.Context, name string, limit int) ([]fleet.Event, error) {
	var v []fleet.Event
	err := c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/clusters/%s/events?limit=%d", url.PathEscape(name), limit), nil, &v)
	return v, err
}

// ClusterURL returns a libpq URL with credentials, chosen by o: by default
// the primary through the routing proxies of the primary region's hosts.
func (c *Client) ClusterURL(ctx context.Context, name string, o URLOptions) (URLView, error) {
	if err := o.Check(); err != nil {
		return URLView{}, err
	}
	var v URLView
	path := "/v1/clusters/" + url.PathEscape(name) + "/url"
	if q := o.query().Encode(); q != "" {
		path += "?" + q
	}
	if err := c.do(ctx, http.MethodGet, path, nil, &v); err != nil {
		return v, err
	}
	if c.CAFile != "" {
		// Appended, not re-encoded: the query keeps its order, and the
		// path keeps its slashes (a query may hold them as they are).
		sep := "?"
		if strings.Contains(v.URL, "?") {
			sep = "&"
		}
		v.URL += sep + "sslrootcert=" + strings.ReplaceAll(url.QueryEscape(c.CAFile), "%2F", "/")
	}
	return v, nil
}

// URL returns a direct libpq URL with credentials of member, or of the
// current primary when member is "". It is for tools that must reach one
// particular postgres, such as tests and benchmarks; apps should use
// ClusterURL, whose proxies follow the primary.
func (c *Client) URL(ctx context.Context, name, member string) (URLView, error) {
	if member == "" {
		v, err := c.Cluster(ctx, name)
		if err != nil {
			return URLView{}, err
		}
		if v.Primary == "" {
			return URLView{}, &APIError{Status: http.StatusServiceUnavailable,
				Message: fmt.Sprintf("cluster %s has no primary yet: wait for `pgfleet status %s` to show one, or pass --member", name, name)}
		}
		member = v.Primary
	}
	return c.ClusterURL(ctx, name, URLOptions{Member: member})
}

// Switchover starts a planned leader change; to "" lets the fleet pick.
func (c *Client) Switchover(ctx context.Context, name, to string) (SwitchoverView, error) {
	var v SwitchoverView
	err := c.do(ctx, http.MethodPost, "/v1/clusters/"+url.PathEscape(name)+"/switchover", SwitchoverRequest{To: to}, &v)
	return v, err
}

// Failover makes the primary step down and starts an election.
func (c *Client) Failover(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/clusters/"+url.PathEscape(name)+"/failover", struct{}{}, nil)
}

// Update changes a live cluster's settings.
func (c *Client) Update(ctx context.Context, name string, req UpdateRequest) (ClusterView, error) {
	var v ClusterView
	err := c.do(ctx, http.MethodPatch, "/v1/clusters/"+url.PathEscape(name), req, &v)
	return v, err
}

// CreateBackup asks for a base backup of cluster name now.
func (c *Client) CreateBackup(ctx context.Context, name string) (BackupRequestView, error) {
	var v BackupRequestView
	err := c.do(ctx, http.MethodPost, "/v1/clusters/"+url.PathEscape(name)+"/backups", struct{}{}, &v)
	return v, err
}

// Backups lists the complete backups of cluster name, live or destroyed.
func (c *Client) Backups(ctx context.Context, name string) (BackupsView, error) {
	var v BackupsView
	err := c.do(ctx, http.MethodGet, "/v1/clusters/"+url.PathEscape(name)+"/backups", nil, &v)
	return v, err
}

// VerifyBackups checks backup id of cluster name (every backup when id is
// empty) and the WAL they need. It reads every object, so it gets as long
// as it takes rather than the usual request timeout.
func (c *Client) VerifyBackups(ctx context.Context, name, id string) (backup.VerifyReport, error) {
	var v backup.VerifyReport
	// Reading back a whole archive takes as long as it takes: the same
	// client, TLS and all, without the timeout.
	slow := *c
	h := *c.HTTP
	h.Timeout = 0
	slow.HTTP = &h
	q := ""
	if id != "" {
		q = "?id=" + url.QueryEscape(id)
	}
	err := slow.do(ctx, http.MethodGet, "/v1/clusters/"+url.PathEscape(name)+"/backups/verify"+q, nil, &v)
	return v, err
}
