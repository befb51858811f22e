package api

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// Users, databases and apps live in Postgres itself, not in the store: the
// agent that answers connects to the cluster's primary as the superuser,
// over TLS verified against the fleet's CA, and changes them there. A
// generated password is in the answer and nowhere else: the server gets
// only its SCRAM verifier, and no log line or event carries it.

// accessRoutes serves the cluster's users, databases and app attachments.
func (s *Server) accessRoutes(mux *http.ServeMux) {
	mux.Handle("GET /v1/clusters/{name}/users", s.read(s.listUsers))
	mux.Handle("POST /v1/clusters/{name}/users", s.auth(s.createUser))
	mux.Handle("DELETE /v1/clusters/{name}/users/{user}", s.auth(s.deleteUser))
	mux.Handle("POST /v1/clusters/{name}/users/{user}/rotate", s.auth(s.rotateUser))
	mux.Handle("GET /v1/clusters/{name}/databases", s.read(s.listDatabases))
	mux.Handle("POST /v1/clusters/{name}/databases", s.auth(s.createDatabase))
	mux.Handle("DELETE /v1/clusters/{name}/databases/{db}", s.auth(s.deleteDatabase))
	mux.Handle("POST /v1/clusters/{name}/apps", s.auth(s.attachApp))
	mux.Handle("DELETE /v1/clusters/{name}/apps/{app}", s.auth(s.detachApp))
	// Not access, but this is the API's one hook for new routes: the
	// shape a destroyed cluster leaves for a restore (retired.go).
	mux.Handle("GET /v1/retired/{name}", s.read(s.retiredCluster))
}

// UserRequest is the body of POST /v1/clusters/{name}/users.
type UserRequest struct {
	Name     string `json:"name"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// PasswordView answers a user's creation or rotation: the one time the
// password is shown.
type PasswordView struct {
	Cluster  string `json:"cluster"`
	User     string `json:"user"`
	Password string `json:"password"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// DatabaseRequest is the body of POST /v1/clusters/{name}/databases.
type DatabaseRequest struct {
	Name string `json:"name"`
}

// AttachRequest is the body of POST /v1/clusters/{name}/apps.
type AttachRequest struct {
	App string `json:"app"`
	// Region is where the app runs: its URLs list that region's proxies
	// (default: the cluster's primary region).
	Region string `json:"region,omitempty"`
}

// AttachView answers an attachment: the app's database, role and URLs,
// with the password in them shown this once.
type AttachView struct {
	Cluster  string `json:"cluster"`
	App      string `json:"app"`
	Database string `json:"database"`
	User     string `json:"user"`
	// URL reaches the primary through the routing proxies, ReplicaURL the
	// nearest member fit for reads.
	URL        string `json:"url"`
	ReplicaURL string `json:"replica_url"`
}

// primaryConn connects to the primary of cluster name as its superuser,
// over TLS verified against the fleet's CA; it answers the request itself
// and returns nil when it cannot. The caller closes the connection.
func (s *Server) primaryConn(w http.ResponseWriter, r *http.Request, name string) (*pgx.Conn, store.ClusterState, []fleet.Host) {
	hm, hosts, err := s.hostMap(r.Context())
	if err != nil {
		s.storeError(w, err)
		return nil, store.ClusterState{}, nil
	}
	c, err := s.store.Cluster(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return nil, c, nil
	}
	m, ok := c.Member(c.Leader)
	if c.Leader == "" || !ok {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("cluster %s has no primary right now (an election may be running): retry in a few seconds", name))
		return nil, c, nil
	}
	h, ok := hm[m.Host]
	if !ok {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the primary %s of cluster %s is on host %s, which is down: retry once a new primary is elected", m.ID, name, m.Host))
		return nil, c, nil
	}
	sec, err := s.store.Secrets(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return nil, c, nil
	}
	roots := x509.NewCertPool()
	if ca := s.authority(); ca != nil && ca.Cert != nil {
		roots.AddCert(ca.Cert)
	} else {
		writeError(w, http.StatusServiceUnavailable, "this agent does not know the fleet's CA yet: retry in a few seconds")
		return nil, c, nil
	}
	ci := postgres.ConnInfo{Host: h.Addr, Port: m.Port, User: fleet.Superuser, Password: sec.SuperuserPassword, Database: "postgres"}
	conn, err := postgres.ConnectVerified(r.Context(), ci, roots)
	if err != nil {
		s.log.Warn("connect to the primary", "cluster", name, "member", m.ID, "err", err)
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("cannot reach the primary %s of cluster %s: %v; retry in a few seconds", m.ID, name, err))
		return nil, c, nil
	}
	return conn, c, hosts
}

