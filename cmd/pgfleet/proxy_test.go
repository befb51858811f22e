package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// proxyURL is the URL of cluster through host's proxy: the primary port, or
// the replica port.
func proxyURL(t *testing.T, c cli, cluster string, h api.HostView, replica bool) string {
	t.Helper()
	v := status(t, c, cluster)
	port := v.Port + 1
	if replica {
		port = v.Port + 2
	}
	// The member's URL, verified TLS included, pointed at the proxy: the
	// members' certificate names every host.
	u, err := url.Parse(strings.TrimSpace(c.ok("url", cluster, "--member", v.Primary)))
	if err != nil {
		t.Fatal(err)
	}
	u.Host = net.JoinHostPort(h.Addr, strconv.Itoa(port))
	q := u.Query()
	q.Set("connect_timeout", "5")
	u.RawQuery = q.Encode()
	return u.String()
}

// servedBy connects to url and returns the member that answers and whether
// it is in recovery.
func servedBy(url string) (string, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", false, err
	}
	defer conn.Close(ctx)
	var name string
	var recovery bool
	err = conn.QueryRow(ctx, "SELECT current_setting('cluster_name'), pg_is_in_recovery()").Scan(&name, &recovery)
	return name, recovery, err
}

// shortWriter commits through url with a new connection per transaction,
// as an application behind a pool that reconnects would, and records every
// commit, which member acknowledged it, and every failure.
type shortWriter struct {
	url     string
	mu      sync.Mutex
	acks    []ack
	fails   []string
	slowest time.Duration
	stop    chan struct{}
	done    chan struct{}
}

func startShortWriter(url string) *shortWriter {
	w := &shortWriter{url: url, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *shortWriter) run() {
	defer close(w.done)
	for id := 1_000_000; ; id++ {
		select {
		case <-w.stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		start := time.Now()
		member, err := w.commit(id)
		took := time.Since(start)
		w.mu.Lock()
		if err != nil {
			w.fails = append(w.fails, fmt.Sprintf("%s: %v", start.Format("15:04:05.000"), err))
		} else {
			w.acks = append(w.acks, ack{id: id, member: member, at: time.Now()})
			w.slowest = max(w.slowest, took)
		}
		w.mu.Unlock()
	}
}

func (w *shortWriter) commit(id int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.url)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var member string
	err = conn.QueryRow(ctx, "INSERT INTO acks (id) VALUES ($1) RETURNING current_setting('cluster_name')", id).Scan(&member)
	return member, err
}

func (w *shortWriter) halt() ([]ack, []string, time.Duration) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acks, w.fails, w.slowest
}

