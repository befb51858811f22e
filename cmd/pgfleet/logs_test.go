package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// lockedBuffer is a bytes.Buffer a command writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// throughHost runs pgfleet in-process against one agent only, with token,
// until ctx ends, writing its output to out.
func throughHost(ctx context.Context, t *testing.T, f *labtest.Fleet, host, token string, out *lockedBuffer, args ...string) error {
	t.Helper()
	root := newRootCmd()
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs(append([]string{"--api", f.Host(host).API(), "--token", token, "--ca", f.Client.CAFile}, args...))
	return root.ExecuteContext(ctx)
}

// TestLogs reads a member's postgres log through a host that is not the
// member's: a line postgres wrote, the agent's lines, --since, --follow, bad
// input, a read-only token, and the member's host going away, while
// following and after.
func TestLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three agents and a postgres instance")
	}
	f := labtest.StartFleet(t, "iad:3")
	t.Setenv("PGFLEET_HOME", t.TempDir())
	ctx := context.Background()
	one := 1
	if _, err := f.Client.Create(ctx, api.CreateRequest{Name: "lg", PrimaryRegion: "iad", HA: &one, BackupStore: "none"}); err != nil {
		t.Fatal(err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, "cluster lg ready", func() (bool, string) {
		var err error
		if v, err = f.Client.Cluster(ctx, "lg"); err != nil {
			return false, err.Error()
		}
		return v.Primary == "lg-1" && len(v.Members) == 1 && v.Members[0].Healthy, fmt.Sprintf("primary %q, %+v", v.Primary, v.Members)
	})
	memberHost := v.Members[0].Host
	other := ""
	for _, h := range f.Plan.Hosts {
		if h.Name != memberHost {
			other = h.Name
			break
		}
	}
	logs := func(args ...string) (string, error) {
		t.Helper()
		var out lockedBuffer
		err := throughHost(ctx, t, f, other, f.Token, &out, append([]string{"logs"}, args...)...)
		return out.String(), err
	}

	u, err := f.Client.URL(ctx, "lg", "")
	if err != nil {
		t.Fatal(err)
	}
	conn := labtest.Connect(t, u.URL)
	marker := func() string {
		b := make([]byte, 6)
		rand.Read(b)
		m := "pgfleet-logs-marker-" + hex.EncodeToString(b)
		if _, err := conn.Exec(ctx, fmt.Sprintf("DO $$ BEGIN RAISE LOG '%s'; END $$", m)); err != nil {
			t.Fatal(err)
		}
		return m
	}
	// A failed statement postgres logs with a password in it.
	if _, err := conn.Exec(ctx, "ALTER ROLE no_such_role PASSWORD 'typed-secret-42'"); err == nil {
		t.Fatal("ALTER ROLE of a role that does not exist succeeded")
	}
	first := marker()
	var out string
	labtest.WaitFor(t, 30*time.Second, "the marker in `pgfleet logs lg` through "+other, func() (bool, string) {
		out, err = logs("lg")
		return err == nil && strings.Contains(out, first), fmt.Sprintf("%v; %d bytes: %.300s", err, len(out), lastLines(out, 3))
	})
	t.Logf("pgfleet logs lg, through %s (the member is on %s), ends:\n%s", other, memberHost, lastLines(out, 8))
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, first) && line == "" {
			line = l // the LOG line; CONTEXT and STATEMENT lines follow
		}
	}
	if !strings.Contains(line, "  lg-1  postgres  ") || !strings.Contains(line, "LOG:  "+first) {
		t.Errorf("marker line %q: want time, member lg-1, source postgres and postgres's LOG line", line)
	}
	if !strings.Contains(out, "  lg-1  agent     INFO:  postgres ready") {
		t.Errorf("pgfleet logs lg lacks the agent's \"postgres ready\" line:\n%s", lastLines(out, 20))
	}
	// Nothing secret: the superuser's password, the fleet's token.
	pu, _ := url.Parse(u.URL)
	pw, _ := pu.User.Password()
	if pw == "" || strings.Contains(out, pw) || strings.Contains(out, f.Token) {
		t.Errorf("pgfleet logs lg shows a password or the token (or the URL had no password: %q)", pw)
	}
	if !strings.Contains(out, `ERROR:  role "no_such_role" does not exist`) || strings.Contains(out, "typed-secret-42") ||
		!strings.Contains(out, "STATEMENT:  ALTER ROLE no_such_role PASSWORD '[redacted]'") {
		t.Errorf("pgfleet logs lg: want the failed ALTER ROLE's error and statement with its password masked:\n%s", lastLines(out, 12))
	}
	// The log is the agent's: a postgres session cannot read it.
	logDir := filepath.Join(f.DataDir(memberHost), "members", "lg-1", "log")
	if _, err := conn.Exec(ctx, "SELECT pg_read_file($1)", filepath.Join(logDir, "member.log")); err == nil || !strings.Contains(err.Error(), "ermission denied") {
		t.Errorf("pg_read_file of the member log: %v; want permission denied", err)
	}
	if fi, err := os.Stat(filepath.Join(logDir, "member.log")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("member.log: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}

	// --since: an RFC 3339 time leaves out what came before it; a duration
	// reaches back.
	cut := time.Now()
	second := marker()
	labtest.WaitFor(t, 30*time.Second, "the second marker since "+cut.Format(time.RFC3339Nano), func() (bool, string) {
		out, err = logs("lg", "--member", "lg-1", "--since", cut.UTC().Format(time.RFC3339Nano))
		return err == nil && strings.Contains(out, second), fmt.Sprintf("%v: %.300s", err, lastLines(out, 3))
	})
	if strings.Contains(out, first) || strings.Contains(out, "postgres ready") {
		t.Errorf("logs --since %s shows lines from before it:\n%s", cut.Format(time.RFC3339Nano), out)
	}
	if out, err = logs("lg", "--since", "2099-01-01T00:00:00Z"); err != nil || strings.TrimSpace(out) != "no lines in the log of the primary since 2099-01-01T00:00:00Z" {
		t.Errorf("logs --since a time to come: %v, %q; want it to say there are no lines", err, out)
	}
	if out, err = logs("lg", "--since", "1h"); err != nil || !strings.Contains(out, first) || !strings.Contains(out, second) {
		t.Errorf("logs --since 1h: %v; want both markers in:\n%s", err, lastLines(out, 5))
	}

	// Bad input: each refused with what was wrong.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nosuch"}, "cluster nosuch does not exist"},
		{[]string{"lg", "--member", "lg-7"}, "cluster lg has no member lg-7: its members are lg-1"},
		{[]string{"lg", "--member", "web-1"}, `member id "web-1" is not valid`},
		{[]string{"lg", "--since", "yesterday"}, `since "yesterday" is neither a duration nor a time`},
		{[]string{"lg", "--since", "-5m"}, "is negative"},
	} {
		out, err := logs(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "2006-01-02T15:04:05.999999999") {
			t.Errorf("pgfleet logs %s: %v (output %q); want an error with %q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
	ro, err := f.Client.CreateReadOnlyToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var roOut lockedBuffer
	if err := throughHost(ctx, t, f, other, ro, &roOut, "logs", "lg"); err == nil || !strings.Contains(err.Error(), "read-only token") {
		t.Errorf("pgfleet logs with a read-only token: %v; want it refused", err)
	}

	// --follow: the lines so far, then a line written after it started.
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	var fout lockedBuffer
	followed := make(chan error, 1)
	go func() { followed <- throughHost(fctx, t, f, other, f.Token, &fout, "logs", "lg", "--follow") }()
	labtest.WaitFor(t, 30*time.Second, "logs --follow shows the lines so far", func() (bool, string) {
		return strings.Contains(fout.String(), second), lastLines(fout.String(), 3)
	})
	third := marker()
	labtest.WaitFor(t, 30*time.Second, "logs --follow shows a line written after it started", func() (bool, string) {
		return strings.Contains(fout.String(), third), lastLines(fout.String(), 3)
	})
	stopFollow()
	select {
	case err := <-followed:
		if err != nil {
			t.Errorf("logs --follow ended by its context: %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("logs --follow did not end within 10s of being interrupted")
	}

	// The member's host goes away while its log is followed, and after.
	fctx, stopFollow = context.WithCancel(ctx)
	defer stopFollow()
	fout = lockedBuffer{}
	go func() { followed <- throughHost(fctx, t, f, other, f.Token, &fout, "logs", "lg", "-f") }()
	labtest.WaitFor(t, 30*time.Second, "logs -f shows the lines so far", func() (bool, string) {
		return strings.Contains(fout.String(), third), lastLines(fout.String(), 3)
	})
	f.Stop(memberHost)
	select {
	case err := <-followed:
		if want := "the agent on host " + memberHost + ", which keeps the log of member lg-1, is stopping"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("logs -f when the member's host stops: %v; want an error with %q", err, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("logs -f still running 30s after the member's host stopped")
	}
	want := fmt.Sprintf("member lg-1 is on host %s, which is down", memberHost)
	labtest.WaitFor(t, 30*time.Second, "logs of a member whose host is down", func() (bool, string) {
		_, err := logs("lg", "--member", "lg-1")
		return err != nil && strings.Contains(err.Error(), want), fmt.Sprint(err)
	})

	// Back, the host still has what was logged before postgres and its
	// agent stopped, and goes on after it.
	f.Start(memberHost, "")
	labtest.WaitFor(t, time.Minute, "the log from before the stop, and after", func() (bool, string) {
		out, err = logs("lg", "--member", "lg-1")
		return err == nil && strings.Contains(out, first) && strings.Contains(out, "database system is shut down") &&
			strings.Count(out, "database system is ready to accept connections") == 2, fmt.Sprintf("%v: %s", err, lastLines(out, 3))
	})
}

// lastLines is the end of s, for a failure's message.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestLogsHostCutOff follows a member's log through another host while
// the member's host drops off the network (its namespace's link goes
// down, so nothing resets the connection): the follow ends within the
// forwarding agent's idle limit, naming the host that went silent, and the
// log is then refused as that of a host that is down.
func TestLogsHostCutOff(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-host fleet in network namespaces")
	}
	f := startNamespacedFleet(t, "iad:3")
	ctx := context.Background()
	one := 1
	if _, err := f.client.Create(ctx, api.CreateRequest{Name: "cut", PrimaryRegion: "iad", HA: &one, BackupStore: "none"}); err != nil {
		t.Fatal(err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, "cluster cut ready", func() (bool, string) {
		var err error
		if v, err = f.client.Cluster(ctx, "cut"); err != nil {
			return false, err.Error()
		}
		return v.Primary == "cut-1" && v.Members[0].Healthy, fmt.Sprintf("%+v", v.Members)
	})
	memberHost := v.Members[0].Host
	var through string
	for _, h := range f.plan.Hosts {
		if h.Name != memberHost {
			through = h.API()
			break
		}
	}
	c := api.NewClient([]string{through}, f.token, f.client.CA())

	var mu sync.Mutex
	lines := 0
	followed := make(chan error, 1)
	go func() {
		followed <- c.Logs(ctx, "cut", api.LogOptions{Member: "cut-1", Follow: true}, func(api.LogLine) error {
			mu.Lock()
			lines++
			mu.Unlock()
			return nil
		})
	}()
	labtest.WaitFor(t, 30*time.Second, "the followed log's first lines", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return lines > 0, fmt.Sprintf("%d lines", lines)
	})
	cut := time.Now()
	f.ns.Cut(memberHost)
	select {
	case err := <-followed:
		want := fmt.Sprintf("lost the log of member cut-1 from host %s: no answer for 15s", memberHost)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("logs -f when the member's host is cut off: %v; want an error with %q", err, want)
		}
		t.Logf("the follow ended %s after the cut: %v", time.Since(cut).Round(100*time.Millisecond), err)
	case <-time.After(time.Minute):
		t.Fatal("logs -f still running a minute after the member's host was cut off")
	}
	want := fmt.Sprintf("member cut-1 is on host %s, which is down", memberHost)
	labtest.WaitFor(t, time.Minute, "logs of a member whose host is cut off", func() (bool, string) {
		err := c.Logs(ctx, "cut", api.LogOptions{Member: "cut-1"}, func(api.LogLine) error { return nil })
		return err != nil && strings.Contains(err.Error(), want), fmt.Sprint(err)
	})
}
