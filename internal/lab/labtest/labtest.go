// Package labtest starts fleets of in-process agents for tests, and holds
// the helpers integration tests share. It imports testing, so only tests
// import it.
package labtest

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// RequirePostgres skips a test when the PostgreSQL server binaries are
// missing, except in CI (CI is set), where that is a failure.
func RequirePostgres(t testing.TB) postgres.Bin {
	t.Helper()
	bin, err := postgres.FindBin("")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs PostgreSQL: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	return bin
}

// TestDir returns a fresh directory that the postgres OS user can enter:
// t.TempDir's folders are 0700, which locks it out when tests run as root.
func TestDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("chmod %s: %v", d, err)
		}
	}
	return dir
}

// FreeNet returns a second loopback octet N such that 127.N.1.1 has its API
// and etcd ports free, so parallel tests and a developer's `dev up` fleet
// (N = 0) never meet.
func FreeNet(t testing.TB) int {
	t.Helper()
	for range 50 {
		n := 100 + rand.IntN(150)
		free := true
		for _, p := range []string{"7480", "2379", "2380"} {
			ln, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.%d.1.1", n), p))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return n
		}
	}
	t.Fatal("no free loopback network found")
	return 0
}

// Fleet is a fleet of agents running in the test's process, each with its
// own loopback address, data directory and embedded etcd member.
type Fleet struct {
	t      testing.TB
	Plan   lab.Plan
	Dir    string
	Token  string
	CA     *x509.CertPool // the fleet's CA
	Client *api.Client
	agents map[string]*inproc
}

type inproc struct {
	cancel context.CancelFunc
	done   chan error
}

// StartFleet starts the hosts of regions ("iad:3,ams,syd") one by one, the
// way `dev up` does, and stops them all when the test ends.
func StartFleet(t testing.TB, regions string) *Fleet {
	t.Helper()
	RequirePostgres(t)
	plan, err := lab.ParsePlan(regions, FreeNet(t))
	if err != nil {
		t.Fatal(err)
	}
	f := &Fleet{t: t, Plan: plan, Dir: TestDir(t), agents: map[string]*inproc{}}
	t.Cleanup(f.StopAll)
	f.Start(plan.Hosts[0].Name, "")
	tok, err := os.ReadFile(agent.TokenPath(f.DataDir(plan.Hosts[0].Name)))
	if err != nil {
		t.Fatalf("read token: %v", err)
	}
	f.Token = strings.TrimSpace(string(tok))
	caPEM, err := os.ReadFile(agent.CAPath(f.DataDir(plan.Hosts[0].Name)))
	if err != nil {
		t.Fatalf("read the fleet's CA: %v", err)
	}
	if f.CA, err = pki.Pool(caPEM); err != nil {
		t.Fatal(err)
	}
	f.Client = api.NewClient(lab.Endpoints(plan), f.Token, f.CA)
	f.Client.CAFile = agent.CAPath(f.DataDir(plan.Hosts[0].Name))
	if len(plan.Hosts) > 1 {
		jt, err := f.Client.CreateJoinToken(context.Background(), 10*time.Minute)
		if err != nil {
			t.Fatalf("make a join token: %v", err)
		}
		for _, h := range plan.Hosts[1:] {
			f.Start(h.Name, jt.Token)
		}
	}
	if err := lab.WaitHosts(context.Background(), f.Client, len(plan.Hosts)); err != nil {
		t.Fatal(err)
	}
	return f
}

// Host returns the plan of host name.
func (f *Fleet) Host(name string) lab.HostPlan {
	for _, h := range f.Plan.Hosts {
		if h.Name == name {
			return h
		}
	}
	f.t.Fatalf("no host %s in the fleet", name)
	return lab.HostPlan{}
}

// Store opens the fleet's store as host name does, with its certificate.
func (f *Fleet) Store(name string) *store.Store {
	f.t.Helper()
	id, err := pki.LoadIdentity(pki.Files{Dir: filepath.Join(f.DataDir(name), "tls")})
	if err != nil {
		f.t.Fatal(err)
	}
	st, err := store.Open([]string{"https://" + f.Host(name).Addr + ":2379"}, "", id.ClientTLS())
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { st.Close() })
	return st
}

// DataDir is host name's data directory.
func (f *Fleet) DataDir(name string) string { return filepath.Join(f.Dir, name) }

// Start starts (or restarts) host name's agent and waits until it is
// ready. With a join token it joins the fleet through the first host.
func (f *Fleet) Start(name, joinToken string) {
	f.t.Helper()
	h := f.Host(name)
	logf, err := os.OpenFile(filepath.Join(f.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		f.t.Fatal(err)
	}
	join := ""
	if joinToken != "" {
		join = f.Plan.Hosts[0].API()
	}
	a, err := agent.New(agent.Config{
		Name: h.Name, Region: h.Region, Advertise: h.Addr, DataDir: f.DataDir(name),
		APIListen: h.API(), Join: join, JoinToken: joinToken,
		Logger: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		f.t.Fatalf("agent %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &inproc{cancel: cancel, done: make(chan error, 1)}
	go func() {
		p.done <- a.Run(ctx)
		logf.Close()
	}()
	select {
	case <-a.Ready():
	case err := <-p.done:
		f.t.Fatalf("agent %s exited: %v\n%s", name, err, lab.Tail(filepath.Join(f.Dir, name+".log"), 20))
	case <-time.After(90 * time.Second):
		cancel()
		<-p.done
		f.t.Fatalf("agent %s not ready after 90s\n%s", name, lab.Tail(filepath.Join(f.Dir, name+".log"), 20))
	}
	f.agents[name] = p
}

// Stop stops host name's agent, as SIGTERM would, and waits for it.
func (f *Fleet) Stop(name string) {
	p, ok := f.agents[name]
	if !ok {
		return
	}
	p.cancel()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		f.t.Errorf("agent %s did not stop within 60s", name)
	}
	delete(f.agents, name)
}

// StopAll stops every agent, all at once.
func (f *Fleet) StopAll() {
	for _, p := range f.agents {
		p.cancel()
	}
	for name := range f.agents {
		f.Stop(name)
	}
	if f.t.Failed() {
		// The test's directory goes with it: PGFLEET_TEST_LOGS keeps the
		// agents' whole logs for a look afterwards.
		if keep := os.Getenv("PGFLEET_TEST_LOGS"); keep != "" {
			for _, h := range f.Plan.Hosts {
				if b, err := os.ReadFile(filepath.Join(f.Dir, h.Name+".log")); err == nil {
					_ = os.MkdirAll(keep, 0o755)
					_ = os.WriteFile(filepath.Join(keep, h.Name+".log"), b, 0o644)
				}
			}
		}
		for _, h := range f.Plan.Hosts {
			f.t.Logf("--- end of %s's log:\n%s", h.Name, lab.Tail(filepath.Join(f.Dir, h.Name+".log"), 30))
		}
	}
}

// WaitFor polls cond until it holds or timeout passes; then the test fails
// with the last state cond described.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %s; last state: %s", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
