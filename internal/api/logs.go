package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/memberlog"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/store"
)

// A member's log (memberlog) is kept on its own host only. The agent that
// gets a request for it serves it from disk when the member is on its host,
// and otherwise forwards the request to the agent of the member's host, over
// TLS verified against the fleet's CA, with the caller's own Authorization
// header: the member's host checks the caller's token itself, and the
// forwarding agent lends the request none of its own credentials.
//
// The answer is a stream of JSON objects, one per line (LogLine): the
// member's lines, oldest first; with follow, then the new lines as they are
// written, an empty object as a heartbeat when there were none for
// logHeartbeat, and an object with Error when the stream must end.

// logHeartbeat is how often a followed log with nothing new says it is
// still there. An agent forwarding a log takes the member's host for lost
// after forwardIdleLimit without a line or a heartbeat from it, and says so;
// a client waits longer, clientIdleLimit, so that it hears which host went
// silent from the agent in between rather than blaming that agent.
const (
	logHeartbeat     = 5 * time.Second
	forwardIdleLimit = 15 * time.Second
	clientIdleLimit  = 30 * time.Second
)

// forwardedHeader marks a request one agent forwarded to another: the
// second serves it from its own disk or refuses it, and never forwards it
// again.
const forwardedHeader = "X-Pgfleet-Forwarded-By"

// LogLine is one object of a log stream.
type LogLine struct {
	Time   time.Time `json:"time,omitzero"`
	Member string    `json:"member,omitempty"`
	Source string    `json:"source,omitempty"` // postgres or agent
	Level  string    `json:"level,omitempty"`
	Text   string    `json:"text,omitempty"`
	// Error ends a stream that could not go on: the member's host went
	// away, or its agent is stopping.
	Error string `json:"error,omitempty"`
}

// heartbeat reports whether l carries nothing: a followed stream's sign of
// life.
func (l LogLine) heartbeat() bool { return l.Time.IsZero() && l.Error == "" }

// LogOptions choose the lines of a log request.
type LogOptions struct {
	// Member whose log to read; "" is the primary.
	Member string
	// Since is a duration back from now ("10m") or an RFC 3339 time; ""
	// is the whole log the member's host keeps.
	Since  string
	Follow bool
}

// logState is the server's part in member logs.
type logState struct {
	dir func(member string) string // where a member of this host keeps its log

	mu   sync.Mutex
	stop chan struct{}
}

func (l *logState) stopc() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop == nil {
		l.stop = make(chan struct{})
	}
	return l.stop
}

// SetMemberLogs tells the server where the members of its host keep their
// logs.
func (s *Server) SetMemberLogs(dir func(member string) string) { s.logs.dir = dir }

// Stopping ends the followed logs being served, each with an error that
// says why: http.Server.Shutdown waits for open requests, and a followed
// log never ends by itself.
func (s *Server) Stopping() {
	c := s.logs.stopc()
	select {
	case <-c:
	default:
		close(c)
	}
}

// logRoutes serves the members' logs. They need the fleet's API token: a
// postgres log holds the text of failed statements, and with settings such
// as log_statement every statement and its data, which a read-only token
// (for dashboards and status) must not reveal.
func (s *Server) logRoutes(mux *http.ServeMux) {
	mux.Handle("GET /v1/clusters/{name}/logs", s.auth(s.memberLogs))
}

// ParseSince reads a --since: a duration back from now ("10m", "1h30m") or
// an RFC 3339 time.
func ParseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("since %q is negative: give how long ago, such as 10m", v)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("since %q is neither a duration nor a time: give how long ago, such as 10m or 2h30m, or a time such as 2026-01-02T15:04:05Z", v)
}

// logQuery is what GET /v1/clusters/{name}/logs asks for.
type logQuery struct {
	member string
	since  time.Time
	follow bool
}

