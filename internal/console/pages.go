package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// pageData is what the layout and every page template get.
type pageData struct {
	Title    string
	Nav      string // the navigation entry that is current
	Host     string
	Region   string
	SignedIn bool
	ReadOnly bool
	CSRF     string
	Flash    string
	Live     string // the query of this page's live stream, or ""
	Now      time.Time
	Data     any
}

var funcs = template.FuncMap{
	"bytes":    fleet.FormatBytes,
	"judge":    judge,
	"up":       up,
	"worstLag": worstLag,
	"lag":      lag,
	"diskFree": diskFree,
	"join":     strings.Join,
	"ready":    ready,
	"ago":      ago,
	"utc":      func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") },
	"dur":      func(d time.Duration) string { return d.Round(100 * time.Millisecond).String() },
	"sub":      func(a, b time.Time) time.Duration { return a.Sub(b) },
	"pathEsc":  url.PathEscape,
	"isPrimary": func(v api.ClusterView, id string) bool {
		return v.Primary == id
	},
	"seq": func(n int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = i + 1
		}
		return out
	},
	"dec": func(n int) int { return n - 1 },
	// hourBefore is the restore form's example: a moment an hour before
	// the page was made, in the form the field takes.
	"hourBefore": func(t time.Time) string { return t.Add(-time.Hour).UTC().Format(time.RFC3339) },
	"maxHA":      func() int { return fleet.MaxHA },
	// deletable reports whether a database may be deleted by itself: an
	// app's goes with the app.
	"deletable": func(dbs []postgres.Database) bool {
		return slices.ContainsFunc(dbs, func(d postgres.Database) bool { return !d.App })
	},
	"mkList": func(s ...string) []string { return s },
}

// parsePages parses each page with the layout it is shown in.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, n := range names {
		page := strings.TrimSuffix(path.Base(n), ".html")
		if page == "layout" {
			continue
		}
		t, err := template.New(page).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("parse console page %s: %w", page, err)
		}
		out[page] = t
	}
	return out, nil
}

// render answers a whole page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, page string, rq *req, data any) {
	pd := pageData{Title: titleOf(page, data), Nav: page, Host: c.cfg.Host, Region: c.cfg.Region, Now: time.Now(), Data: data}
	if rq != nil {
		pd.SignedIn, pd.ReadOnly, pd.CSRF = true, rq.sess.readOnly(), rq.csrf
		if ck, err := r.Cookie(flashCookie); err == nil {
			if v, err := url.QueryUnescape(ck.Value); err == nil {
				pd.Flash = v
			}
			setCookie(w, r, flashCookie, "", -1)
		}
	}
	if lp, ok := data.(interface{ liveQuery() string }); ok {
		pd.Live = lp.liveQuery()
	}
	var buf bytes.Buffer
	t := c.pages[page]
	if t == nil {
		t = c.pages["error"]
	}
	if err := t.ExecuteTemplate(&buf, "layout", pd); err != nil {
		c.log.Error("console: render", "page", page, "err", err)
		http.Error(w, "the console could not render this page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func titleOf(page string, data any) string {
	switch d := data.(type) {
	case errorPage:
		return d.Title
	case *clusterData:
		return d.V.Name
	}
	switch page {
	case "new":
		return "New cluster"
	case "signin":
		return "Sign in"
	}
	return strings.ToUpper(page[:1]) + page[1:]
}

// flash shows msg on the next page the user sees.
func flash(w http.ResponseWriter, r *http.Request, msg string) {
	setCookie(w, r, flashCookie, url.QueryEscape(msg), time.Minute)
}

// --- sign-in ---

type signinData struct {
	Next    string
	Error   string
	Notice  string
	Pre     string // the form's CSRF value, also in signinCookie
	TokenAt string
}

var whyText = map[string]string{
	"expired":   "Your session ended. Sign in again to go on.",
	"signedout": "You signed out. Sign in again to go on.",
	"invalid":   "Your session is not valid on this fleet. Sign in again.",
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	c.showSignin(w, r, http.StatusOK, r.URL.Query().Get("next"), "", whyText[r.URL.Query().Get("why")])
}

func (c *Console) showSignin(w http.ResponseWriter, r *http.Request, code int, next, errMsg, notice string) {
	pre := newID()
	setCookie(w, r, signinCookie, pre, 30*time.Minute)
	c.render(w, r, code, "signin", nil, signinData{Next: safeNext(next), Error: errMsg, Notice: notice, Pre: pre})
}

// safeNext keeps a redirect after sign-in on the console's own paths.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") || strings.HasPrefix(next, "/live") {
		return "/clusters"
	}
	return next
}

