// Package console is pgfleet's web console, served by every agent beside
// its API: server-rendered pages with a little JavaScript, embedded in the
// binary, kept live by Server-Sent Events. It is one more client of the
// API: every read and every change goes through the API's handlers with
// the signed-in user's token, so the console can do nothing the CLI
// cannot, and says what the API says when something is refused.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/api"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config is what a console needs from its agent.
type Config struct {
	// API is the agent's API, called in process with the user's token.
	API http.Handler
	// Etcd and Prefix are the fleet's store, for the one watch that wakes
	// the open pages, and for the console's own records (its key, the
	// signed-out sessions). The state the pages show is read through API.
	Etcd   *clientv3.Client
	Prefix string
	Host   string // this agent's host name, shown in the header
	Region string
	Log    *slog.Logger
	// CAFile is the fleet's CA, with which an import run here verifies
	// the cluster's primary.
	CAFile string
}

// Console serves the web console.
type Console struct {
	cfg   Config
	call  caller
	hub   *hub
	cache cache
	pages map[string]*template.Template
	mux   *http.ServeMux
	log   *slog.Logger

	keysMu sync.Mutex
	keys   *keyring

	knownMu sync.Mutex
	known   map[string]hostRow // every host this agent saw live, for showing it down once gone

	restartsMu sync.Mutex
	restarts   map[string]*restartRun // the rolling restarts this console ran, by cluster
	imports    map[string]*importRun  // the imports, by cluster, under restartsMu too
	moves      map[string]*moveRun    // the moves of a primary region, by cluster, under restartsMu too
}

// New returns a console; it starts its watch on the first request.
func New(cfg Config) (*Console, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Console{
		cfg: cfg, call: caller{api: api.InProcess(cfg.API)}, hub: newHub(cfg.Etcd, cfg.Prefix, cfg.Log),
		log: cfg.Log, known: map[string]hostRow{}, restarts: map[string]*restartRun{},
		imports: map[string]*importRun{}, moves: map[string]*moveRun{},
	}
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	c.routes()
	return c, nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	assets := http.StripPrefix("/assets/", http.FileServerFS(static))
	m.Handle("GET /assets/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		assets.ServeHTTP(w, r)
	}))
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/clusters", http.StatusSeeOther) })
	m.HandleFunc("GET /signin", c.signinPage)
	m.HandleFunc("POST /signin", c.signin)
	m.HandleFunc("GET /ca.crt", c.caCert)
	m.Handle("POST /signout", c.authed(c.signout))
	m.Handle("GET /fleet", c.authed(c.fleetPage))
	m.Handle("GET /clusters", c.authed(c.clustersPage))
	m.Handle("GET /new", c.authed(c.newPage))
	m.Handle("POST /new", c.authed(c.create))
	m.Handle("GET /check/name", c.authed(c.checkName))
	m.Handle("GET /clusters/{name}", c.authed(c.clusterPage))
	m.Handle("GET /clusters/{name}/url", c.authed(c.copyURL))
	m.Handle("POST /clusters/{name}/{action}", c.authed(c.act))
	m.Handle("GET /live", c.authed(c.live))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, http.StatusNotFound, "error", nil, errorPage{Title: "Not found", Message: fmt.Sprintf("There is no page at %s.", r.URL.Path)})
	})
	c.mux = m
}

// ServeHTTP serves the console with headers that keep its pages from being
// framed, sniffed, or made to run anything but its own script.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	if !strings.HasPrefix(r.URL.Path, "/assets/") {
		h.Set("Cache-Control", "no-store")
	}
	c.mux.ServeHTTP(w, r)
}

// keyring returns the fleet's console keys, reading them on first use.
func (c *Console) keyring(ctx context.Context) (*keyring, error) {
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	if c.keys != nil {
		return c.keys, nil
	}
	k, err := loadKeys(ctx, c.cfg.Etcd, c.cfg.Prefix)
	if err != nil {
		return nil, err
	}
	c.keys = k
	return k, nil
}

// req is one signed-in request.
type req struct {
	sess session
	keys *keyring
	csrf string
}

