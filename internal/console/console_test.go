package console_test

import (
	"context"
	"encoding/json"
	"html"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func TestSignIn(t *testing.T) {
	f := newStateFleet(t, 1)
	b := f.client(t)

	resp, _ := b.get("/clusters")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/signin") {
		t.Fatalf("GET /clusters signed out = %s to %q, want a redirect to /signin", resp.Status, resp.Header.Get("Location"))
	}

	_, page := b.get("/signin")
	start := time.Now()
	resp, body := b.post("/signin", url.Values{"csrf": {hidden(page, "csrf")}, "token": {"pgf_wrong"}})
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "not this fleet&#39;s API token") || !strings.Contains(body, "invalid API token") {
		t.Errorf("sign in with a wrong token = %s, want 401 with the API's words\n%s", resp.Status, body)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("a wrong token was answered in %s, want after at least a second", d)
	}

	// Without the form's CSRF value, even the right token is refused.
	resp, _ = b.post("/signin", url.Values{"token": {testToken}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("sign in without the form's CSRF value = %s, want 403", resp.Status)
	}

	_, page = b.get("/signin")
	resp, _ = b.post("/signin", url.Values{"csrf": {hidden(page, "csrf")}, "token": {testToken}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in = %s, want 303", resp.Status)
	}
	var sc *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "pgfleet_session" && c.Value != "" {
			sc = c
		}
	}
	if sc == nil || !sc.HttpOnly || !sc.Secure || sc.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie = %+v, want HttpOnly, Secure, SameSite=Strict", sc)
	}
	if strings.Contains(sc.Value, testToken) {
		t.Errorf("the session cookie carries the token in clear")
	}
	resp, body = b.get("/clusters")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "db01") {
		t.Fatalf("GET /clusters = %s, want 200 listing db01\n%s", resp.Status, body)
	}
	for _, p := range []string{"/fleet", "/new", "/clusters/db01"} {
		if resp, body := b.get(p); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %s\n%s", p, resp.Status, body)
		}
	}

	// Sign out ends the session everywhere: the same cookie, replayed, is
	// refused.
	csrf := hidden(body, "csrf")
	if resp, _ := b.post("/signout", url.Values{"csrf": {csrf}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign out = %s", resp.Status)
	}
	replay := f.client(t)
	u, _ := url.Parse(f.srv.URL)
	replay.c.Jar.SetCookies(u, []*http.Cookie{{Name: "pgfleet_session", Value: sc.Value}})
	if resp, _ := replay.get("/clusters"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("GET /clusters with a signed-out session's cookie = %s, want a redirect to sign in", resp.Status)
	}
}

