package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// findChromium returns the path of a Chromium (or Chrome) binary. Without
// one the browser tests skip, except in CI, where that is a failure:
// scripts/setup.sh installs Debian's chromium.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI needs Chromium for the console's browser tests: run scripts/setup.sh (apt-get install chromium)")
	}
	t.Skip("skipping: no chromium on PATH (scripts/setup.sh installs it)")
	return ""
}

// artifacts is where the browser tests write screenshots:
// $PGFLEET_ARTIFACTS, or pgfleet-console in the temporary directory.
func artifacts(t *testing.T) string {
	dir := os.Getenv("PGFLEET_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "pgfleet-console")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
	out string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := findChromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,                               // tests run as root in CI
		chromedp.Flag("ignore-certificate-errors", true), // the fleet's CA is not the system's
		chromedp.WindowSize(1440, 1000),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium %s: %v", path, err)
	}
	return &browser{t: t, ctx: ctx, out: artifacts(t)}
}

// run runs actions, bounded by a minute.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.shot("failed")
		b.t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates js in the page; while a page loads it answers "".
func (b *browser) eval(js string) string {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
	if err != nil {
		return ""
	}
	return s
}

// text is the text of the element sel, "" when there is none.
func (b *browser) text(sel string) string {
	return b.eval(fmt.Sprintf(`(function(){var e=document.querySelector(%q);return e?(e.value!==undefined&&e.tagName==="INPUT"?e.value:e.innerText):""})()`, sel))
}

