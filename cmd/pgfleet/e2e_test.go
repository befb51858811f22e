package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/pki"
)

// cli runs the built pgfleet binary with its own PGFLEET_HOME.
type cli struct {
	t       *testing.T
	exe     string
	home    string
	hostAPI [][2]string // host name, API address
	apis    string      // --api for read commands; "" uses the saved config
}

// without returns a cli whose status reads skip host's agent, for while that
// agent is stopped and would only time out.
func (c cli) without(host string) cli {
	var eps []string
	for _, h := range c.hostAPI {
		if h[0] != host {
			eps = append(eps, h[1])
		}
	}
	c.apis = strings.Join(eps, ",")
	return c
}

func (c cli) run(args ...string) (string, string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.exe, args...)
	cmd.Env = append(os.Environ(), "PGFLEET_HOME="+c.home)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("pgfleet %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

// ok runs a command that must succeed and returns its output.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, errs, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("pgfleet %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// fails runs a command that must fail with code and a message containing want.
func (c cli) fails(code int, want string, args ...string) {
	c.t.Helper()
	out, errs, got := c.run(args...)
	if got != code || !strings.Contains(errs, want) {
		c.t.Errorf("pgfleet %s: exit %d, stderr %q (stdout %q); want exit %d with %q", strings.Join(args, " "), got, errs, out, code, want)
	}
}

func buildBinary(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(labtest.TestDir(t), "pgfleet")
	out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

// devFleetCLI returns a cli with a home of its own, the directory and
// loopback network for a dev fleet, and a cleanup that stops the fleet and,
// when the test failed, shows the end of each host's log.
func devFleetCLI(t *testing.T, hosts []string) (c cli, dir, netArg string) {
	t.Helper()
	labtest.RequirePostgres(t)
	c = cli{t: t, exe: buildBinary(t), home: labtest.TestDir(t)}
	dir = filepath.Join(labtest.TestDir(t), "fleet")
	netArg = strconv.Itoa(labtest.FreeNet(t))
	t.Cleanup(func() {
		c.run("dev", "down", "--dir", dir)
		if !t.Failed() {
			return
		}
		for _, h := range hosts {
			b, _ := os.ReadFile(filepath.Join(dir, h+".log"))
			lines := strings.Split(string(b), "\n")
			t.Logf("--- end of %s.log:\n%s", h, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return c, dir, netArg
}

// TestDevUpNewcomer walks the path of the README: dev up, create with
// progress, status, url, connect, write on the primary and read on a replica
// in another region, bad input, a lost agent restarted by dev up, destroy,
// dev down.
func TestDevUpNewcomer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a five-host dev fleet")
	}
	c, dir, netArg := devFleetCLI(t, []string{"iad-1", "iad-2", "iad-3", "ams-1", "syd-1"})

	c.fails(1, "apt-get install -y postgresql-15", "dev", "up", "--dir", dir, "--net", netArg, "--pg-bin", "/nonexistent")
	c.fails(2, "host count", "dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad:x")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("a failed dev up created %s", dir)
	}

	start := time.Now()
	out := c.ok("dev", "up", "--dir", dir, "--net", netArg)
	if !strings.Contains(out, "fleet ready: 5 hosts (iad:3,ams,syd)") || !strings.Contains(out, "next: pgfleet create demo") || !strings.Contains(out, "web console: https://") {
		t.Fatalf("dev up output:\n%s", out)
	}
	fi, err := os.Stat(filepath.Join(c.home, "config.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config.json: %v, mode %v; want it saved with mode 0600", err, fi.Mode().Perm())
	}
	if fi, err := os.Stat(filepath.Join(dir, "iad-1", "token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v; want mode 0600", err)
	}
	if out := c.ok("dev", "up", "--dir", dir, "--net", netArg); strings.Count(out, "already running") != 5 {
		t.Fatalf("second dev up must change nothing; output:\n%s", out)
	}
	c.fails(1, "already exists in", "dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad,ams")

	var hosts []api.HostView
	if err := json.Unmarshal([]byte(c.ok("hosts", "--json")), &hosts); err != nil || len(hosts) != 5 {
		t.Fatalf("hosts --json: %d hosts, %v; want 5", len(hosts), err)
	}

	out = c.ok("create", "demo", "--primary-region", "iad", "--ha", "3", "--replicas", "ams,syd", "--wait")
	for _, want := range []string{"cloning", "streaming", "cluster demo is ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("create --wait output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("dev up + create of a 5-member cluster: %s", time.Since(start).Round(100*time.Millisecond))

	var v api.ClusterView
	if err := json.Unmarshal([]byte(c.ok("status", "demo", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	var layout []string
	for _, m := range v.Members {
		layout = append(layout, fmt.Sprintf("%s/%s/%s", m.Role, m.Region, m.State))
		if m.Addr == "" || m.Host == "" || m.Timeline != 1 || m.LagBytes != 0 {
			t.Errorf("status member %+v: want addr, host, timeline 1 and lag 0", m)
		}
	}
	if got := strings.Join(layout, " "); v.Primary != "demo-1" || got != "primary/iad/running standby/iad/streaming standby/iad/streaming replica/ams/streaming replica/syd/streaming" {
		t.Fatalf("status demo --json: primary %q, members %s", v.Primary, got)
	}
	if out := c.ok("status", "demo"); !strings.Contains(out, "MEMBER") || !strings.Contains(out, "demo-5") {
		t.Errorf("status table:\n%s", out)
	}

	ctx := context.Background()
	primary, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "demo")))
	if err != nil {
		t.Fatalf("connect to the primary's url: %v", err)
	}
	defer primary.Close(ctx)
	if _, err := primary.Exec(ctx, "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hello from iad')"); err != nil {
		t.Fatal(err)
	}
	replica, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "demo", "--member", "demo-5")))
	if err != nil {
		t.Fatalf("connect to demo-5: %v", err)
	}
	defer replica.Close(ctx)
	labtest.WaitFor(t, 30*time.Second, "row on the syd replica", func() (bool, string) {
		var body string
		err := replica.QueryRow(ctx, "SELECT body FROM notes").Scan(&body)
		return err == nil && body == "hello from iad", fmt.Sprint(body, err)
	})
	if out := c.ok("connect", "demo", "--member", "demo-4", "--", "-Atc", "SELECT pg_is_in_recovery()"); strings.TrimSpace(out) != "t" {
		t.Errorf("connect demo --member demo-4 -- -Atc ...: %q, want t", out)
	}
	verifiedURLs(t, c)
	login(t, c, dir)
	tokens(t, c, dir)

	c.fails(1, `cluster "demo" already exists`, "create", "demo", "--primary-region", "iad")
	c.fails(2, `cluster name "Demo_2" is not valid`, "create", "Demo_2", "--primary-region", "iad")
	c.fails(2, "ha is 0", "create", "x", "--primary-region", "iad", "--ha", "0")
	c.fails(1, `unknown region "fra"`, "create", "x", "--primary-region", "fra")
	c.fails(2, "--primary-region is required", "create", "x")
	c.fails(2, "add --yes to confirm", "destroy", "demo")
	c.fails(1, "cluster nope does not exist: `pgfleet list` shows the clusters", "status", "nope")
	c.fails(1, "cluster nope does not exist: `pgfleet list` shows the clusters", "events", "nope")
	c.fails(2, "needs a cluster NAME", "status")

	// An agent killed outright takes its postgres with it; dev up brings it back.
	pidBytes, _ := os.ReadFile(filepath.Join(dir, "syd-1.pid"))
	agentPid, _ := strconv.Atoi(strings.TrimSpace(string(pidBytes)))
	pmBytes, err := os.ReadFile(filepath.Join(dir, "syd-1", "members", "demo-5", "pgdata", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pmPid, _ := strconv.Atoi(strings.SplitN(string(pmBytes), "\n", 2)[0])
	if err := syscall.Kill(agentPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 10*time.Second, "postmaster gone with its agent", func() (bool, string) {
		err := syscall.Kill(pmPid, 0)
		return err != nil, fmt.Sprintf("postmaster %d: kill 0 = %v", pmPid, err)
	})
	// dev up restarts it and says the fleet is ready once the cluster is,
	// pointing at the cluster rather than at creating it again.
	if out := c.ok("dev", "up", "--dir", dir, "--net", netArg); !strings.Contains(out, "syd-1") || !strings.Contains(out, "restarted") ||
		!strings.Contains(out, "clusters: demo 5/5 healthy") || !strings.Contains(out, "next: pgfleet status demo") || strings.Contains(out, "create demo") {
		t.Fatalf("dev up after a lost agent:\n%s", out)
	}
	labtest.WaitFor(t, time.Minute, "demo-5 streaming again", func() (bool, string) {
		var v api.ClusterView
		if err := json.Unmarshal([]byte(c.ok("status", "demo", "--json")), &v); err != nil {
			return false, err.Error()
		}
		m := v.Members[4]
		return m.State == fleet.StateStreaming && m.LagBytes == 0, fmt.Sprintf("%s %s lag %d", m.ID, m.State, m.LagBytes)
	})

	events := c.ok("events", "demo", "--limit", "500")
	if !strings.Contains(events, "demo-1 is primary") {
		t.Errorf("events demo:\n%s", events)
	}
	noSecretsShown(t, c, dir, events)
	c.ok("destroy", "demo", "--yes")
	if out := c.ok("list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("list --json after destroy = %s, want []", out)
	}
	labtest.WaitFor(t, 30*time.Second, "member data removed", func() (bool, string) {
		m, _ := filepath.Glob(filepath.Join(dir, "*", "members", "demo-*"))
		return len(m) == 0, fmt.Sprint(m)
	})

	c.ok("dev", "down", "--dir", dir, "--purge")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dev down --purge left %s", dir)
	}
	if _, err := os.Stat(filepath.Join(c.home, "config.json")); !os.IsNotExist(err) {
		t.Errorf("dev down --purge left the CLI config of the purged fleet")
	}
}

// verifiedURLs checks that psql verifies the server (sslmode=verify-full,
// with the fleet's CA) through every kind of URL `pgfleet url` prints, and
// refuses the same URL with another CA.
func verifiedURLs(t *testing.T, c cli) {
	t.Helper()
	psql, err := findPsql()
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewAuthority("stranger", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherCA := filepath.Join(t.TempDir(), "other-ca.crt")
	if err := os.WriteFile(otherCA, other.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, flags := range [][]string{{}, {"--replica"}, {"--replica", "--region", "ams"}, {"--direct"}, {"--direct", "--replica"}, {"--member", "demo-2"}} {
		raw := strings.TrimSpace(c.ok(append([]string{"url", "demo"}, flags...)...))
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if q := u.Query(); q.Get("sslmode") != "verify-full" || q.Get("sslrootcert") == "" {
			t.Errorf("url demo %v = %s; want sslmode=verify-full and sslrootcert", flags, raw)
		}
		out, err := exec.Command(psql, raw, "-Atc", "SELECT 1").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("psql through url demo %v: %v\n%s", flags, err, out)
		}
		q := u.Query()
		q.Set("sslrootcert", otherCA)
		u.RawQuery = q.Encode()
		out, err = exec.Command(psql, u.String(), "-Atc", "SELECT 1").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "certificate verify failed") {
			t.Errorf("psql through url demo %v with another CA: %v\n%s; want certificate verify failed", flags, err, out)
		}
	}
}

// login checks `pgfleet login` from a CLI that knows only an address and
// the token: it learns the CA, and a wrong token learns nothing.
func login(t *testing.T, c cli, dir string) {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(dir, "iad-1", "token"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg cliConfig
	b, _ := os.ReadFile(filepath.Join(c.home, "config.json"))
	if err := json.Unmarshal(b, &cfg); err != nil || len(cfg.Endpoints) == 0 {
		t.Fatalf("config.json: %v", err)
	}
	fresh := cli{t: t, exe: c.exe, home: labtest.TestDir(t)}
	fresh.fails(1, "could not prove it knows the token", "login", cfg.Endpoints[0], "--token", "pgf_wrong")
	fresh.fails(1, "no fleet configured", "status", "demo")
	out := fresh.ok("login", cfg.Endpoints[0], "--token", strings.TrimSpace(string(tok)))
	if !strings.Contains(out, "logged in to the fleet at "+cfg.Endpoints[0]+": 5 hosts") {
		t.Errorf("login output: %s", out)
	}
	if out := fresh.ok("status", "demo"); !strings.Contains(out, "demo-1") {
		t.Errorf("status after login: %s", out)
	}
}

// tokens checks a read-only token (reads status, gets no URL) and a
// rotation (the old token stops working, the CLI and the dev fleet keep
// the new one).
func tokens(t *testing.T, c cli, dir string) {
	t.Helper()
	ro := strings.TrimSpace(c.ok("token", "create", "--read-only"))
	if !strings.HasPrefix(ro, "pgfro_") {
		t.Fatalf("token create --read-only = %q", ro)
	}
	if out := c.ok("status", "demo", "--token", ro); !strings.Contains(out, "demo-1") {
		t.Errorf("status with a read-only token: %s", out)
	}
	c.fails(1, "a read-only token can list", "url", "demo", "--token", ro)
	c.fails(1, "a read-only token can list", "destroy", "demo", "--yes", "--token", ro)

	old, err := os.ReadFile(filepath.Join(dir, "iad-1", "token"))
	if err != nil {
		t.Fatal(err)
	}
	fresh := strings.TrimSpace(c.ok("token", "rotate"))
	if !strings.HasPrefix(fresh, "pgf_") || fresh == strings.TrimSpace(string(old)) {
		t.Fatalf("token rotate = %q", fresh)
	}
	labtest.WaitFor(t, 10*time.Second, "the old token refused", func() (bool, string) {
		out, errOut, code := c.run("status", "demo", "--token", strings.TrimSpace(string(old)))
		return code != 0 && strings.Contains(errOut, "invalid API token"), out + errOut
	})
	if out := c.ok("status", "demo"); !strings.Contains(out, "demo-1") {
		t.Errorf("status with the rotated token from the config: %s", out)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "iad-1", "token")); strings.TrimSpace(string(b)) != fresh {
		t.Errorf("the dev fleet's token file was not updated by the rotation")
	}
}

// noSecretsShown checks that no secret of the fleet appears in its agents'
// logs, in the cluster's events, or in any process's command line: the
// superuser and replication passwords, the API token, and the private keys.
func noSecretsShown(t *testing.T, c cli, dir, events string) {
	t.Helper()
	secrets := map[string]string{}
	u, err := url.Parse(strings.TrimSpace(c.ok("url", "demo")))
	if err != nil {
		t.Fatal(err)
	}
	if pw, ok := u.User.Password(); ok {
		secrets["superuser password"] = pw
	}
	passfiles, _ := filepath.Glob(filepath.Join(dir, "*", "members", "demo-*", "*.pgpass"))
	for _, p := range passfiles {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		line := strings.TrimSpace(string(b))
		secrets["replication password"] = line[strings.LastIndex(line, ":")+1:]
	}
	if b, err := os.ReadFile(filepath.Join(dir, "iad-1", "token")); err == nil {
		secrets["API token"] = strings.TrimSpace(string(b))
	}
	for _, k := range []string{"iad-1/tls/host.pem", "iad-1/tls/ca.key", "ams-1/tls/host.pem", "iad-1/members/demo-1/server.key"} {
		b, err := os.ReadFile(filepath.Join(dir, k))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		secrets[k] = lines[1] // a line of the key's base64 body
	}
	if len(secrets) < 7 {
		t.Fatalf("found only %d of the secrets to look for: %v", len(secrets), secrets)
	}
	ps, err := exec.Command("ps", "-eo", "args").Output()
	if err != nil {
		t.Fatal(err)
	}
	places := map[string]string{"events": events, "ps": string(ps)}
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	memberLogs, _ := filepath.Glob(filepath.Join(dir, "*", "members", "*", "log", "member.log*")) // what `pgfleet logs` shows
	if len(memberLogs) == 0 {
		t.Error("no member logs under " + dir)
	}
	for _, l := range append(logs, memberLogs...) {
		b, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		places[strings.TrimPrefix(l, dir+"/")] = string(b)
	}
	for what, secret := range secrets {
		if len(secret) < 8 {
			t.Fatalf("%s %q is too short to look for", what, secret)
		}
		for where, text := range places {
			if strings.Contains(text, secret) {
				t.Errorf("the %s appears in %s", what, where)
			}
		}
	}
}
