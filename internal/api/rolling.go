package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// The orchestrations below are made of API calls and waits on what the
// API answers, and are shared by every client that runs them: the CLI
// (`pgfleet restart`, `config set --restart`, `replica remove`, `ha`) and
// the web console, which calls them with an in-process Client
// (NewInProcessClient). So a rolling restart or a removal behaves the
// same whichever a person uses.

// NewInProcessClient returns a client whose requests are served by h, the
// API's handler, in the same process, with token: for the web console,
// which runs the same client-side orchestrations as the CLI.
func NewInProcessClient(h http.Handler, token string) *Client {
	return &Client{Endpoints: []string{InProcessURL}, Token: token, HTTP: &http.Client{Transport: InProcess(h)}}
}

// InProcessURL is the base URL of requests that InProcess serves; its host
// is never dialled.
const InProcessURL = "https://in-process"

// InProcess returns a RoundTripper that serves every request with h in the
// same process: the request never crosses a network, and h sees it as
// from a client whose address is "console".
func InProcess(h http.Handler) http.RoundTripper { return inProcess{h} }

type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	sr := r.Clone(r.Context())
	sr.RequestURI = r.URL.RequestURI()
	sr.RemoteAddr = "console"
	rec := &inProcessAnswer{header: http.Header{}}
	t.h.ServeHTTP(rec, sr)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return &http.Response{
		Status: fmt.Sprintf("%d %s", rec.code, http.StatusText(rec.code)), StatusCode: rec.code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rec.header, Body: io.NopCloser(strings.NewReader(rec.body.String())), Request: r,
	}, nil
}

type inProcessAnswer struct {
	header http.Header
	code   int
	body   strings.Builder
}

func (a *inProcessAnswer) Header() http.Header { return a.header }

func (a *inProcessAnswer) WriteHeader(code int) {
	if a.code == 0 {
		a.code = code
	}
}

func (a *inProcessAnswer) Write(b []byte) (int, error) {
	if a.code == 0 {
		a.code = http.StatusOK
	}
	return a.body.Write(b)
}

// UntilOutOfSync calls a removal (RemoveMember, SetHA) again, for up to a
// minute, while the API answers that the members are still leaving the
// primary's sync set (each answer waits a few seconds for it already);
// waiting is called once, before the first retry.
func UntilOutOfSync(call func() (ShapeView, error), waiting func()) (ShapeView, error) {
	deadline := time.Now().Add(time.Minute)
	said := false
	for {
		v, err := call()
		var ae *APIError
		if err == nil || !errors.As(err, &ae) || !strings.Contains(ae.Message, LeavingSyncSet) || time.Now().After(deadline) {
			return v, err
		}
		if !said && waiting != nil {
			waiting()
			said = true
		}
	}
}

// WaitPrimary waits until cluster name satisfies ok and its primary runs.
func (c *Client) WaitPrimary(ctx context.Context, name string, ok func(ClusterView) bool) error {
	last := "no answer"
	for {
		v, err := c.Cluster(ctx, name)
		if err == nil {
			last = "primary " + v.Primary
			for _, m := range v.Members {
				if m.ID == v.Primary && ok(v) && m.State == fleet.StateRunning {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster %s: no new primary in time (last seen: %s); see `pgfleet events %s`", name, last, name)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RollingRestart restarts every member of cluster name, one at a time:
// read replicas, then standbys, each back and streaming before the next;
// then a switchover moves the primary to a standby (clients through the
// proxies are held, not failed), and the old primary restarts as a
// standby. Never more than one member is down. It writes a line to out
// for each step done.
func (c *Client) RollingRestart(ctx context.Context, name string, out io.Writer) error {
	start := time.Now()
	v, err := c.Cluster(ctx, name)
	if err != nil {
		return err
	}
	if v.Primary == "" {
		return fmt.Errorf("cluster %s has no primary now: wait for `pgfleet status %s` to show one", name, name)
	}
	primary := v.Primary
	var replicas, standbys []string
	for _, m := range v.Members {
		switch {
		case m.ID == primary:
		case m.Region != v.PrimaryRegion:
			replicas = append(replicas, m.ID)
		default:
			standbys = append(standbys, m.ID)
		}
	}
	for _, id := range append(replicas, standbys...) {
		if err := c.restartOne(ctx, name, id, out); err != nil {
			return err
		}
	}
	if len(standbys) == 0 {
		return fmt.Errorf("restarted every other member; %s is the only member of the primary region, so restarting it would stop writes: add a standby (`pgfleet ha %s --size 2`) and run the restart again", primary, name)
	}
	sv, err := c.Switchover(ctx, name, "")
	if err != nil {
		return fmt.Errorf("switch over before restarting the primary %s: %w", primary, err)
	}
	fmt.Fprintf(out, "switching over from %s to %s\n", sv.From, sv.To)
	if err := c.WaitPrimary(ctx, name, func(cv ClusterView) bool { return cv.Primary == sv.To }); err != nil {
		return err
	}
	if err := c.restartOne(ctx, name, primary, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "cluster %s restarted in %s; %s is the primary\n", name, time.Since(start).Round(100*time.Millisecond), sv.To)
	return nil
}

// restartOne orders member id to restart and waits until it is back:
// healthy, caught up enough to stream, with the order carried out.
func (c *Client) restartOne(ctx context.Context, name, id string, out io.Writer) error {
	t0 := time.Now()
	rv, err := c.RestartMember(ctx, name, id)
	if err != nil {
		return err
	}
	last := "no answer"
	for {
		v, err := c.Cluster(ctx, name)
		if err == nil {
			for _, m := range v.Members {
				if m.ID != id {
					continue
				}
				last = fmt.Sprintf("%s %s, healthy %v, order %q", m.Role, m.State, m.Healthy, m.Restarted)
				if m.Restarted == rv.Order && m.Healthy && m.State == fleet.StateStreaming && m.LagBytes >= 0 {
					fmt.Fprintf(out, "restarted %s in %s\n", id, time.Since(t0).Round(100*time.Millisecond))
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not come back from its restart in time (last seen: %s); see `pgfleet events %s`", id, strings.TrimSpace(last), name)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