// waitText waits until the text of sel contains want, failing with what it
// last showed.
func (b *browser) waitText(sel, want string, timeout time.Duration) string {
	b.t.Helper()
	var last string
	deadline := time.Now().Add(timeout)
	for {
		last = b.text(sel)
		if strings.Contains(last, want) {
			return last
		}
		if time.Now().After(deadline) {
			b.shot("failed")
			b.t.Fatalf("waiting for %s to show %q: not after %s; it showed %q (page %s)", sel, want, timeout, last, b.eval("location.pathname"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitPath waits until the page is at path.
func (b *browser) waitPath(path string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := b.eval("location.pathname")
		if got == path && b.eval("document.readyState") == "complete" {
			return
		}
		if time.Now().After(deadline) {
			b.shot("failed")
			b.t.Fatalf("waiting for the page %s: still at %q after %s", path, got, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *browser) shot(name string) {
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.out, "console-"+name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
	}
}

// shots writes screenshots of the element sel at a desktop's width and
// at a phone's: console-NAME.png and console-NAME-375.png.
func (b *browser) shots(name, sel string) {
	b.t.Helper()
	for _, w := range []struct {
		suffix        string
		width, height int64
	}{{"", 1440, 1000}, {"-375", 375, 812}} {
		b.run("a width of "+fmt.Sprint(w.width), chromedp.EmulateViewport(w.width, w.height))
		ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
		png, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS(sel), chromedp.NodeVisible))
		cancel()
		if err != nil {
			b.t.Errorf("screenshot %s of %s: %v", name, sel, err)
			continue
		}
		if err := os.WriteFile(filepath.Join(b.out, "console-"+name+w.suffix+".png"), png, 0o644); err != nil {
			b.t.Error(err)
		}
	}
	b.run("a desktop's width", chromedp.EmulateViewport(1440, 1000))
}

// key focuses sel and presses key on it, as a person without a mouse
// does.
func (b *browser) key(sel, key string) {
	b.t.Helper()
	b.run("press "+key+" on "+sel, chromedp.Focus(chromedp.CSS(sel), chromedp.NodeVisible), chromedp.KeyEvent(key))
}

// leader is the member the members table marks as the leader, "" if none.
func (b *browser) leader() string {
	return b.eval(`(function(){var t=document.querySelector("#cluster-members tr[data-member] .tag");return t?t.closest("tr").getAttribute("data-member"):""})()`)
}

func (b *browser) open(url string) {
	b.t.Helper()
	b.run("open "+url, chromedp.Navigate(url))
}

// click clicks sel; a click that submits a form returns before the next
// page loads.
func (b *browser) click(sel string) {
	b.t.Helper()
	// A live region that the page's stream fills right after the page
	// loads may replace the node between finding it and clicking it:
	// find it again then.
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
		err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
		cancel()
		if err == nil {
			return
		}
		if i == 2 || !strings.Contains(err.Error(), "Could not find node") {
			b.shot("failed")
			b.t.Fatalf("click %s: %v", sel, err)
		}
	}
}

func (b *browser) typeInto(sel, text string) {
	b.t.Helper()
	b.run("type into "+sel, chromedp.Clear(chromedp.CSS(sel)), chromedp.SendKeys(chromedp.CSS(sel), text))
}

func (b *browser) setValue(sel, v string) {
	b.t.Helper()
	b.run("set "+sel, chromedp.SetValue(chromedp.CSS(sel), v))
}

// TestConsole walks a cluster's whole life through the web console in a
// real browser, against a dev fleet: sign in, create with a replica
// region, watch it become ready, write through the URL it shows, switch
// over, back up, restore to a point in time, lose the host the browser is
// on, and destroy; and the bad paths: a wrong token, a POST without CSRF
// token, an invalid name.
func TestConsole(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dev fleet and a browser")
	}
	b := newBrowser(t)
	hostNames := []string{"iad-1", "iad-2", "iad-3", "ams-1"}
	c, dir, netArg := devFleetCLI(t, hostNames)
	c.ok("dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad:3,ams")
	d := &lab.Dev{Dir: dir}
	plan, err := d.LoadPlan()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(agent.TokenPath(filepath.Join(dir, "iad-1")))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	caFile := agent.CAPath(filepath.Join(dir, "iad-1"))
	pgURL := func(shown string) string { return shown + "&sslrootcert=" + caFile }
	ctx := context.Background()
	// The browser starts on ams-1, a host that is no store voter: it is
	// the one killed below, and losing it leaves the store's leadership
	// where it is.
	lost := plan.Hosts[3]
	if lost.Name != "ams-1" {
		t.Fatalf("the plan's fourth host is %s, want ams-1", lost.Name)
	}
	base := "https://" + lost.API()
	exists := func(name string) bool {
		_, _, code := c.run("status", name)
		return code == 0
	}
	started := time.Now()

	// Sign-in: a wrong token is refused, with the API's words.
	b.open(base + "/")
	b.waitPath("/signin", 10*time.Second)
	b.typeInto("#token", "pgf_wrongtoken")
	b.click("button[type=submit]")
	b.waitText("#token-error", "not this fleet's API token", 10*time.Second)
	b.typeInto("#token", token)
	b.click("button[type=submit]")
	b.waitPath("/clusters", 10*time.Second)
	b.waitText("h1", "Clusters", 5*time.Second)

	// A POST without the CSRF token is refused and creates nothing.
	status := b.eval(`fetch("/new",{method:"POST",headers:{"Content-Type":"application/x-www-form-urlencoded"},body:"name=nocsrf&primary_region=iad&ha=1&sync=off&backups=off"}).then(function(r){return String(r.status)})`)
	if status != "403" || exists("nocsrf") {
		t.Fatalf("POST /new without CSRF: status %q, cluster exists: %v; want 403 and no cluster", status, exists("nocsrf"))
	}

	// An invalid name: the API's message next to the field, as typed and
	// after submitting, and nothing created.
	b.open(base + "/new")
	b.waitText("h1", "New cluster", 5*time.Second)
	b.typeInto("#name", "Bad_Name")
	b.waitText("#name-msg", `cluster name "Bad_Name" is not valid`, 10*time.Second)
	b.click("#create")
	b.waitText("#name-msg", `cluster name "Bad_Name" is not valid: use lowercase letters`, 10*time.Second)
	if out := c.ok("list"); strings.Contains(out, "Bad_Name") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("clusters after refused creates:\n%s", out)
	}

	// Create: iad as the primary region, two members there, a replica in
	// ams, and the defaults for the rest (backups on, to the dev fleet's
	// store).
	b.open(base + "/new")
	b.typeInto("#name", "shop")
	b.eval(`(function(){var s=document.getElementById("primary_region");s.value="iad";s.dispatchEvent(new Event("change"));return ""})()`)
	b.click("input[data-replica-region=ams]")
	b.setValue("#ha", "2")
	b.shot("create")
	b.click("#create")
	b.waitPath("/clusters/shop", 20*time.Second)
	b.waitText("#progress", "Ready.", 4*time.Minute)
	b.waitText("#cluster-members", "shop-3", 5*time.Second)
	// Users are read from the primary when the page is: again, now
	// that it runs.
	b.open(base + "/clusters/shop?created=1")
	b.waitText("#progress", "Ready.", 10*time.Second)
	b.waitText("#users", "New user", 5*time.Second)
	b.shot("cluster")
	b.run("a phone's width", chromedp.EmulateViewport(375, 812))
	b.shot("cluster-375")
	b.run("a desktop's width", chromedp.EmulateViewport(1440, 1000))
	t.Logf("signed in, bad paths, created shop: %s", time.Since(started).Round(time.Second))

	// The app URL, copied and used.
	shown := b.text("#url-0")
	if !strings.HasPrefix(shown, "postgres://") {
		t.Fatalf("the app URL on the page: %q", shown)
	}
	b.click("button[data-copy-from=url-0]")
	b.waitText("#connect .copy-status", "Copied", 5*time.Second)
	conn, err := pgx.Connect(ctx, pgURL(shown))
	if err != nil {
		t.Fatalf("connect with the URL the console shows: %v", err)
	}
	defer func() { conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, "CREATE TABLE orders (id serial, item text, at timestamptz DEFAULT clock_timestamp()); INSERT INTO orders (item) VALUES ('tea'), ('scone'), ('jam')"); err != nil {
		t.Fatalf("write through the console's URL: %v", err)
	}

	// A user, added by the form: its password and URL are shown once,
	// and work.
	b.typeInto("#user", "reporting")
	b.click("#user-create")
	b.waitText("#new-user", "reporting: its password is", 20*time.Second)
	uconn, err := pgx.Connect(ctx, pgURL(b.text("#new-user-url")))
	if err != nil {
		t.Fatalf("connect as the user the console made: %v", err)
	}
	var who string
	if err := uconn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "reporting" {
		t.Fatalf("current_user through the new user's URL: %q, %v", who, err)
	}
	uconn.Close(ctx)
	// The password on its own, with the app URL's host: it logs in
	// through the proxy.
	pw := b.text("#new-user-password")
	pu, err := url.Parse(shown)
	if err != nil || pw == "" {
		t.Fatalf("the URL %q or the password %q the page shows", shown, pw)
	}
	pu.User = url.UserPassword("reporting", pw)
	if uconn, err = pgx.Connect(ctx, pgURL(pu.String())); err != nil {
		t.Fatalf("connect as reporting with the password the console shows: %v", err)
	}
	uconn.Close(ctx)
	b.waitText("tr[data-user=reporting]", "reporting", 5*time.Second)
	b.shots("users", "#users")
	b.click("#new-user-done")
	b.waitPath("/clusters/shop", 10*time.Second)
	if strings.Contains(b.eval("document.documentElement.outerHTML"), pw) {
		t.Errorf("the password is still in the page after it was dismissed")
	}

	// Switchover by clicking: the page shows the new primary.
	before := b.text("#primary")
	b.click("#switchover")
	b.waitPath("/clusters/shop", 10*time.Second)
	b.waitText(".flash", "Switching over from "+before, 10*time.Second)
	labtest.WaitFor(t, time.Minute, "the page to show a new primary", func() (bool, string) {
		p := b.text("#primary")
		return p != before && strings.HasPrefix(p, "shop-"), p
	})

	// The proxy closed the connections to the old primary; the same URL
	// reaches the new one.
	conn.Close(ctx)
	if conn, err = pgx.Connect(ctx, pgURL(shown)); err != nil {
		t.Fatalf("connect after the switchover: %v", err)
	}

	// Back up now: the backup shows in the list.
	b.click("#backup-now")
	b.waitText(".flash", "is being taken on", 10*time.Second)
	b.waitText("#cluster-backups table", "shop-", 2*time.Minute)
	b.click("#verify")
	b.waitText(".flash", "verified: every one is intact", time.Minute)

	// Restore to a moment: the time the page is prefilled with is after
	// the three rows; two more rows come after it, and are archived, so
	// that the restore replays past the moment and stops at it.
	b.open(base + "/clusters/shop")
	at, err := time.Parse(time.RFC3339, b.text("#time"))
	if err != nil {
		t.Fatalf("the restore time field: %v", err)
	}
	if d := time.Since(at); d < 0 || d > time.Minute {
		t.Errorf("the restore time field holds %s, not the page's load time", at)
	}
	// Its help gives an example an hour before the page, not a fixed date.
	help := b.text("#time-help")
	i := strings.Index(help, "was ")
	if i < 0 {
		t.Fatalf("the restore time's help: %q", help)
	}
	ex, err := time.Parse(time.RFC3339, strings.TrimRight(strings.Fields(help[i+len("was "):])[0], ");"))
	if err != nil || ex.Sub(at.Add(-time.Hour)).Abs() > time.Minute {
		t.Errorf("the restore time's help %q: want an example an hour before %s (%v)", help, at, err)
	}
	labtest.WaitFor(t, 10*time.Second, "the server's clock to pass "+at.String(), func() (bool, string) {
		var now time.Time
		conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now)
		return now.After(at.Add(1100 * time.Millisecond)), now.String()
	})
	if _, err := conn.Exec(ctx, "INSERT INTO orders (item) VALUES ('late'), ('later')"); err != nil {
		t.Fatal(err)
	}
	var seg string
	if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, time.Minute, "segment "+seg+" archived", func() (bool, string) {
		var last *string
		conn.QueryRow(ctx, "SELECT last_archived_wal FROM pg_stat_archiver").Scan(&last)
		return last != nil && *last >= seg, fmt.Sprint(last)
	})
	b.typeInto("#into", "shop-pitr")
	b.click("#restore-submit")
	b.waitPath("/clusters/shop-pitr", 30*time.Second)
	b.waitText("#progress", "Ready.", 4*time.Minute)
	var n int
	rconn, err := pgx.Connect(ctx, pgURL(b.text("#url-0")))
	if err != nil {
		t.Fatalf("connect to the restored cluster: %v", err)
	}
	defer rconn.Close(ctx)
	if err := rconn.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 3 {
		t.Fatalf("rows in the cluster restored to %s: %d, %v; want the 3 written before", at, n, err)
	}
	b.open(base + "/clusters")
	b.waitText("#clusters-table", "shop-pitr", 10*time.Second)
	b.shot("clusters")
	b.click("tr[data-cluster=shop] button.copy")
	b.waitText("tr[data-cluster=shop] .copy-status", "Copied", 10*time.Second)

	// Destroy the restored cluster, with its name typed. (Before a host
	// is lost: with a primary on every store voter, the voters hand the
	// store's leadership to each other every second, which renews every
	// lease, so a lost host's record would not expire.)
	destroy := func(on, name string) {
		t.Helper()
		b.open(on + "/clusters/" + name)
		b.waitText("h1", name, 10*time.Second)
		b.typeInto("#confirm", name)
		b.click("#destroy-submit")
		b.waitPath("/clusters", 20*time.Second)
		b.waitText(".flash", "Cluster "+name+" is destroyed", 10*time.Second)
		if exists(name) {
			t.Errorf("cluster %s exists after destroy", name)
		}
	}
	destroy(base, "shop-pitr")
	t.Logf("switchover, backup, restore: %s", time.Since(started).Round(time.Second))
	manageInBrowser(t, b, base, shown, pgURL)
	t.Logf("failover, members, settings, apps, rolling restart: %s", time.Since(started).Round(time.Second))

	// The host the browser is on is killed: the page says it lost the
	// host; the console goes on through another host, where the same
	// session is valid (as it is behind one name for every agent), and
	// the fleet page shows the lost host down.
	b.open(base + "/fleet")
	b.waitText("tr[data-host=ams-1]", "up", 10*time.Second)
	pid := d.AgentPid(lost)
	if pid == 0 {
		t.Fatal("no agent runs for ams-1")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.waitText("#conn-lost", "Lost the connection", 30*time.Second)
	other := "https://" + plan.Hosts[1].API()
	b.run("carry the session to "+other, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		got, err := cdp.Call(ctx, tg, network.GetCookies, network.GetCookiesParams{URLs: []string{base}})
		if err != nil {
			return err
		}
		yes := true
		for _, c := range got.Cookies {
			if c.Name == "pgfleet_session" {
				_, err := cdp.Call(ctx, tg, network.SetCookie, network.SetCookieParams{Name: c.Name, Value: c.Value, URL: other + "/", Path: "/", Secure: &yes, HTTPOnly: &yes, SameSite: network.CookieSameSiteStrict})
				return err
			}
		}
		return fmt.Errorf("no session cookie among %d", len(got.Cookies))
	}))
	b.open(other + "/fleet")
	b.waitPath("/fleet", 10*time.Second)
	b.waitText("tr[data-host=ams-1]", "down", 30*time.Second)
	b.shot("fleet")
	destroy(other, "shop")
	t.Logf("the whole walk: %s", time.Since(started).Round(time.Second))
}

