package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/store"
)

// DefaultPortBase is the first port block handed to clusters.
const DefaultPortBase = 6000

// Server serves one agent's API. Every answer is read from the store, so any
// agent of the fleet answers the same.
type Server struct {
	store    *store.Store
	self     fleet.Host
	log      *slog.Logger
	portBase int

	mu        sync.Mutex
	tokenHash string    // the fleet's token's hash, as last read
	tokenRead time.Time // when

	ca atomic.Pointer[pki.Authority] // the fleet's CA; its key only on hosts that hold it

	console http.Handler // the web console, served at every path the API leaves

	logs logState // members' logs (logs.go)

	// memberChecked says when the supervisor of a member on this host last
	// checked its status (health checks); nil: the status's Updated.
	memberChecked func(member string) time.Time

	voters   func(context.Context) ([]string, error) // the store's voters; nil on an existing etcd
	excluded func(rotation, host string) bool        // hosts CA rotations left behind; nil: the record's list only
}

// SetMemberChecked tells the server when this host's supervisors last
// checked their members, for the health checks.
func (s *Server) SetMemberChecked(f func(member string) time.Time) { s.memberChecked = f }

// SetConsole serves h at every path outside the API's own.
func (s *Server) SetConsole(h http.Handler) { s.console = h }

// SetCA gives the server the fleet's CA, which join tokens pin and, where
// this host holds its key, admits hosts.
// A CA rotation swaps it while the server runs.
func (s *Server) SetCA(ca *pki.Authority) { s.ca.Store(ca) }

// authority is the CA as last set; nil before SetCA.
func (s *Server) authority() *pki.Authority { return s.ca.Load() }

// NewServer returns a server for the agent on self.
func NewServer(st *store.Store, self fleet.Host, log *slog.Logger) *Server {
	return &Server{store: st, self: self, log: log, portBase: DefaultPortBase}
}

// HashToken is how tokens are kept in the store: never in clear.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// NewToken returns a fresh random API token.
func NewToken() string { return "pgf_" + randomString(32) }

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("read random: %v", err)) // the kernel's RNG does not fail
	}
	return hex.EncodeToString(b)
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", s.health)
	// No method in the pattern: load balancers check with GET, HEAD or
	// OPTIONS, and the handler answers the others itself.
	mux.HandleFunc("/health/{name}/{check}", s.memberHealth)
	mux.HandleFunc("POST /v1/join", s.join)
	mux.HandleFunc("POST /v1/renew", s.renew)
	mux.HandleFunc("GET /v1/ca", s.caProof)
	mux.Handle("POST /v1/tokens", s.auth(s.createJoinToken))
	mux.Handle("POST /v1/tokens/read-only", s.auth(s.createReadOnlyToken))
	mux.Handle("GET /v1/tokens/read-only", s.auth(s.listReadOnlyTokens))
	mux.Handle("DELETE /v1/tokens/read-only/{id}", s.auth(s.revokeReadOnlyToken))
	mux.Handle("POST /v1/tokens/rotate", s.auth(s.rotateToken))
	mux.Handle("GET /v1/hosts", s.read(s.hosts))
	mux.Handle("GET /v1/clusters", s.read(s.listClusters))
	mux.Handle("POST /v1/clusters", s.auth(s.createCluster))
	mux.Handle("GET /v1/clusters/{name}", s.read(s.getCluster))
	mux.Handle("DELETE /v1/clusters/{name}", s.auth(s.deleteCluster))
	mux.Handle("PATCH /v1/clusters/{name}", s.auth(s.updateCluster))
	mux.Handle("GET /v1/clusters/{name}/events", s.read(s.events))
	mux.Handle("GET /v1/clusters/{name}/url", s.auth(s.clusterURL))
	mux.Handle("POST /v1/clusters/{name}/switchover", s.auth(s.switchover))
	mux.Handle("POST /v1/clusters/{name}/failover", s.auth(s.failover))
	mux.Handle("POST /v1/clusters/{name}/replicas", s.auth(s.addReplica))
	mux.Handle("DELETE /v1/clusters/{name}/members/{member}", s.auth(s.removeMember))
	mux.Handle("PUT /v1/clusters/{name}/ha", s.auth(s.setHA))
	mux.Handle("POST /v1/clusters/{name}/members/{member}/restart", s.auth(s.restartMember))
	mux.Handle("GET /v1/clusters/{name}/config", s.read(s.getConfig))
	mux.Handle("PATCH /v1/clusters/{name}/config", s.auth(s.setConfig))
	mux.Handle("POST /v1/clusters/{name}/backups", s.auth(s.createBackup))
	mux.Handle("GET /v1/clusters/{name}/backups", s.read(s.listBackups))
	mux.Handle("GET /v1/clusters/{name}/backups/verify", s.auth(s.verifyBackups))
	s.caRoutes(mux)
	s.accessRoutes(mux)
	s.consoleRoutes(mux)
	s.debugRoutes(mux)
	s.logRoutes(mux)
	s.moveRoutes(mux)
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if s.console != nil {
			s.console.ServeHTTP(w, r)
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorView{Error: msg})
}