// parseLogQuery reads the parameters of GET /v1/clusters/{name}/logs,
// refusing unknown, repeated and malformed ones. A since given as a
// duration is taken back from now.
func parseLogQuery(rawQuery, cluster string, now time.Time) (logQuery, error) {
	var lq logQuery
	keys, q, err := singleParams(rawQuery)
	if err != nil {
		return lq, err
	}
	for _, k := range keys {
		v := q[k]
		switch k {
		case "member":
			if err := fleet.ValidateMemberID(cluster, v); err != nil {
				return lq, err
			}
			lq.member = v
		case "since":
			if lq.since, err = ParseSince(v, now); err != nil {
				return lq, err
			}
		case "follow":
			if lq.follow, err = strconv.ParseBool(v); err != nil {
				return lq, fmt.Errorf("follow=%q is not valid: give true or false", v)
			}
		default:
			return lq, fmt.Errorf("unknown parameter %q: give member, since or follow", k)
		}
	}
	return lq, nil
}

func (s *Server) memberLogs(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	lq, err := parseLogQuery(r.URL.RawQuery, name, time.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	member, since, follow := lq.member, lq.since, lq.follow
	c, hm, ok := s.clusterWithHosts(w, r, name)
	if !ok {
		return
	}
	m, code, msg := logMember(c, member)
	if code != 0 {
		writeError(w, code, msg)
		return
	}
	if m.Host == s.self.Name {
		s.serveLog(w, r, m, since, follow)
		return
	}
	if by := r.Header.Get(forwardedHeader); by != "" {
		// The two agents read the store at different moments, and the
		// member moved in between: the first one's caller asks again.
		writeError(w, http.StatusConflict, fmt.Sprintf("member %s is no longer on host %s (it is on %s now): ask again", m.ID, s.self.Name, m.Host))
		return
	}
	h, ok := hm[m.Host]
	if !ok {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("member %s is on host %s, which is down: its log is kept on that host; read it once the host is back (`pgfleet hosts` lists the live ones), or another member's with --member", m.ID, m.Host))
		return
	}
	s.forwardLog(w, r, m, h, since, follow)
}

// logMember is the member whose log a request reads: the one named, or
// the primary; a status and a message when there is none.
func logMember(c store.ClusterState, member string) (fleet.MemberSpec, int, string) {
	ids := make([]string, len(c.Members))
	for i, m := range c.Members {
		ids[i] = m.ID
	}
	if member == "" {
		m, ok := c.Member(c.Leader)
		if c.Leader == "" || !ok {
			return m, http.StatusServiceUnavailable, fmt.Sprintf("cluster %s has no primary right now: name a member with --member (%s)", c.Spec.Name, strings.Join(ids, ", "))
		}
		return m, 0, ""
	}
	m, ok := c.Member(member)
	if !ok {
		return m, http.StatusNotFound, fmt.Sprintf("cluster %s has no member %s: its members are %s", c.Spec.Name, member, strings.Join(ids, ", "))
	}
	return m, 0, ""
}

// streamWriter writes a log stream's objects, flushing each when the
// stream is followed.
type streamWriter struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	enc    *json.Encoder
	follow bool
}