// manageInBrowser runs cluster shop's day-two actions by clicking and
// typing: a failover, a read replica removed and added again, a setting
// refused and one applied, a database, an app attached and detached, and a
// rolling restart. Each is checked as a user would: on the page, and
// through the cluster's URL (shown, with pgURL adding the CA).
func manageInBrowser(t *testing.T, b *browser, base, shown string, pgURL func(string) string) {
	ctx := context.Background()
	b.open(base + "/clusters/shop")
	b.waitText("#cluster-members", "leader", 10*time.Second)

	// Failover by clicking: a new primary shows in the members table.
	before := b.leader()
	b.click("#failover")
	b.waitText(".flash", "Failover requested", 10*time.Second)
	labtest.WaitFor(t, time.Minute, "the members table to show a new leader", func() (bool, string) {
		l := b.leader()
		return l != "" && l != before && b.text("#primary") == l, l
	})
	t.Logf("failover: %s is the primary, was %s", b.leader(), before)

	// The replica in ams, removed by keyboard: the box ticked with the
	// space bar, the button pressed with Enter.
	replica := b.eval(`document.querySelector("#cluster-members tr[data-role=replica]").getAttribute("data-member")`)
	if replica == "" {
		t.Fatal("no replica in the members table")
	}
	b.setValue("#remove-member", replica)
	b.key("#remove-confirm", " ")
	b.key("#member-remove", "\r")
	b.waitText(".flash", "removed: "+replica, time.Minute)
	labtest.WaitFor(t, 30*time.Second, replica+" to leave the members table", func() (bool, string) {
		s := b.text("#cluster-members")
		return !strings.Contains(s, replica), s
	})
	// And one added there again, which clones and streams.
	b.setValue("#replica-region", "ams")
	b.key("#replica-add", "\r")
	b.waitText(".flash", "replica on ams-1 (ams)", 20*time.Second)
	labtest.WaitFor(t, 2*time.Minute, "a new replica streaming in ams", func() (bool, string) {
		s := b.eval(`(function(){var r=document.querySelector("#cluster-members tr[data-role=replica]");return r?r.innerText:""})()`)
		return strings.Contains(s, "streaming") && !strings.Contains(s, replica+"\t"), s
	})
	b.shots("members", "#shape")

	// A setting: a wrong value is refused with the API's words next to
	// the field and changes nothing; a right one reaches the primary by a
	// reload.
	b.typeInto("#setting", "work_mem")
	b.typeInto("#setting-value", "lots")
	b.click("#config-set")
	b.waitText("#config-error", "nothing changed: work_mem", 20*time.Second)
	if got := b.text("#setting-value"); got != "lots" {
		t.Errorf("the value field after a refusal holds %q, want what was typed", got)
	}
	b.typeInto("#setting-value", "7MB")
	b.click("#config-set")
	b.waitText(".flash", "Saved", 20*time.Second)
	b.waitText("tr[data-setting=work_mem]", "7MB", 10*time.Second)
	labtest.WaitFor(t, 30*time.Second, "SHOW work_mem on the primary to say 7MB", func() (bool, string) {
		conn, err := pgx.Connect(ctx, pgURL(shown))
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close(ctx)
		var v string
		err = conn.QueryRow(ctx, "SHOW work_mem").Scan(&v)
		return err == nil && v == "7MB", fmt.Sprint(v, err)
	})

	// A database, and an app: its DATABASE_URL lines shown once, with a
	// copy button, and working.
	b.typeInto("#database", "reports")
	b.click("#db-create")
	b.waitText(".flash", "Database reports created", 20*time.Second)
	b.waitText("#databases table", "reports", 5*time.Second)
	b.typeInto("#app", "billing")
	b.click("#app-attach")
	b.waitText("#attached", "App billing attached", 20*time.Second)
	env := b.eval(`document.getElementById("attached-env").value`)
	var appURL string
	for _, line := range strings.Split(env, "\n") {
		if v, ok := strings.CutPrefix(line, "DATABASE_URL="); ok {
			appURL = v
		}
	}
	if appURL == "" || !strings.Contains(env, "DATABASE_REPLICA_URL=postgres://") {
		t.Fatalf("the app's lines: %q", env)
	}
	b.click("button[data-copy-from=attached-env]")
	b.waitText("#attached .copy-status", "Copied", 5*time.Second)
	aconn, err := pgx.Connect(ctx, pgURL(appURL))
	if err != nil {
		t.Fatalf("connect with the app's DATABASE_URL: %v", err)
	}
	var db string
	if err := aconn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "billing" {
		t.Errorf("the app's database: %q, %v", db, err)
	}
	aconn.Close(ctx)
	b.shots("apps", "#apps")
	pw, _ := url.Parse(appURL)
	secret, _ := pw.User.Password()
	b.click("#attached-done")
	b.waitPath("/clusters/shop", 10*time.Second)
	if strings.Contains(b.eval("document.documentElement.outerHTML"), secret) {
		t.Errorf("the app's password is still in the page after it was dismissed")
	}
	b.setValue("#detach-app", "billing")
	b.click("#app-detach")
	b.waitText(".flash", "App billing detached", 20*time.Second)
	if c, err := pgx.Connect(ctx, pgURL(appURL)); err == nil {
		c.Close(ctx)
		t.Errorf("the app still logs in after it was detached")
	}

	// A rolling restart by clicking: every member restarts in turn, the
	// primary after a switchover, and the page follows it.
	b.click("#restart")
	b.waitText(".flash", "Rolling restart started", 10*time.Second)
	b.waitText("#restart-progress", "Restarted", 4*time.Minute)
	progress := b.text("#restart-progress")
	if !strings.Contains(progress, "switching over from") || strings.Count(progress, "restarted shop-") != 3 {
		t.Errorf("the rolling restart's progress: %q", progress)
	}
	b.shots("settings", "#config")
}