// storeError answers a failed store call with the status that says whose
// fault it is.
func (s *Server) storeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, store.ErrClusterExists), errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, store.ErrNoQuorum):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		s.log.Error("request failed", "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (s *Server) auth(h http.HandlerFunc) http.Handler { return s.authorize(h, false) }

// read admits the fleet's API token and read-only tokens too: for the
// requests that change nothing and reveal no secret (not the URLs, which
// carry the superuser's password).
func (s *Server) read(h http.HandlerFunc) http.Handler { return s.authorize(h, true) }

func (s *Server) authorize(h http.HandlerFunc, readOnlyOK bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			writeError(w, http.StatusUnauthorized, "missing bearer token: pass --token or run `pgfleet dev up`, which records it")
			return
		}
		if id, _, ok := parseReadOnlyToken(tok); ok {
			want, err := s.store.ReadOnlyTokenHash(r.Context(), id)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				s.storeError(w, err)
				return
			}
			if err != nil || subtle.ConstantTimeCompare([]byte(HashToken(tok)), []byte(want)) != 1 {
				time.Sleep(authFailureDelay)
				writeError(w, http.StatusUnauthorized, "invalid API token")
				return
			}
			if !readOnlyOK {
				writeError(w, http.StatusForbidden, "a read-only token can list hosts and clusters, their status, events and backups, and nothing else: use the fleet's API token")
				return
			}
			h(w, r)
			return
		}
		want, err := s.wantHash(r.Context())
		if err != nil {
			s.storeError(w, err)
			return
		}
		if subtle.ConstantTimeCompare([]byte(HashToken(tok)), []byte(want)) != 1 {
			time.Sleep(authFailureDelay)
			writeError(w, http.StatusUnauthorized, "invalid API token")
			return
		}
		h(w, r)
	})
}

// tokenCacheFor is how long an agent trusts the token hash it read: a
// rotated token stops working everywhere within it.
const tokenCacheFor = 2 * time.Second