// signin checks the token by calling the API with it, which is what every
// later page does: the API answers a wrong token after a delay that makes
// guessing slow, and the console shows its words.
func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	next := r.PostFormValue("next")
	ck, err := r.Cookie(signinCookie)
	if err != nil || !sameOrigin(r) || ck.Value == "" || r.PostFormValue("csrf") != ck.Value {
		c.showSignin(w, r, http.StatusForbidden, next, "The sign-in form was out of date (its security token did not match). Try again.", "")
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	if token == "" {
		c.showSignin(w, r, http.StatusBadRequest, next, "Paste the fleet's API token: `cat /var/lib/pgfleet/token` on the first host, or the token in ~/.pgfleet/config.json after `pgfleet dev up`.", "")
		return
	}
	keys, err := c.keyring(r.Context())
	if err != nil {
		c.showSignin(w, r, http.StatusServiceUnavailable, next, "This agent cannot reach the fleet's state store: "+err.Error()+". Try another host.", "")
		return
	}
	var hs []api.HostView
	if err := c.call.do(r.Context(), token, "GET", "/v1/hosts", nil, &hs); err != nil {
		code := http.StatusBadGateway
		msg := apiMessage(err)
		if isStatus(err, http.StatusUnauthorized) {
			code = http.StatusUnauthorized
			msg = "That is not this fleet's API token (the API says: " + msg + "). Check that you copied the whole token."
			c.log.Info("console: sign-in refused", "remote", r.RemoteAddr)
		}
		c.showSignin(w, r, code, next, msg, "")
		return
	}
	c.noteHosts(hs)
	now := time.Now().Unix()
	s := session{Token: token, ID: newID(), Issued: now, Seen: now}
	setCookie(w, r, sessionCookie, keys.seal(s), MaxSessionAge)
	setCookie(w, r, signinCookie, "", -1)
	c.log.Info("console: signed in", "remote", r.RemoteAddr, "read_only", s.readOnly())
	http.Redirect(w, r, safeNext(next), http.StatusSeeOther)
}

// signout ends the session on every agent: its id is recorded in the
// store until the session would have expired anyway.
func (c *Console) signout(w http.ResponseWriter, r *http.Request, rq *req) {
	c.hub.revoke(rq.sess.ID)
	ttl := time.Until(time.Unix(rq.sess.Issued, 0).Add(MaxSessionAge))
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if l, err := c.cfg.Etcd.Grant(ctx, int64(max(ttl, time.Minute)/time.Second)); err != nil {
		c.log.Warn("console: record sign-out", "err", err)
	} else if _, err := c.cfg.Etcd.Put(ctx, c.cfg.Prefix+revokedPrefix+rq.sess.ID, "", clientv3.WithLease(l.ID)); err != nil {
		c.log.Warn("console: record sign-out", "err", err)
	}
	setCookie(w, r, sessionCookie, "", -1)
	http.Redirect(w, r, "/signin?why=signedout", http.StatusSeeOther)
}