func TestStateChangesNeedCSRF(t *testing.T) {
	f := newStateFleet(t, 1)
	b := f.client(t)
	csrf := b.signIn(testToken)
	if csrf == "" {
		t.Fatal("no CSRF token on the clusters page")
	}
	form := url.Values{"name": {"shop"}, "primary_region": {"iad"}, "ha": {"1"}, "sync": {"off"}, "backups": {"off"}}
	resp, body := b.post("/new", form)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "nothing was changed") {
		t.Errorf("POST /new without CSRF = %s, want 403\n%s", resp.Status, body)
	}
	form.Set("csrf", "0123456789abcdef0123456789abcdef")
	if resp, _ := b.post("/new", form); resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /new with a wrong CSRF token = %s, want 403", resp.Status)
	}
	if resp, _ := b.post("/clusters/db01/destroy", url.Values{"confirm": {"db01"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST destroy without CSRF = %s, want 403", resp.Status)
	}
	if _, err := f.st.Cluster(context.Background(), "shop"); err == nil {
		t.Error("cluster shop exists after refused creates")
	}
	if _, err := f.st.Cluster(context.Background(), "db01"); err != nil {
		t.Errorf("db01 after a refused destroy: %v", err)
	}

	// An invalid name: the API's message, next to the field.
	form.Set("csrf", csrf)
	form.Set("name", "Bad_Name")
	resp, body = b.post("/new", form)
	want := strings.ReplaceAll(fleet.ValidateClusterName("Bad_Name").Error(), `"`, "&#34;")
	want = strings.ReplaceAll(want, "'", "&#39;")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="name-msg" class="error field-msg" role="alert">`+want) {
		t.Errorf("POST /new with name Bad_Name = %s, want 400 with %q next to the name\n%s", resp.Status, want, body)
	}
	resp, body = b.get("/check/name?name=Bad_Name")
	if !strings.Contains(body, "Bad_Name") || !strings.Contains(body, "lowercase letters") {
		t.Errorf("GET /check/name?name=Bad_Name = %s %s", resp.Status, body)
	}
	resp, body = b.get("/check/name?name=db01")
	if !strings.Contains(body, "already exists") {
		t.Errorf("GET /check/name?name=db01 = %s %s, want already exists", resp.Status, body)
	}
}

// TestLiveSharesReads opens ten live streams of the clusters page and
// changes a member's lag: every stream gets the change, and the console
// reads the clusters from the API about once, not ten times.
func TestLiveSharesReads(t *testing.T) {
	f := newStateFleet(t, 3)
	b := f.client(t)
	b.signIn(testToken)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const streams = 10
	var wg sync.WaitGroup
	got := make(chan string, streams*4)
	for range streams {
		req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/live?page=clusters", nil)
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("GET /live = %s %s", resp.Status, resp.Header.Get("Content-Type"))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ev strings.Builder
			eachLine(resp.Body, func(line string) {
				if line != "" {
					ev.WriteString(line + "\n")
					return
				}
				if strings.Contains(ev.String(), "event: ") {
					got <- ev.String()
				}
				ev.Reset()
			})
		}()
	}
	// Each stream starts with the page's regions.
	for i := range streams {
		select {
		case ev := <-got:
			if !strings.Contains(ev, "event: clusters-table") {
				t.Fatalf("first event of a stream: %q", ev)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d streams sent their first event", i, streams)
		}
	}
	before := f.apiCalls.Load()
	f.putStatus(t, "db02", "db02-3", "ams-1", fleet.RoleReplica, 40<<20)
	for i := range streams {
		select {
		case ev := <-got:
			if !strings.Contains(ev, "db02-3 streaming, 40.0 MB behind") {
				t.Fatalf("update %d: %q, want db02-3 40 MB behind", i, ev)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d streams got the update", i, streams)
		}
	}
	// One read of the clusters, and the backups of each, for all ten.
	if n := f.apiCalls.Load() - before; n > 1+3 {
		t.Errorf("ten streams made %d API calls for one change, want at most 4", n)
	}
	cancel()
	wg.Wait()
}

// TestLiveOutlivesServerTimeouts: a live stream outlasts the server's read
// and write timeouts (the agent's are 30 s and 2 min), over HTTP/1.1 and
// HTTP/2 alike, because it extends its own deadlines.
func TestLiveOutlivesServerTimeouts(t *testing.T) {
	f := newStateFleet(t, 1)
	for _, h2 := range []bool{false, true} {
		srv := httptest.NewUnstartedServer(f.srv.Config.Handler)
		srv.EnableHTTP2 = h2
		srv.Config.ReadTimeout, srv.Config.WriteTimeout = 500*time.Millisecond, 500*time.Millisecond
		srv.StartTLS()
		defer srv.Close()
		b := &browserless{t: t, c: srv.Client(), url: srv.URL}
		jar, _ := cookiejar.New(nil)
		b.c.Jar = jar
		b.c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		b.signIn(testToken)
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/live?page=cluster&name=db01", nil)
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ProtoMajor != map[bool]int{false: 1, true: 2}[h2] {
			t.Fatalf("protocol %s, want HTTP/2 %v", resp.Proto, h2)
		}
		lines := make(chan string, 100)
		go func() {
			defer close(lines)
			eachLine(resp.Body, func(l string) { lines <- l })
		}()
		// Past both timeouts, a change still reaches the stream.
		time.Sleep(1500 * time.Millisecond)
		f.putStatus(t, "db01", "db01-2", "iad-2", fleet.RoleStandby, 3<<20)
		deadline := time.After(10 * time.Second)
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("HTTP/2 %v: the stream ended before the change arrived", h2)
				}
				if strings.Contains(l, "3.0 MB") {
					break wait
				}
			case <-deadline:
				t.Fatalf("HTTP/2 %v: the change did not arrive", h2)
			}
		}
		cancel()
		resp.Body.Close()
	}
}

// TestReadOnlyAndActions: a read-only token views the pages without URLs
// or actions, and the API refuses it a change in its own words; with the
// fleet's token an action goes through the API, and a refused one shows
// the API's message in the section it came from.
func TestReadOnlyAndActions(t *testing.T) {
	f := newStateFleet(t, 1)
	admin := f.client(t)
	csrf := admin.signIn(testToken)

	// An action: sync mode on, through the API's PATCH.
	resp, body := admin.post("/clusters/db01/sync", url.Values{"csrf": {csrf}, "sync": {"on"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST sync on = %s\n%s", resp.Status, body)
	}
	if c, err := f.st.Cluster(context.Background(), "db01"); err != nil || c.Spec.Sync != "on" {
		t.Fatalf("db01 after sync on: sync %q, %v", c.Spec.Sync, err)
	}
	_, page := admin.get("/clusters/db01")
	if !strings.Contains(page, "Sync mode set to on.") {
		t.Errorf("the page after the action does not say what happened")
	}
	// A refused one: the API's words, in the sync card.
	resp, body = admin.post("/clusters/db01/sync", url.Values{"csrf": {csrf}, "sync": {"sometimes"}})
	want := html.EscapeString(fleet.ValidateSync("sometimes").Error())
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body[strings.Index(body, `id="set-sync"`):], want) {
		t.Errorf("POST sync sometimes = %s, want 400 with %q after the sync form's button", resp.Status, want)
	}

	// A switchover to a replica: the API's reason, under the switchover
	// card and outside its live region, which updates would replace.
	resp, body = admin.post("/clusters/db01/switchover", url.Values{"csrf": {csrf}, "to": {"db01-3"}})
	region := body[strings.Index(body, `id="cluster-switchover"`):]
	region = region[strings.Index(region, "</form>"):]
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(region, "db01-3 is a read replica in ams") {
		t.Errorf("POST switchover to db01-3 = %s, want 422 with the API's reason after the form", resp.Status)
	}

	// A read-only token.
	var ro struct {
		Token string `json:"token"`
	}
	req, _ := http.NewRequest("POST", f.srv.URL+"/v1/tokens/read-only", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	r, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(r.Body).Decode(&ro)
	r.Body.Close()
	viewer := f.client(t)
	vcsrf := viewer.signIn(ro.Token)
	_, page = viewer.get("/clusters/db01")
	for _, no := range []string{"postgres://", `action="/clusters/db01/destroy"`, "Copy URL", `href="/new"`} {
		if strings.Contains(page, no) {
			t.Errorf("a read-only session's cluster page shows %q", no)
		}
	}
	if !strings.Contains(page, "read-only") || !strings.Contains(page, "db01-3") {
		t.Errorf("a read-only session's cluster page lacks the members or the read-only mark")
	}
	resp, body = viewer.post("/clusters/db01/destroy", url.Values{"csrf": {vcsrf}, "confirm": {"db01"}})
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "a read-only token can list hosts") {
		t.Errorf("destroy with a read-only session = %s, want 403 with the API's words", resp.Status)
	}
	if _, err := f.st.Cluster(context.Background(), "db01"); err != nil {
		t.Errorf("db01 after a read-only destroy: %v", err)
	}
}