// authed admits requests with a valid session; a state-changing one must
// also carry the session's CSRF token and come from the console's own
// origin. Without a session, a page redirects to sign-in.
func (c *Console) authed(h func(http.ResponseWriter, *http.Request, *req)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keys, err := c.keyring(r.Context())
		if err != nil {
			c.log.Warn("console: keys", "err", err)
			c.render(w, r, http.StatusServiceUnavailable, "error", nil, errorPage{Title: "The fleet's state store does not answer", Message: "This agent cannot reach the fleet's state store: " + err.Error() + ". Try another host of the fleet."})
			return
		}
		// The signed-out sessions must be known before any session is
		// trusted.
		wctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		loaded := c.hub.waitReady(wctx)
		cancel()
		if !loaded {
			c.render(w, r, http.StatusServiceUnavailable, "error", nil, errorPage{Title: "The fleet's state store does not answer", Message: "This agent cannot read the fleet's state store. Try another host of the fleet."})
			return
		}
		why := "signin"
		var s session
		if ck, err := r.Cookie(sessionCookie); err == nil {
			var ok bool
			if s, ok = keys.open(ck.Value); !ok {
				why = "invalid"
			} else if e := s.expired(time.Now()); e != "" {
				why = "expired"
			} else if c.hub.isRevoked(s.ID) {
				why = "signedout"
			} else {
				why = ""
			}
		}
		if why != "" {
			setCookie(w, r, sessionCookie, "", -1)
			if r.Method == http.MethodGet && r.URL.Path != "/live" && !strings.HasPrefix(r.URL.Path, "/check/") && !strings.HasSuffix(r.URL.Path, "/url") {
				q := url.Values{"why": {why}, "next": {r.URL.RequestURI()}}
				http.Redirect(w, r, "/signin?"+q.Encode(), http.StatusSeeOther)
				return
			}
			http.Error(w, "Your session has ended: sign in again.", http.StatusUnauthorized)
			return
		}
		rq := &req{sess: s, keys: keys, csrf: keys.csrfToken(s.ID)}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if !sameOrigin(r) || !keys.checkCSRF(s.ID, r.PostFormValue("csrf")) {
				c.log.Info("console: refused a request without a valid CSRF token", "path", r.URL.Path)
				c.render(w, r, http.StatusForbidden, "error", rq, errorPage{Title: "Refused", Message: "This request did not carry the page's security token (CSRF), so nothing was changed. Go back, reload the page and try again."})
				return
			}
		}
		// A request keeps the session alive; the live stream does not,
		// so an open but unused tab still ends.
		if now := time.Now(); r.URL.Path != "/live" && now.Sub(time.Unix(s.Seen, 0)) > seenEvery {
			s.Seen = now.Unix()
			rq.sess = s
			setCookie(w, r, sessionCookie, keys.seal(s), MaxSessionAge)
		}
		h(w, r, rq)
	})
}

// sameOrigin reports whether a request comes from the console's own pages:
// a browser names the page's origin on every POST (the pages' referrer
// policy, same-origin, lets it; no-referrer would make it "null").
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		// A client that sends no Origin is not a browser on another
		// site; it still needs the CSRF token.
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// errorPage is a page that only says what went wrong.
type errorPage struct {
	Title   string
	Message string
}

// apiMessage is the API's own words for a failed call, or a sentence for
// a failure that never reached it.
func apiMessage(err error) string {
	var ae *apiError
	if asAPIError(err, &ae) {
		return ae.Message
	}
	return err.Error()
}

// isStatus reports whether err is the API answering code.
func isStatus(err error, code int) bool {
	var ae *apiError
	return asAPIError(err, &ae) && ae.Status == code
}

// asAPIError reports whether err is an answer of the API, from an
// in-process call or from the API's client (api.NewInProcessClient).
func asAPIError(err error, target **apiError) bool {
	if errors.As(err, target) {
		return true
	}
	var ce *api.APIError
	if errors.As(err, &ce) {
		*target = &apiError{Status: ce.Status, Message: ce.Message}
		return true
	}
	return false
}

// noteHosts remembers the live hosts, so that a host that stops answering
// is shown down rather than dropped.
func (c *Console) noteHosts(hs []api.HostView) {
	c.knownMu.Lock()
	defer c.knownMu.Unlock()
	for _, h := range hs {
		c.known[h.Name] = hostRow{Name: h.Name, Region: h.Region, Addr: h.Addr, API: h.APIAddr, Version: h.Version, Started: h.Started}
	}
}

func (c *Console) knownHosts() map[string]hostRow {
	c.knownMu.Lock()
	defer c.knownMu.Unlock()
	out := make(map[string]hostRow, len(c.known))
	for k, v := range c.known {
		out[k] = v
	}
	return out
}