// caCert serves the fleet's CA, which clients need for sslmode=verify-full.
// It is public: the API hands it to anyone (with a proof for who knows the
// token).
func (c *Console) caCert(w http.ResponseWriter, r *http.Request) {
	nonce := make([]byte, 16)
	rand.Read(nonce)
	var v api.CAView
	if err := c.call.do(r.Context(), "", "GET", "/v1/ca?nonce="+hex.EncodeToString(nonce), nil, &v); err != nil {
		http.Error(w, apiMessage(err), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Content-Disposition", `attachment; filename="ca.crt"`)
	w.Write([]byte(v.CA))
}

// --- fleet ---

type fleetData struct {
	Regions []regionHosts
	RTT     rttMatrix
	Hosts   int
	Down    int
	Err     string
}

func (fleetData) liveQuery() string { return "page=fleet" }

func (c *Console) buildFleet(ctx context.Context, rq *req, _ string) (any, error) {
	hs, err := c.hosts(ctx, rq)
	if err != nil {
		return fleetData{Err: apiMessage(err)}, nil
	}
	cs, err := c.clusters(ctx, rq)
	if err != nil {
		return fleetData{Err: apiMessage(err)}, nil
	}
	rs, err := c.rtts(ctx, rq)
	d := fleetData{Regions: groupHosts(hs, c.knownHosts(), cs), RTT: buildRTT(rs, hs)}
	if err != nil {
		d.Err = "round trips: " + apiMessage(err)
	}
	for _, g := range d.Regions {
		d.Hosts += len(g.Hosts)
		d.Down += len(g.Hosts) - g.Up
	}
	return d, nil
}

func (c *Console) fleetPage(w http.ResponseWriter, r *http.Request, rq *req) {
	d, _ := c.buildFleet(r.Context(), rq, "")
	c.render(w, r, http.StatusOK, "fleet", rq, d)
}

// --- clusters ---

type clusterRow struct {
	V          api.ClusterView
	Health     Health
	Up         int
	WorstLag   string
	LastBackup string
}

type clustersData struct {
	Rows []clusterRow
	Err  string
}

func (clustersData) liveQuery() string { return "page=clusters" }

func (c *Console) buildClusters(ctx context.Context, rq *req, _ string) (any, error) {
	cs, err := c.clusters(ctx, rq)
	if err != nil {
		return clustersData{Err: apiMessage(err)}, nil
	}
	now := time.Now()
	d := clustersData{Rows: make([]clusterRow, 0, len(cs))}
	for _, v := range cs {
		d.Rows = append(d.Rows, clusterRow{V: v, Health: judge(v), Up: up(v), WorstLag: worstLag(v), LastBackup: c.lastBackup(ctx, rq, v.Name, now)})
	}
	return d, nil
}

// lastBackup says how old a cluster's newest backup is.
func (c *Console) lastBackup(ctx context.Context, rq *req, name string, now time.Time) string {
	b, err := c.backups(ctx, rq, name)
	switch {
	case isStatus(err, http.StatusUnprocessableEntity):
		return "off"
	case err != nil:
		return "?"
	case b.Running != nil && len(b.Backups) == 0:
		return "running now"
	case len(b.Backups) == 0:
		return "none yet"
	}
	s := ago(b.Backups[0].StopTime, now)
	if b.Running != nil {
		s += ", one running"
	}
	return s
}

func (c *Console) clustersPage(w http.ResponseWriter, r *http.Request, rq *req) {
	d, _ := c.buildClusters(r.Context(), rq, "")
	c.render(w, r, http.StatusOK, "clusters", rq, d)
}

// copyURL answers the app URL of a cluster for the copy buttons, which
// fetch it only when clicked: a list of clusters carries no password.
func (c *Console) copyURL(w http.ResponseWriter, r *http.Request, rq *req) {
	q := url.Values{}
	for _, k := range []string{"region", "replica", "direct"} {
		if v := r.URL.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	u, err := c.clusterURL(r.Context(), rq, r.PathValue("name"), q)
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusBadGateway
		var ae *apiError
		if ok := asAPIError(err, &ae); ok {
			code = ae.Status
		}
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]string{"error": apiMessage(err)})
		return
	}
	json.NewEncoder(w).Encode(map[string]string{"url": u.URL})
}