func (s *Server) wantHash(ctx context.Context) (string, error) {
	s.mu.Lock()
	h, read := s.tokenHash, s.tokenRead
	s.mu.Unlock()
	if h != "" && time.Since(read) < tokenCacheFor {
		return h, nil
	}
	// Read outside the lock: a store that is slow to answer must not
	// queue every other request's authentication behind this one.
	h, err := s.store.TokenHash(ctx)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	s.tokenHash, s.tokenRead = h, time.Now()
	s.mu.Unlock()
	return h, nil
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	v := HealthView{Host: s.self.Name, Region: s.self.Region, Store: "ok"}
	if _, err := s.store.Leader(r.Context(), "-"); err != nil {
		v.Store = err.Error()
		writeJSON(w, http.StatusServiceUnavailable, v)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) hostMap(ctx context.Context) (map[string]fleet.Host, []fleet.Host, error) {
	hosts, err := s.store.Hosts(ctx)
	if err != nil {
		return nil, nil, err
	}
	m := make(map[string]fleet.Host, len(hosts))
	for _, h := range hosts {
		m[h.Name] = h
	}
	return m, hosts, nil
}

func (s *Server) hosts(w http.ResponseWriter, r *http.Request) {
	_, hosts, err := s.hostMap(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	cs, err := s.store.Clusters(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	load := memberLoad(cs)
	out := make([]HostView, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, HostView{Host: h, Members: load[h.Name]})
	}
	writeJSON(w, http.StatusOK, out)
}

func memberLoad(cs []store.ClusterState) map[string]int {
	load := map[string]int{}
	for _, c := range cs {
		for _, m := range c.Members {
			load[m.Host]++
		}
	}
	return load
}

func (s *Server) listClusters(w http.ResponseWriter, r *http.Request) {
	hm, _, err := s.hostMap(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	cs, err := s.store.Clusters(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	out := make([]ClusterView, 0, len(cs))
	for _, c := range cs {
		out = append(out, viewCluster(c, hm))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getCluster(w http.ResponseWriter, r *http.Request) {
	if name, ok := clusterName(w, r); ok {
		s.writeCluster(w, r, name)
	}
}

// clusterName returns the cluster named in the path, answering 400 when
// it is not a valid name.
func clusterName(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	if err := fleet.ValidateName("cluster", name, fleet.MaxClusterName); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	return name, true
}

// writeCluster answers with the cluster's current view.
func (s *Server) writeCluster(w http.ResponseWriter, r *http.Request, name string) {
	if c, hm, ok := s.clusterWithHosts(w, r, name); ok {
		writeJSON(w, http.StatusOK, viewCluster(c, hm))
	}
}

// clusterWithHosts reads cluster name and the live hosts by name; a store
// error is answered, and ok is false.
func (s *Server) clusterWithHosts(w http.ResponseWriter, r *http.Request, name string) (store.ClusterState, map[string]fleet.Host, bool) {
	hm, _, err := s.hostMap(r.Context())
	if err != nil {
		s.storeError(w, err)
		return store.ClusterState{}, nil, false
	}
	c, err := s.store.Cluster(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return store.ClusterState{}, nil, false
	}
	return c, hm, true
}

// maxBody bounds request bodies: a create request is a few hundred bytes.
const maxBody = 64 << 10

// decodeStrict reads exactly one JSON object with only known fields.
func decodeStrict(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("content type %q is not supported: send application/json", ct)
	}
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("request body is larger than %d bytes", maxBody)
		}
		if errors.Is(err, io.EOF) {
			return errors.New("request body is empty: send a JSON object")
		}
		return fmt.Errorf("request body is not valid: %v", err)
	}
	if dec.More() {
		return errors.New("request body has data after the JSON object")
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("request body has data after the JSON object")
	}
	return nil
}

func (s *Server) createCluster(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	spec := fleet.ClusterSpec{
		Name: req.Name, PrimaryRegion: req.PrimaryRegion, HA: 1,
		Replicas: req.Replicas, Params: req.Params, Created: time.Now().UTC(),
		LeaseTTL: req.LeaseTTL, MaxLagOnFailover: req.MaxLagOnFailover, Sync: req.Sync,
		MaxReplicaLag: req.MaxReplicaLag, DiskGuard: req.DiskGuard, PoolSize: req.PoolSize,
	}
	if req.HA != nil {
		spec.HA = *req.HA
	}
	if err := spec.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if _, err := s.store.Cluster(r.Context(), spec.Name); err == nil {
		writeError(w, http.StatusConflict, fmt.Sprintf("cluster %q already exists: pick another name, or destroy it first", spec.Name))
		return
	} else if !errors.Is(err, store.ErrNotFound) {
		s.storeError(w, err)
		return
	}
	secrets := fleet.Secrets{SuperuserPassword: randomString(16), ReplicationPassword: randomString(16)}
	if code, msg := s.planBackups(r.Context(), &spec, &secrets, req); code != 0 {
		writeError(w, code, msg)
		return
	}
	// Two tries: a concurrent create may take the same port block between
	// reading the used ports and the transaction.
	for try := 0; ; try++ {
		hm, hosts, err := s.hostMap(r.Context())
		if err != nil {
			s.storeError(w, err)
			return
		}
		cs, err := s.store.Clusters(r.Context())
		if err != nil {
			s.storeError(w, err)
			return
		}
		for _, c := range cs {
			if c.Spec.Name == spec.Name {
				writeError(w, http.StatusConflict, fmt.Sprintf("cluster %q already exists: pick another name, or destroy it first", spec.Name))
				return
			}
		}
		members, err := fleet.Place(spec, hosts, memberLoad(cs))
		if err != nil {
			writeError(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
		used, err := s.store.UsedPorts(r.Context())
		if err != nil {
			s.storeError(w, err)
			return
		}
		spec.Port, err = fleet.NextPort(s.portBase, used, reservedPorts(hosts))
		if err != nil {
			writeError(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
		for i := range members {
			members[i].Port = spec.Port
		}
		ev := fleet.Event{Time: time.Now().UTC(), Cluster: spec.Name, Host: s.self.Name, Kind: "created",
			Message: fmt.Sprintf("cluster %s created: %s", spec.Name, describePlacement(members))}
		err = s.store.CreateCluster(r.Context(), spec, secrets, members, ev)
		if errors.Is(err, store.ErrConflict) && try == 0 {
			continue
		}
		if err != nil {
			s.storeError(w, err)
			return
		}
		s.log.Info("cluster created", "cluster", spec.Name, "port", spec.Port, "members", len(members))
		writeJSON(w, http.StatusCreated, viewCluster(store.ClusterState{Spec: spec, Members: members}, hm))
		return
	}
}

// errNoBackups is a change that needs backups asked of a cluster without.
var errNoBackups = errors.New("no backups")

// reservedPorts are ports a cluster's block must not cover: the agents' API
// ports and embedded etcd's.
func reservedPorts(hosts []fleet.Host) []int {
	ports := []int{2379, 2380}
	for _, h := range hosts {
		if _, p, err := net.SplitHostPort(h.APIAddr); err == nil {
			if n, err := strconv.Atoi(p); err == nil {
				ports = append(ports, n)
			}
		}
	}
	return ports
}

func describePlacement(ms []fleet.MemberSpec) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = fmt.Sprintf("%s %s on %s", m.ID, m.Role, m.Host)
	}
	return strings.Join(parts, ", ")
}

func (s *Server) deleteCluster(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	// The name again, as confirmation: a request built from a wrong
	// variable or a replayed URL destroys nothing.
	if r.URL.Query().Get("confirm") != name {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("destroying cluster %s deletes its data on every host: repeat its name as ?confirm=%s (`pgfleet destroy %s --yes` does)", name, name, name))
		return
	}
	if err := s.store.DeleteCluster(r.Context(), name); err != nil {
		s.storeError(w, err)
		return
	}
	s.log.Info("cluster deleted", "cluster", name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxEvents {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q is not valid: give a number from 1 to %d", v, store.MaxEvents))
			return
		}
		limit = n
	}
	if _, err := s.store.Cluster(r.Context(), name); err != nil {
		// A destroyed cluster whose backups are kept keeps its history
		// with them.
		if rt, rerr := s.store.Retired(r.Context(), name); errors.Is(err, store.ErrNotFound) && rerr == nil && len(rt.Events) > 0 {
			writeJSON(w, http.StatusOK, rt.Events[max(0, len(rt.Events)-limit):])
			return
		}
		s.storeError(w, err)
		return
	}
	evs, err := s.store.Events(r.Context(), name, limit)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, evs)
}

// clusterURL answers a libpq URL with the superuser's credentials: by
// default through the routing proxies of the primary region's hosts, so
// that apps follow a failover without changing their URL.
func (s *Server) clusterURL(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	o, err := parseURLQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	_, hosts, err := s.hostMap(r.Context())
	if err != nil {
		s.storeError(w, err)
		return
	}
	c, err := s.store.Cluster(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return
	}
	t, code, msg := clusterURLTarget(c, hosts, o)
	if code != 0 {
		writeError(w, code, msg)
		return
	}
	sec, err := s.store.Secrets(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, URLView{URL: t.format(sec), Via: t.Via, Member: t.Member, Region: t.Region, Port: t.Port, Hosts: t.Hosts})
}

// memberHealth answers a Patroni-compatible health check of the cluster's
// member on this agent's host. It needs no token: load balancers send none,
// and the answer reveals no more than `pgfleet status` would.
func (s *Server) memberHealth(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		w.Header().Set("Allow", "GET, HEAD, OPTIONS")
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s is not allowed on a health check: use GET, HEAD or OPTIONS", r.Method))
		return
	}
	name := r.PathValue("name")
	if err := fleet.ValidateName("cluster", name, fleet.MaxClusterName); err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	hc, code, msg := parseHealthCheck(r.PathValue("check"), r.URL.RawQuery)
	if code != 0 {
		writeError(w, code, msg)
		return
	}
	c, err := s.store.Cluster(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return
	}
	var mine fleet.MemberSpec
	var where []string
	for _, m := range c.Members {
		if m.Host == s.self.Name {
			mine = m
		}
		where = append(where, m.Host)
	}
	if mine.ID == "" {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("cluster %s has no member on host %s: check the hosts that run one (%s)", name, s.self.Name, strings.Join(where, ", ")))
		return
	}
	mh := memberHealth{ID: mine.ID, Leader: c.Leader}
	if f := s.memberChecked; f != nil {
		mh.Checked = f(mine.ID)
	}
	mh.Status, mh.HasStatus = c.Status[mine.ID]
	// A sync set belongs to the primary that published it; a stale one
	// from an earlier primary, or one left in a mode turned off, names
	// nobody.
	if c.Sync != nil && c.Spec.SyncMode() != fleet.SyncOff && c.Sync.Primary == c.Leader {
		mh.Sync = c.Sync.Members
	}
	code, reason := judgeHealth(hc, mh, time.Now())
	v := MemberHealthView{
		Cluster: name, Member: mine.ID, Check: hc.Check, Role: mine.Role, State: fleet.StateUnknown, LagBytes: -1,
		Leader: c.Leader == mine.ID, SyncStandby: slices.Contains(mh.Sync, mine.ID), Reason: reason,
	}
	if mh.HasStatus {
		v.Role, v.State, v.Timeline, v.LagBytes = mh.Status.Role, mh.Status.State, mh.Status.Timeline, mh.Status.LagBytes
		if v.Role == fleet.RolePrimary {
			v.LagBytes = 0
		}
	}
	if r.Method == http.MethodOptions {
		// As Patroni does: the status code is the answer.
		w.WriteHeader(code)
		return
	}
	writeJSON(w, code, v)
}

// switchover starts a planned leader change to a standby of the primary
// region: the primary stops cleanly, the target takes over once it has
// every record. The answer comes at once; the CLI waits for the new primary.
func (s *Server) switchover(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req SwitchoverRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	c, err := s.store.Cluster(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if c.Leader == "" {
		writeError(w, http.StatusConflict, fmt.Sprintf("cluster %s has no primary right now (an election is running): retry in a few seconds", name))
		return
	}
	to, msg := switchoverTarget(c, req.To)
	if to == "" {
		writeError(w, http.StatusUnprocessableEntity, msg)
		return
	}
	sw := fleet.Switchover{From: c.Leader, To: to, Requested: time.Now().UTC()}
	if err := s.store.RequestSwitchover(r.Context(), name, sw); err != nil {
		s.storeError(w, err)
		return
	}
	s.store.AppendEvent(r.Context(), fleet.Event{Cluster: name, Host: s.self.Name, Kind: "switchover",
		Message: fmt.Sprintf("switchover requested from %s to %s", sw.From, sw.To)})
	writeJSON(w, http.StatusAccepted, SwitchoverView{From: sw.From, To: sw.To})
}

// switchoverTarget checks the requested target, or picks the healthy
// eligible standby with the least lag; "" and why when there is none.
func switchoverTarget(c store.ClusterState, want string) (string, string) {
	best, bestLag := "", int64(-1)
	for _, m := range c.Members {
		st, ok := c.Status[m.ID]
		switch {
		case m.ID == c.Leader:
			if want == m.ID {
				return "", fmt.Sprintf("%s is already the primary", m.ID)
			}
			continue
		case want != "" && m.ID != want:
			continue
		case !ha.Eligible(m, c.Spec):
			if want != "" {
				return "", fmt.Sprintf("%s is a read replica in %s: only standbys in the primary region %s can become primary", m.ID, m.Region, c.Spec.PrimaryRegion)
			}
			continue
		case !ok || st.State != fleet.StateStreaming || st.LagBytes < 0:
			if want != "" {
				return "", fmt.Sprintf("%s is not streaming from the primary (state %s): it cannot take over now", m.ID, stateOf(st, ok))
			}
			continue
		}
		if best == "" || st.LagBytes < bestLag {
			best, bestLag = m.ID, st.LagBytes
		}
	}
	if best == "" && want != "" {
		return "", fmt.Sprintf("cluster %s has no member %q", c.Spec.Name, want)
	}
	if best == "" {
		return "", fmt.Sprintf("cluster %s has no streaming standby in %s to switch over to", c.Spec.Name, c.Spec.PrimaryRegion)
	}
	return best, ""
}

func stateOf(st fleet.MemberStatus, ok bool) fleet.State {
	if !ok {
		return fleet.StateUnknown
	}
	return st.State
}

// failover asks the primary to fence itself and release the leader key,
// which starts an election. Unlike a switchover it does not wait for a
// standby to catch up.
func (s *Server) failover(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	c, err := s.store.Cluster(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if c.Leader == "" {
		writeError(w, http.StatusConflict, fmt.Sprintf("cluster %s has no primary to step down: an election is already under way", name))
		return
	}
	// With no standby that could take over, stepping down only stops the
	// writes until the same primary is elected again.
	if _, why := switchoverTarget(c, ""); why != "" {
		writeError(w, http.StatusConflict, why+": a failover would only stop writes until "+c.Leader+" is elected again")
		return
	}
	if err := s.store.RequestStepdown(r.Context(), name); err != nil {
		if errors.Is(err, store.ErrNoQuorum) {
			s.storeError(w, err)
			return
		}
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	s.store.AppendEvent(r.Context(), fleet.Event{Cluster: name, Host: s.self.Name, Kind: "failover", Message: "failover requested: the primary steps down and an election follows"})
	w.WriteHeader(http.StatusAccepted)
}

// updateCluster changes what can change on a live cluster: its replication
// mode. The primary applies it within a moment.
func (s *Server) updateCluster(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req UpdateRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Sync == nil && req.BackupEvery == nil && req.DiskGuard == nil && req.PoolSize == nil {
		writeError(w, http.StatusBadRequest, "nothing to change: give sync (off, on or strict), backup_every_s, disk_guard_pct or pool_size")
		return
	}
	if n := req.PoolSize; n != nil && (*n < 1 || *n > fleet.MaxPoolSize) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("pool size %d: give 1 to %d server connections per user and database", *n, fleet.MaxPoolSize))
		return
	}
	if g := req.DiskGuard; g != nil && (*g == 0 || fleet.ValidateDiskGuard(*g) != nil) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("disk guard %d %%: give a percentage of free space from 1 to %d, or -1 to turn the guard off", *g, fleet.MaxDiskGuard))
		return
	}
	if req.Sync != nil {
		if err := fleet.ValidateSync(*req.Sync); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	if e := req.BackupEvery; e != nil && *e < 60 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("backup interval %ds: it must be at least a minute", *e))
		return
	}
	var msgs []string
	err := s.store.UpdateSpec(r.Context(), name, "update", func(spec *fleet.ClusterSpec) error {
		msgs = nil
		if req.Sync != nil {
			spec.Sync = *req.Sync
			msgs = append(msgs, "sync mode set to "+*req.Sync)
		}
		if req.BackupEvery != nil {
			if spec.Backup == nil {
				return fmt.Errorf("cluster %s has no backups: it was created without a backup store: %w", name, errNoBackups)
			}
			b := *spec.Backup
			b.EverySeconds = *req.BackupEvery
			spec.Backup = &b
			msgs = append(msgs, "base backups every "+b.Every().String())
		}
		if req.DiskGuard != nil {
			spec.DiskGuard = *req.DiskGuard
			msgs = append(msgs, "disk guard set to "+fleet.FormatDiskGuard(*spec))
		}
		if req.PoolSize != nil {
			spec.PoolSize = *req.PoolSize
			msgs = append(msgs, fmt.Sprintf("pool size set to %d server connections per user and database", *req.PoolSize))
		}
		return nil
	})
	if errors.Is(err, errNoBackups) {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err != nil {
		s.storeError(w, err)
		return
	}
	for _, m := range msgs {
		s.store.AppendEvent(r.Context(), fleet.Event{Cluster: name, Host: s.self.Name, Kind: "config", Message: m})
	}
	s.writeCluster(w, r, name)
}