func startStream(w http.ResponseWriter, follow bool) *streamWriter {
	rc := http.NewResponseController(w)
	if follow {
		// A followed log is open for as long as its reader wants; the
		// server's deadlines are for requests that end.
		_ = rc.SetWriteDeadline(time.Time{})
		_ = rc.SetReadDeadline(time.Time{})
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	sw := &streamWriter{w: w, rc: rc, enc: json.NewEncoder(w), follow: follow}
	sw.flush()
	return sw
}

func (sw *streamWriter) write(l LogLine) error {
	if err := sw.enc.Encode(l); err != nil {
		return err
	}
	if sw.follow {
		return sw.flush()
	}
	return nil
}

func (sw *streamWriter) flush() error {
	if err := sw.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// serveLog streams the log of m, a member of this host, from disk.
func (s *Server) serveLog(w http.ResponseWriter, r *http.Request, m fleet.MemberSpec, since time.Time, follow bool) {
	if s.logs.dir == nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the agent on host %s keeps no member logs", s.self.Name))
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	errStopping := fmt.Errorf("the agent on host %s, which keeps the log of member %s, is stopping: follow again once it is back", s.self.Name, m.ID)
	stop := s.logs.stopc()
	go func() {
		select {
		case <-stop:
			cancel(errStopping)
		case <-ctx.Done():
		}
	}()
	sw := startStream(w, follow)
	var writeErr error // the reader went away: nothing more to say to it
	write := func(l LogLine) error {
		writeErr = sw.write(l)
		return writeErr
	}
	err := memberlog.Read(ctx, s.logs.dir(m.ID), memberlog.ReadOptions{
		Since: since, Follow: follow, IdleEvery: logHeartbeat,
		Idle: func() error { return write(LogLine{}) },
	}, func(l memberlog.Line) error {
		return write(LogLine{Time: l.Time, Member: m.ID, Source: l.Source, Level: l.Level, Text: l.Text})
	})
	if errors.Is(context.Cause(ctx), errStopping) {
		err = errStopping
	}
	if err != nil && writeErr == nil && r.Context().Err() == nil {
		if !errors.Is(err, errStopping) {
			s.log.Warn("serve member log", "cluster", m.Cluster, "member", m.ID, "err", err)
		}
		_ = sw.write(LogLine{Error: err.Error()})
	}
	_ = sw.flush()
}

// forwardLog asks the agent of host h, where m keeps its log, for it, and
// streams its answer through as it comes.
func (s *Server) forwardLog(w http.ResponseWriter, r *http.Request, m fleet.MemberSpec, h fleet.Host, since time.Time, follow bool) {
	ca := s.authority()
	if ca == nil || ca.CertPEM == nil {
		writeError(w, http.StatusServiceUnavailable, "this agent does not know the fleet's CA yet: retry in a few seconds")
		return
	}
	// Every CA of the bundle: during a CA rotation, the other host's
	// certificate may come from either.
	roots, err := pki.Pool(ca.CertPEM)
	if err != nil {
		s.log.Error("the fleet's CA", "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	tr := &http.Transport{
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 15 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	defer tr.CloseIdleConnections()
	q := url.Values{"member": {m.ID}, "follow": {fmt.Sprint(follow)}}
	if !since.IsZero() {
		// The time this agent read the duration at, not the other's.
		q.Set("since", since.UTC().Format(time.RFC3339Nano))
	}
	u := "https://" + h.APIAddr + "/v1/clusters/" + url.PathEscape(m.Cluster) + "/logs?" + q.Encode()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := s.logs.stopc()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	req.Header.Set("Authorization", r.Header.Get("Authorization"))
	req.Header.Set(forwardedHeader, s.self.Name)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("member %s is on host %s, which does not answer (%v): its log is kept on that host; retry once it is back, or read another member's with --member", m.ID, h.Name, unwrapURLError(err)))
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		w.Write(b)
		return
	}
	sw := startStream(w, follow)
	ended := false // the other agent ended the stream with its reason
	err = readLogStream(resp.Body, forwardIdleLimit, func(l LogLine) error {
		ended = ended || l.Error != ""
		return sw.write(l)
	})
	if err == nil && follow && !ended {
		err = errors.New("the stream ended")
	}
	if err != nil && !ended && r.Context().Err() == nil {
		why := err.Error()
		select {
		case <-stop:
			why = fmt.Sprintf("the agent on host %s, which this log came through, is stopping: ask another host", s.self.Name)
		default:
			why = fmt.Sprintf("lost the log of member %s from host %s: %s", m.ID, h.Name, why)
		}
		_ = sw.write(LogLine{Error: why})
	}
	_ = sw.flush()
}

// readLogStream calls fn with each object of a log stream (heartbeats
// included) until it ends, and returns nil when it ends whole. With idle > 0, a stream that sends nothing for
// that long is closed and reported: a host that vanished from the network
// sends no reset.
func readLogStream(body io.ReadCloser, idle time.Duration, fn func(LogLine) error) error {
	var timedOut atomic.Bool
	var timer *time.Timer
	if idle > 0 {
		timer = time.AfterFunc(idle, func() { timedOut.Store(true); body.Close() })
		defer timer.Stop()
	}
	br := bufio.NewReaderSize(body, 64<<10)
	for {
		b, err := br.ReadBytes('\n')
		if timer != nil {
			timer.Reset(idle)
		}
		if len(bytes.TrimSpace(b)) > 0 && err == nil {
			var l LogLine
			if jerr := json.Unmarshal(b, &l); jerr != nil {
				return fmt.Errorf("read log stream: %w", jerr)
			}
			if ferr := fn(l); ferr != nil {
				return ferr
			}
		}
		switch {
		case timedOut.Load():
			return fmt.Errorf("no answer for %s", idle)
		case errors.Is(err, io.EOF) && len(b) == 0:
			return nil
		case err != nil:
			return err
		}
	}
}

// Logs calls fn with each line of the log of a member of cluster name,
// oldest first, through the first agent that answers; with o.Follow it
// goes on with new lines until ctx ends or the stream is lost, which it
// reports.
func (c *Client) Logs(ctx context.Context, name string, o LogOptions, fn func(LogLine) error) error {
	if o.Since != "" {
		if _, err := ParseSince(o.Since, time.Now()); err != nil {
			return err
		}
	}
	if len(c.Endpoints) == 0 {
		return errors.New("no agent address known: run `pgfleet dev up`, or pass --api HOST:PORT")
	}
	// A log takes as long as it takes to read, and a followed one has no
	// end: no timeout for the whole request, only for its answer to start.
	hc := *c.HTTP
	hc.Timeout = 0
	if tr, ok := hc.Transport.(*http.Transport); ok {
		tr = tr.Clone()
		tr.ResponseHeaderTimeout = 30 * time.Second
		hc.Transport = tr
		defer tr.CloseIdleConnections()
	}
	q := url.Values{}
	if o.Member != "" {
		q.Set("member", o.Member)
	}
	if o.Since != "" {
		q.Set("since", o.Since)
	}
	if o.Follow {
		q.Set("follow", "true")
	}
	path := "/v1/clusters/" + url.PathEscape(name) + "/logs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var errs []string
	var lastErr error
	for i, ep := range c.Endpoints {
		base, err := endpointBase(ep)
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var cv *tls.CertificateVerificationError
			if errors.As(err, &cv) {
				return fmt.Errorf("GET %s: %s: %w", path, ep, unwrapURLError(err))
			}
			errs = append(errs, fmt.Sprintf("%s: %v", ep, dialReason(err)))
			continue
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			var ev ErrorView
			if json.Unmarshal(b, &ev) != nil || ev.Error == "" {
				ev.Error = fmt.Sprintf("GET %s: %s", path, resp.Status)
			}
			apiErr := &APIError{Status: resp.StatusCode, Message: ev.Error}
			// An agent cut off from the store's quorum answers 503;
			// another may be on the majority side.
			if resp.StatusCode == http.StatusServiceUnavailable && i < len(c.Endpoints)-1 {
				errs = append(errs, fmt.Sprintf("%s: %s", ep, ev.Error))
				lastErr = apiErr
				continue
			}
			return apiErr
		}
		var stop error // the stream's reason to end, or fn's failure
		err = readLogStream(resp.Body, clientIdleLimit, func(l LogLine) error {
			switch {
			case l.Error != "":
				stop = errors.New(l.Error)
			case l.heartbeat():
			default:
				stop = fn(l)
			}
			return stop
		})
		switch {
		case stop != nil:
			return stop
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			return fmt.Errorf("lost the log stream from the agent at %s (%v): is it still running? `pgfleet hosts` lists the live hosts", ep, err)
		case o.Follow:
			return fmt.Errorf("the agent at %s ended the log stream: follow again", ep)
		}
		return nil
	}
	if lastErr != nil {
		return lastErr
	}
	return fmt.Errorf("no agent answered (%s): is the fleet running? (`pgfleet dev up` starts a local one)", groupErrors(errs))
}