// --- new cluster ---

type newData struct {
	Regions []string
	HostsIn map[string]int
	Form    newForm
	Errors  map[string]string // by field; "" for the form as a whole
}

type newForm struct {
	Name, PrimaryRegion, Sync, Backups, BackupStore string
	HA                                              int
	Replicas                                        []string
}

func (f newForm) HasReplica(r string) bool { return slices.Contains(f.Replicas, r) }

func (c *Console) newData(ctx context.Context, rq *req, f *newForm) (newData, error) {
	hs, err := c.hosts(ctx, rq)
	if err != nil {
		return newData{}, err
	}
	d := newData{HostsIn: map[string]int{}, Errors: map[string]string{}}
	for _, h := range hs {
		if d.HostsIn[h.Region] == 0 {
			d.Regions = append(d.Regions, h.Region)
		}
		d.HostsIn[h.Region]++
	}
	slices.Sort(d.Regions)
	if f == nil {
		// Defaults that make "New cluster", "Create" a cluster worth
		// having: this host's region as the primary's, standbys on up
		// to three of its hosts, a replica in every other region,
		// backups on.
		f = &newForm{PrimaryRegion: c.cfg.Region, Sync: fleet.SyncOff, Backups: "on"}
		if d.HostsIn[f.PrimaryRegion] == 0 && len(d.Regions) > 0 {
			f.PrimaryRegion = d.Regions[0]
		}
		f.HA = max(1, min(3, d.HostsIn[f.PrimaryRegion]))
		for _, r := range d.Regions {
			if r != f.PrimaryRegion {
				f.Replicas = append(f.Replicas, r)
			}
		}
		f.Name = c.freeName(ctx, rq)
	}
	d.Form = *f
	return d, nil
}

// freeName proposes a cluster name not taken yet.
func (c *Console) freeName(ctx context.Context, rq *req) string {
	cs, _ := c.clusters(ctx, rq)
	taken := map[string]bool{}
	for _, v := range cs {
		taken[v.Name] = true
	}
	for i := 1; ; i++ {
		n := "db" + strconv.Itoa(i)
		if !taken[n] {
			return n
		}
	}
}

func (c *Console) newPage(w http.ResponseWriter, r *http.Request, rq *req) {
	d, err := c.newData(r.Context(), rq, nil)
	if err != nil {
		c.render(w, r, http.StatusBadGateway, "error", rq, errorPage{Title: "New cluster", Message: apiMessage(err)})
		return
	}
	c.render(w, r, http.StatusOK, "new", rq, d)
}