// onPrimary runs op on a connection to cluster name's primary and reports
// whether it succeeded; when it did not, the request is answered already.
func (s *Server) onPrimary(w http.ResponseWriter, r *http.Request, name string, op func(context.Context, *pgx.Conn) error) bool {
	conn, _, _ := s.primaryConn(w, r, name)
	if conn == nil {
		return false
	}
	defer conn.Close(context.WithoutCancel(r.Context()))
	if err := op(r.Context(), conn); err != nil {
		s.accessError(w, name, err)
		return false
	}
	return true
}

// accessError answers a failed access operation with the status that says
// whose fault it is.
func (s *Server) accessError(w http.ResponseWriter, cluster string, err error) {
	switch {
	case errors.Is(err, postgres.ErrExists):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, postgres.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, postgres.ErrNotAllowed):
		writeError(w, http.StatusUnprocessableEntity, err.Error())
	case isReadOnlyError(err):
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the primary of cluster %s stepped down while this ran (%v): retry in a few seconds", cluster, err))
	default:
		s.log.Error("access request failed", "cluster", cluster, "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// isReadOnlyError reports whether err is a server's refusal to write
// (read_only_sql_transaction): the member is no longer the primary.
func isReadOnlyError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "25006"
}

// event records what changed, never a password.
func (s *Server) accessEvent(ctx context.Context, cluster, msg string) {
	s.store.AppendEvent(ctx, fleet.Event{Cluster: cluster, Host: s.self.Name, Kind: "access", Message: msg})
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var roles []postgres.Role
	if !s.onPrimary(w, r, name, func(ctx context.Context, conn *pgx.Conn) (err error) {
		roles, err = postgres.Roles(ctx, conn, func(n string) bool { _, owned := fleet.OwnedRole(n); return owned })
		return err
	}) {
		return
	}
	if roles == nil {
		roles = []postgres.Role{}
	}
	writeJSON(w, http.StatusOK, roles)
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req UserRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := fleet.ValidateRoleName("user", req.Name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	pw := randomString(16)
	if !s.onPrimary(w, r, name, func(ctx context.Context, conn *pgx.Conn) error {
		return postgres.CreateUser(ctx, conn, req.Name, pw, req.ReadOnly)
	}) {
		return
	}
	access := "read-write"
	if req.ReadOnly {
		access = "read-only"
	}
	s.log.Info("user created", "cluster", name, "user", req.Name, "access", access)
	s.accessEvent(r.Context(), name, fmt.Sprintf("user %s created (%s on every database)", req.Name, access))
	writeJSON(w, http.StatusCreated, PasswordView{Cluster: name, User: req.Name, Password: pw, ReadOnly: req.ReadOnly})
}

// pathRole returns the role named in the path, answering 400 when the name
// is not one a user or app may have.
func pathRole(w http.ResponseWriter, r *http.Request) (string, bool) {
	user := r.PathValue("user")
	if err := fleet.ValidateRoleName("user", user); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	return user, true
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	user, ok := pathRole(w, r)
	if !ok {
		return
	}
	if !s.onPrimary(w, r, name, func(ctx context.Context, conn *pgx.Conn) error { return postgres.DropUser(ctx, conn, user) }) {
		return
	}
	s.log.Info("user deleted", "cluster", name, "user", user)
	s.accessEvent(r.Context(), name, fmt.Sprintf("user %s deleted", user))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) rotateUser(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	user, ok := pathRole(w, r)
	if !ok {
		return
	}
	pw := randomString(16)
	if !s.onPrimary(w, r, name, func(ctx context.Context, conn *pgx.Conn) error { return postgres.SetPassword(ctx, conn, user, pw) }) {
		return
	}
	s.log.Info("password rotated", "cluster", name, "user", user)
	s.accessEvent(r.Context(), name, fmt.Sprintf("password of %s rotated", user))
	writeJSON(w, http.StatusOK, PasswordView{Cluster: name, User: user, Password: pw})
}

func (s *Server) listDatabases(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var dbs []postgres.Database
	if !s.onPrimary(w, r, name, func(ctx context.Context, conn *pgx.Conn) (err error) {
		dbs, err = postgres.Databases(ctx, conn)
		return err
	}) {
		return
	}
	if dbs == nil {
		dbs = []postgres.Database{}
	}
	writeJSON(w, http.StatusOK, dbs)
}

func (s *Server) createDatabase(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req DatabaseRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := fleet.ValidateDatabaseName(req.Name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !s.onPrimary(w, r, name, func(ctx context.Context, conn *pgx.Conn) error { return postgres.CreateDatabase(ctx, conn, req.Name) }) {
		return
	}
	s.log.Info("database created", "cluster", name, "database", req.Name)
	s.accessEvent(r.Context(), name, fmt.Sprintf("database %s created", req.Name))
	writeJSON(w, http.StatusCreated, postgres.Database{Name: req.Name, Owner: fleet.Superuser})
}

func (s *Server) deleteDatabase(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	db := r.PathValue("db")
	if err := fleet.ValidateDatabaseName(db); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if r.URL.Query().Get("confirm") != db {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("deleting database %s deletes its data: repeat its name as ?confirm=%s (`pgfleet db delete %s %s --yes` does)", db, db, name, db))
		return
	}
	if !s.onPrimary(w, r, name, func(ctx context.Context, conn *pgx.Conn) error { return postgres.DropDatabase(ctx, conn, db) }) {
		return
	}
	s.log.Info("database deleted", "cluster", name, "database", db)
	s.accessEvent(r.Context(), name, fmt.Sprintf("database %s deleted", db))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) attachApp(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	var req AttachRequest
	if err := decodeStrict(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := fleet.ValidateAppName(req.App); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Region != "" {
		if err := fleet.ValidateRegion(req.Region); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	conn, c, hosts := s.primaryConn(w, r, name)
	if conn == nil {
		return
	}
	defer conn.Close(context.WithoutCancel(r.Context()))
	// The URLs first: a region without hosts is refused before anything
	// changes.
	primary, code, msg := clusterURLTarget(c, hosts, URLOptions{Region: req.Region})
	if code != 0 {
		writeError(w, code, msg)
		return
	}
	replica, code, msg := clusterURLTarget(c, hosts, URLOptions{Region: req.Region, Replica: true})
	if code != 0 {
		writeError(w, code, msg)
		return
	}
	pw := randomString(16)
	if err := postgres.AttachApp(r.Context(), conn, req.App, pw); err != nil {
		s.accessError(w, name, err)
		return
	}
	s.log.Info("app attached", "cluster", name, "app", req.App)
	s.accessEvent(r.Context(), name, fmt.Sprintf("app %s attached: database %s owned by role %s", req.App, req.App, req.App))
	writeJSON(w, http.StatusCreated, AttachView{
		Cluster: name, App: req.App, Database: req.App, User: req.App,
		URL: primary.appURL(req.App, pw), ReplicaURL: replica.appURL(req.App, pw),
	})
}

// appURL is the URL of t for an app's own role and database.
func (t urlTarget) appURL(app, password string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(app, password),
		Host:     strings.Join(t.Hosts, ","),
		Path:     "/" + app,
		RawQuery: t.Query,
	}
	return u.String()
}

func (s *Server) detachApp(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	app := r.PathValue("app")
	if err := fleet.ValidateAppName(app); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	q := r.URL.Query()
	dropData := false
	if v := q.Get("drop_data"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("drop_data=%q is not valid: give true or false", v))
			return
		}
		dropData = b
	}
	if dropData && q.Get("confirm") != app {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("detaching app %s with its data deletes database %s: repeat the app's name as ?confirm=%s (`pgfleet detach %s --app %s --drop-data --yes` does)", app, app, app, name, app))
		return
	}
	if !s.onPrimary(w, r, name, func(ctx context.Context, conn *pgx.Conn) error { return postgres.DetachApp(ctx, conn, app, dropData) }) {
		return
	}
	msg := fmt.Sprintf("app %s detached: its role can no longer log in; database %s is kept", app, app)
	if dropData {
		msg = fmt.Sprintf("app %s detached: database %s and role %s dropped", app, app, app)
	}
	s.log.Info("app detached", "cluster", name, "app", app, "drop_data", dropData)
	s.accessEvent(r.Context(), name, msg)
	w.WriteHeader(http.StatusNoContent)
}