// TestProxy: on a three-region fleet every agent's primary port reaches the
// primary and its replica port the nearest member fit for reads, or the
// primary when none is; a switchover through the proxy costs a client that
// connects per transaction no failed transaction; a lost primary host is
// routed around with no write acknowledged by two primaries.
func TestProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a four-host dev fleet")
	}
	hostNames := []string{"iad-1", "iad-2", "ams-1", "syd-1"}
	c, dir, netArg := devFleetCLI(t, hostNames)
	c.ok("dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad:2,ams,syd")
	var hosts []api.HostView
	if err := json.Unmarshal([]byte(c.ok("hosts", "--json")), &hosts); err != nil {
		t.Fatal(err)
	}
	byName := map[string]api.HostView{}
	for _, h := range hosts {
		byName[h.Name] = h
		c.hostAPI = append(c.hostAPI, [2]string{h.Name, h.APIAddr})
	}
	c.ok("create", "db", "--primary-region", "iad", "--ha", "2", "--replicas", "ams,syd", "--lease-ttl", "3s", "--wait")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, proxyURL(t, c, "db", byName["syd-1"], false))
	if err != nil {
		t.Fatalf("connect through syd-1's proxy: %v", err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE acks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	members := map[string]string{} // host -> member
	for _, m := range status(t, c, "db").Members {
		members[m.Host] = m.ID
	}

	t.Run("routing", func(t *testing.T) {
		primary := status(t, c, "db").Primary
		for _, h := range hosts {
			got, rec, err := servedBy(proxyURL(t, c, "db", h, false))
			if err != nil || got != primary || rec {
				t.Errorf("primary port on %s reached %q (in recovery %v, %v), want the primary %s", h.Name, got, rec, err, primary)
			}
		}
		// Reads stay on the host or in the region when a member is there.
		want := map[string]string{"iad-2": members["iad-2"], "ams-1": members["ams-1"], "syd-1": members["syd-1"], "iad-1": members["iad-2"]}
		for host, member := range want {
			labtest.WaitFor(t, 15*time.Second, "replica port of "+host+" reaching "+member, func() (bool, string) {
				got, rec, err := servedBy(proxyURL(t, c, "db", byName[host], true))
				return err == nil && got == member && rec, fmt.Sprintf("%q in recovery %v, %v", got, rec, err)
			})
		}
	})

	t.Run("lagging members are skipped", func(t *testing.T) {
		primary := status(t, c, "db").Primary
		var paused []*pgx.Conn
		defer func() {
			for _, p := range paused {
				p.Exec(ctx, "SELECT pg_wal_replay_resume()")
				p.Close(ctx)
			}
		}()
		for _, m := range status(t, c, "db").Members {
			if m.ID == primary {
				continue
			}
			p, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "db", "--member", m.ID)))
			if err != nil {
				t.Fatal(err)
			}
			paused = append(paused, p)
			if _, err := p.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
				t.Fatal(err)
			}
		}
		// More WAL than the default 16 MiB lag limit.
		w, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "db", "--member", primary)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Exec(ctx, "CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 200000) g"); err != nil {
			t.Fatal(err)
		}
		w.Close(ctx)
		labtest.WaitFor(t, 20*time.Second, "ams-1's replica port reaching the primary", func() (bool, string) {
			got, rec, err := servedBy(proxyURL(t, c, "db", byName["ams-1"], true))
			return err == nil && got == primary && !rec, fmt.Sprintf("%q in recovery %v, %v", got, rec, err)
		})
	})

	t.Run("switchover costs no transaction", func(t *testing.T) {
		labtest.WaitFor(t, 30*time.Second, "all members streaming", func() (bool, string) {
			v := status(t, c, "db")
			var s []string
			ok := true
			for _, m := range v.Members {
				s = append(s, m.ID+" "+string(m.State))
				ok = ok && (m.ID == v.Primary || (m.State == "streaming" && m.LagBytes == 0))
			}
			return ok, strings.Join(s, ", ")
		})
		old := status(t, c, "db").Primary
		w := startShortWriter(proxyURL(t, c, "db", byName["ams-1"], false))
		labtest.WaitFor(t, 10*time.Second, "writes through the proxy", func() (bool, string) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return len(w.acks) > 5, fmt.Sprintf("%d acks, failures %v", len(w.acks), w.fails)
		})
		out := c.ok("switchover", "db")
		newP := status(t, c, "db").Primary
		labtest.WaitFor(t, 20*time.Second, "writes on "+newP+" through the proxy", func() (bool, string) {
			w.mu.Lock()
			defer w.mu.Unlock()
			n := len(w.acks)
			return n > 0 && w.acks[n-1].member == newP, fmt.Sprintf("%d acks", n)
		})
		acks, fails, slowest := w.halt()
		t.Logf("%s; %d commits through ams-1's proxy, slowest %s", strings.TrimSpace(out), len(acks), slowest.Round(time.Millisecond))
		if len(fails) > 0 {
			t.Errorf("switchover from %s to %s failed %d transactions through the proxy: %v", old, newP, len(fails), fails)
		}
		checkOnePrimary(t, acks, old, newP)
		if lost := lostRows(t, c, "db", acks); len(lost) > 0 {
			t.Errorf("switchover lost %d acknowledged rows: %v", len(lost), lost)
		}
	})

	t.Run("lost primary host", func(t *testing.T) {
		// The former primary has rejoined: one fault at a time.
		waitAllStreaming(t, c, "db")
		old := status(t, c, "db").Primary
		var host string
		for h, m := range members {
			if m == old {
				host = h
			}
		}
		w := startShortWriter(proxyURL(t, c, "db", byName["syd-1"], false))
		c := c.without(host)
		start := time.Now()
		loseHost(t, dir, host, old)
		newP, took := waitNewPrimary(t, c, "db", old, 30*time.Second)
		labtest.WaitFor(t, 20*time.Second, "writes on "+newP+" through the proxy", func() (bool, string) {
			w.mu.Lock()
			defer w.mu.Unlock()
			n := len(w.acks)
			return n > 0 && w.acks[n-1].member == newP, fmt.Sprintf("%d acks", n)
		})
		acks, fails, _ := w.halt()
		var firstNew time.Time
		for _, a := range acks {
			if a.member == newP && a.at.After(start) {
				firstNew = a.at
				break
			}
		}
		t.Logf("host %s lost: %s primary after %s; first commit through syd-1's proxy after %s; %d failed attempts meanwhile",
			host, newP, took.Round(10*time.Millisecond), firstNew.Sub(start).Round(10*time.Millisecond), len(fails))
		checkOnePrimary(t, acks, old, newP)
		c.ok("dev", "up", "--dir", dir, "--net", netArg)
	})
}