// checkName validates a name as the API will: with the same function and
// words, and whether a cluster of that name exists.
func (c *Console) checkName(w http.ResponseWriter, r *http.Request, rq *req) {
	name := r.URL.Query().Get("name")
	msg := ""
	if err := fleet.ValidateClusterName(name); err != nil {
		msg = err.Error()
	} else if _, err := c.cluster(r.Context(), rq, name); err == nil {
		msg = fmt.Sprintf("cluster %q already exists: pick another name, or destroy it first", name)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func (c *Console) create(w http.ResponseWriter, r *http.Request, rq *req) {
	f := newForm{
		Name: strings.TrimSpace(r.PostFormValue("name")), PrimaryRegion: r.PostFormValue("primary_region"),
		Sync: r.PostFormValue("sync"), Backups: r.PostFormValue("backups"), BackupStore: strings.TrimSpace(r.PostFormValue("backup_store")),
		Replicas: r.PostForm["replicas"],
	}
	f.HA, _ = strconv.Atoi(r.PostFormValue("ha"))
	req := api.CreateRequest{Name: f.Name, PrimaryRegion: f.PrimaryRegion, HA: &f.HA, Replicas: f.Replicas, Sync: f.Sync, BackupStore: f.BackupStore}
	switch f.Backups {
	case "encrypted":
		req.BackupEncrypt = true
	case "off":
		req.BackupStore = "none"
	}
	var v api.ClusterView
	err := c.call.do(r.Context(), rq.sess.Token, "POST", "/v1/clusters", req, &v)
	if err != nil {
		d, derr := c.newData(r.Context(), rq, &f)
		if derr != nil {
			d.Form, d.Errors = f, map[string]string{}
		}
		d.Errors[fieldOf(apiMessage(err))] = apiMessage(err)
		code := http.StatusBadRequest
		var ae *apiError
		if asAPIError(err, &ae) {
			code = ae.Status
		}
		c.render(w, r, code, "new", rq, d)
		return
	}
	c.changed(v.Name)
	c.log.Info("console: cluster created", "cluster", v.Name)
	http.Redirect(w, r, "/clusters/"+url.PathEscape(v.Name)+"?created=1", http.StatusSeeOther)
}

// fieldOf says which field of the new-cluster form an API error is about,
// by the words the API starts it with; "" for the form as a whole.
func fieldOf(msg string) string {
	switch {
	case strings.HasPrefix(msg, "cluster name"), strings.HasPrefix(msg, "cluster \""):
		return "name"
	case strings.HasPrefix(msg, "primary region"):
		return "primary_region"
	case strings.HasPrefix(msg, "ha is"):
		return "ha"
	case strings.HasPrefix(msg, "replicas"), strings.Contains(msg, "replica regions"):
		return "replicas"
	case strings.HasPrefix(msg, "sync"):
		return "sync"
	case strings.Contains(msg, "backup"):
		return "backups"
	}
	return ""
}

// --- one cluster ---

type clusterData struct {
	V       api.ClusterView
	Health  Health
	Ready   bool
	Created bool // the page follows a create: show the progress until ready
	Events  []fleet.Event
	EvErr   string
	Backups api.BackupsView
	BkErr   string
	BkOff   bool
	URLs    []urlRow
	Regions []string
	Targets []api.MemberView // standbys a switchover may go to
	Errors  map[string]string
	Restore restoreForm
	Typed   string // what was typed to confirm destroy
	Users   []userRow
	UsErr   string
	// NewUser is a user just made or given a new password: shown this
	// once, on the page that answers the form, never in a cookie.
	NewUser  *api.PasswordView
	NewURL   string // the app URL with the new user's name and password
	UserForm string

	// Read from the primary when the page is (manage.go).
	Databases []postgres.Database
	DBErr     string
	Config    api.ConfigView
	ConfigErr string
	Apps      []string // the users that are apps, for detaching
	// ReplicaRegions are the fleet's regions where the cluster has no
	// member yet; Removable the members but the primary.
	ReplicaRegions []string
	Removable      []api.MemberView
	Restart        *restartRun // the last rolling restart this console ran
	Import         *importRun  // the last import into it this console ran
	Move           *moveRun    // the last move of its primary region this console ran
	// MoveRegions are the fleet's regions but the primary's.
	MoveRegions []string
	ImportForm  importForm
	MoveForm    api.MoveRequest
	// What was typed in a refused form, and an app just attached: its
	// URLs shown this once, like a new user's password.
	Remove, DBForm, AppForm string
	ConfigForm              configForm
	Attached                *api.AttachView
}

// userRow is a role of a cluster as GET /v1/clusters/{name}/users lists it.
type userRow struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Login     bool   `json:"login"`
	Superuser bool   `json:"superuser"`
}

type restoreForm struct {
	Into, Target, Time, LSN, BackupStore string
}

func (d *clusterData) liveQuery() string {
	q := url.Values{"page": {"cluster"}, "name": {d.V.Name}}
	if d.Created {
		q.Set("created", "1")
	}
	return q.Encode()
}

func (c *Console) buildCluster(ctx context.Context, rq *req, name string) (any, error) {
	v, err := c.cluster(ctx, rq, name)
	if err != nil {
		return nil, err
	}
	d := &clusterData{V: v, Health: judge(v), Ready: ready(v), Errors: map[string]string{}, Restart: c.restartState(name),
		Import: c.importState(name), Move: c.moveState(name)}
	if d.Events, err = c.events(ctx, rq, name); err != nil {
		d.EvErr = apiMessage(err)
	}
	if d.Backups, err = c.backups(ctx, rq, name); isStatus(err, http.StatusUnprocessableEntity) {
		d.BkOff = true
	} else if err != nil {
		d.BkErr = apiMessage(err)
	}
	for _, m := range v.Members {
		if m.ID != v.Primary && m.Region == v.PrimaryRegion {
			d.Targets = append(d.Targets, m)
		}
	}
	return d, nil
}

func (c *Console) clusterPage(w http.ResponseWriter, r *http.Request, rq *req) {
	c.showCluster(w, r, rq, http.StatusOK, nil)
}

// showCluster renders a cluster's page; with prev, the page of a refused
// action: its error where the user acted, and what they typed.
func (c *Console) showCluster(w http.ResponseWriter, r *http.Request, rq *req, code int, prev *clusterData) {
	name := r.PathValue("name")
	x, err := c.buildCluster(r.Context(), rq, name)
	if err != nil {
		ec := http.StatusBadGateway
		if isStatus(err, http.StatusNotFound) || isStatus(err, http.StatusBadRequest) {
			ec = http.StatusNotFound
		}
		c.render(w, r, ec, "error", rq, errorPage{Title: "Cluster " + name, Message: apiMessage(err)})
		return
	}
	d := x.(*clusterData)
	d.Created = r.URL.Query().Get("created") == "1"
	d.Restore = restoreForm{Into: name + "-restore", Target: "time", Time: time.Now().UTC().Format(time.RFC3339)}
	if prev != nil {
		d.Errors, d.Restore, d.Typed = prev.Errors, prev.Restore, prev.Typed
		d.NewUser, d.UserForm = prev.NewUser, prev.UserForm
		d.Remove, d.DBForm, d.AppForm, d.ConfigForm, d.Attached = prev.Remove, prev.DBForm, prev.AppForm, prev.ConfigForm, prev.Attached
		d.ImportForm, d.MoveForm = prev.ImportForm, prev.MoveForm
	}
	if !rq.sess.readOnly() {
		// Users live in postgres, not in the store: read when the page
		// is, from the primary, never live.
		if err := c.call.do(r.Context(), rq.sess.Token, "GET", "/v1/clusters/"+url.PathEscape(name)+"/users", nil, &d.Users); err != nil {
			d.UsErr = apiMessage(err)
		}
		hs, _ := c.hosts(r.Context(), rq)
		for _, h := range hs {
			if !slices.Contains(d.Regions, h.Region) {
				d.Regions = append(d.Regions, h.Region)
			}
		}
		slices.Sort(d.Regions)
		d.URLs = c.clusterURLs(r.Context(), rq, d.V, d.Regions)
		if d.NewUser != nil && len(d.URLs) > 0 && d.URLs[0].URL != "" {
			d.NewURL = withUser(d.URLs[0].URL, d.NewUser.User, d.NewUser.Password)
		}
		c.readManaged(r.Context(), rq, d)
	}
	c.render(w, r, code, "cluster", rq, d)
}

// act runs one of a cluster page's actions through the API. Success
// returns to the page with what happened; a refusal shows the page again
// with the API's words in the section the user acted in.
func (c *Console) act(w http.ResponseWriter, r *http.Request, rq *req) {
	name, action := r.PathValue("name"), r.PathValue("action")
	base := "/v1/clusters/" + url.PathEscape(name)
	ctx, tok := r.Context(), rq.sess.Token
	back := "/clusters/" + url.PathEscape(name)
	fail := func(section string, err error, prev *clusterData) {
		if prev == nil {
			prev = &clusterData{}
		}
		prev.Errors = map[string]string{section: apiMessage(err)}
		code := http.StatusBadRequest
		var ae *apiError
		if asAPIError(err, &ae) {
			code = ae.Status
		}
		c.showCluster(w, r, rq, code, prev)
	}
	// Whatever the action did, the page that follows reads anew.
	defer c.changed(name)
	switch action {
	case "switchover":
		var v api.SwitchoverView
		if err := c.call.do(ctx, tok, "POST", base+"/switchover", api.SwitchoverRequest{To: r.PostFormValue("to")}, &v); err != nil {
			fail("switchover", err, nil)
			return
		}
		flash(w, r, fmt.Sprintf("Switching over from %s to %s: the members table shows the new primary once it takes writes.", v.From, v.To))
	case "failover":
		if err := c.call.do(ctx, tok, "POST", base+"/failover", nil, nil); err != nil {
			fail("failover", err, nil)
			return
		}
		flash(w, r, "Failover requested: the primary steps down and an election follows.")
	case "sync":
		mode := r.PostFormValue("sync")
		if err := c.call.do(ctx, tok, "PATCH", base, api.UpdateRequest{Sync: &mode}, nil); err != nil {
			fail("sync", err, nil)
			return
		}
		flash(w, r, "Sync mode set to "+mode+".")
	case "backup":
		var v api.BackupRequestView
		if err := c.call.do(ctx, tok, "POST", base+"/backups", nil, &v); err != nil {
			fail("backups", err, nil)
			return
		}
		if v.Running {
			flash(w, r, fmt.Sprintf("Backup %s was already under way on %s: it is the one you asked for.", v.ID, v.Member))
		} else {
			flash(w, r, fmt.Sprintf("Backup %s is being taken on %s.", v.ID, v.Member))
		}
		back += "#backups"
	case "verify":
		// Reading every backup back may take longer than a page's answer
		// is given.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(15 * time.Minute))
		var rep backup.VerifyReport
		if err := c.call.do(ctx, tok, "GET", base+"/backups/verify", nil, &rep); err != nil {
			fail("backups", err, nil)
			return
		}
		flash(w, r, verifySummary(rep))
		back += "#backups"
	case "restore":
		rf := restoreForm{Into: strings.TrimSpace(r.PostFormValue("into")), Target: r.PostFormValue("target"),
			Time: strings.TrimSpace(r.PostFormValue("time")), LSN: strings.TrimSpace(r.PostFormValue("lsn")), BackupStore: strings.TrimSpace(r.PostFormValue("backup_store"))}
		prev := &clusterData{Restore: rf}
		v, err := c.cluster(ctx, rq, name)
		if err != nil {
			fail("restore", err, prev)
			return
		}
		rr := &api.RestoreRequest{From: name}
		switch rf.Target {
		case "latest":
			rr.Latest = true
		case "lsn":
			rr.LSN = rf.LSN
		default:
			t, err := time.Parse(time.RFC3339, rf.Time)
			if err != nil {
				fail("restore", fmt.Errorf("time %q: give it as 2006-01-02T15:04:05Z (UTC, RFC 3339)", rf.Time), prev)
				return
			}
			rr.Time = &t
		}
		ha := v.HA
		req := api.CreateRequest{Name: rf.Into, PrimaryRegion: v.PrimaryRegion, HA: &ha, Replicas: v.Replicas, Sync: v.Sync, BackupStore: rf.BackupStore, Restore: rr}
		var nv api.ClusterView
		if err := c.call.do(ctx, tok, "POST", "/v1/clusters", req, &nv); err != nil {
			fail("restore", err, prev)
			return
		}
		c.changed(nv.Name)
		flash(w, r, fmt.Sprintf("Cluster %s is being restored from the backups of %s.", nv.Name, name))
		http.Redirect(w, r, "/clusters/"+url.PathEscape(nv.Name)+"?created=1", http.StatusSeeOther)
		return
	case "user-create", "user-rotate":
		user := strings.TrimSpace(r.PostFormValue("user"))
		var pv api.PasswordView
		var err error
		if action == "user-create" {
			err = c.call.do(ctx, tok, "POST", base+"/users", api.UserRequest{Name: user, ReadOnly: r.PostFormValue("read_only") == "on"}, &pv)
		} else {
			err = c.call.do(ctx, tok, "POST", base+"/users/"+url.PathEscape(user)+"/rotate", nil, &pv)
		}
		if err != nil {
			fail("users", err, &clusterData{UserForm: user})
			return
		}
		// No redirect: the password is shown on this answer only.
		c.showCluster(w, r, rq, http.StatusOK, &clusterData{Errors: map[string]string{}, NewUser: &pv})
		return
	case "user-delete":
		user := r.PostFormValue("user")
		if err := c.call.do(ctx, tok, "DELETE", base+"/users/"+url.PathEscape(user), nil, nil); err != nil {
			fail("users", err, nil)
			return
		}
		flash(w, r, "User "+user+" deleted.")
		back += "#users"
	case "destroy":
		typed := r.PostFormValue("confirm")
		if err := c.call.do(ctx, tok, "DELETE", base+"?confirm="+url.QueryEscape(typed), nil, nil); err != nil {
			fail("destroy", err, &clusterData{Typed: typed})
			return
		}
		c.log.Info("console: cluster destroyed", "cluster", name)
		flash(w, r, "Cluster "+name+" is destroyed: its members stop and their data is deleted on every host.")
		http.Redirect(w, r, "/clusters", http.StatusSeeOther)
		return
	default:
		if !c.manage(w, r, rq, action, fail) {
			c.render(w, r, http.StatusNotFound, "error", rq, errorPage{Title: "Not found", Message: "There is no action " + action + "."})
		}
		return
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// withUser puts user and password in a connection URL in place of the
// superuser's.
func withUser(raw, user, password string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

// changed tells the hub that this console changed cluster name.
func (c *Console) changed(name string) {
	c.hub.touch(topicClusters, topicHosts, topicCluster+"/"+name, topicEvents+"/"+name, topicBackups+"/"+name)
}

func verifySummary(rep backup.VerifyReport) string {
	if len(rep.Backups) == 0 && len(rep.Problems) == 0 {
		return "No backups to verify yet."
	}
	if rep.OK() {
		return fmt.Sprintf("%d backups verified: every one is intact and its WAL has no gap.", len(rep.Backups))
	}
	var probs []string
	for _, b := range rep.Backups {
		switch {
		case b.DataError != "":
			probs = append(probs, fmt.Sprintf("backup %s: %s", b.Manifest.ID, b.DataError))
		case !b.WAL.Consistent:
			probs = append(probs, fmt.Sprintf("backup %s: the WAL it needs to be consistent is not all archived", b.Manifest.ID))
		case len(b.WAL.Gaps) > 0:
			probs = append(probs, fmt.Sprintf("backup %s: the archived WAL has %d gaps after it; a restore cannot pass the first", b.Manifest.ID, len(b.WAL.Gaps)))
		case len(b.WAL.MissingHistory) > 0:
			probs = append(probs, fmt.Sprintf("backup %s: history files missing: %s", b.Manifest.ID, strings.Join(b.WAL.MissingHistory, ", ")))
		}
	}
	probs = append(probs, rep.Problems...)
	return "Verification found problems: " + strings.Join(probs, "; ") + ". `pgfleet backup verify " + rep.Cluster + "` shows the details."
}