// The client's side of the routes above.

func clusterPath(name string, parts ...string) string {
	p := "/v1/clusters/" + url.PathEscape(name)
	for _, s := range parts {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// Users lists cluster name's users and apps.
func (c *Client) Users(ctx context.Context, name string) ([]postgres.Role, error) {
	var v []postgres.Role
	err := c.do(ctx, http.MethodGet, clusterPath(name, "users"), nil, &v)
	return v, err
}

// CreateUser makes a user in cluster name and returns its password.
func (c *Client) CreateUser(ctx context.Context, name string, req UserRequest) (PasswordView, error) {
	var v PasswordView
	err := c.do(ctx, http.MethodPost, clusterPath(name, "users"), req, &v)
	return v, err
}

// DeleteUser removes a user of cluster name.
func (c *Client) DeleteUser(ctx context.Context, name, user string) error {
	return c.do(ctx, http.MethodDelete, clusterPath(name, "users", user), nil, nil)
}

// RotateUser gives a user or an app of cluster name a new password.
func (c *Client) RotateUser(ctx context.Context, name, user string) (PasswordView, error) {
	var v PasswordView
	err := c.do(ctx, http.MethodPost, clusterPath(name, "users", user, "rotate"), struct{}{}, &v)
	return v, err
}

// Databases lists cluster name's databases.
func (c *Client) Databases(ctx context.Context, name string) ([]postgres.Database, error) {
	var v []postgres.Database
	err := c.do(ctx, http.MethodGet, clusterPath(name, "databases"), nil, &v)
	return v, err
}

// CreateDatabase makes database db in cluster name.
func (c *Client) CreateDatabase(ctx context.Context, name, db string) error {
	return c.do(ctx, http.MethodPost, clusterPath(name, "databases"), DatabaseRequest{Name: db}, nil)
}

// DeleteDatabase drops database db of cluster name, with its data.
func (c *Client) DeleteDatabase(ctx context.Context, name, db string) error {
	return c.do(ctx, http.MethodDelete, clusterPath(name, "databases", db)+"?confirm="+url.QueryEscape(db), nil, nil)
}

// Attach gives an app a database and a role in cluster name and returns
// its URLs, with sslrootcert added as ClusterURL does.
func (c *Client) Attach(ctx context.Context, name string, req AttachRequest) (AttachView, error) {
	var v AttachView
	if err := c.do(ctx, http.MethodPost, clusterPath(name, "apps"), req, &v); err != nil {
		return v, err
	}
	v.URL, v.ReplicaURL = c.withRootCert(v.URL), c.withRootCert(v.ReplicaURL)
	return v, nil
}

// Detach takes an app's access away; with dropData its database and role
// are dropped too.
func (c *Client) Detach(ctx context.Context, name, app string, dropData bool) error {
	path := clusterPath(name, "apps", app)
	if dropData {
		path += "?drop_data=true&confirm=" + url.QueryEscape(app)
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// withRootCert adds the client's CA file to a URL as sslrootcert, the way
// ClusterURL does: appended, so the query keeps its order and the path its
// slashes.
func (c *Client) withRootCert(u string) string {
	if c.CAFile == "" || u == "" {
		return u
	}
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + "sslrootcert=" + strings.ReplaceAll(url.QueryEscape(c.CAFile), "%2F", "/")
}
