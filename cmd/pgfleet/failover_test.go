package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// ack is one commit a client saw acknowledged, and who acknowledged it.
type ack struct {
	id     int
	member string
	at     time.Time
}

// writer commits rows continuously, trying every member until one accepts
// the write, and records every acknowledged commit. It is what an
// application retrying on any member would see.
type writer struct {
	t       *testing.T
	urls    map[string]string // member id -> URL
	order   []string
	mu      sync.Mutex
	acks    []ack
	errs    int
	next    int
	stop    chan struct{}
	stopped chan struct{}
}

func startWriter(t *testing.T, c cli, cluster string, members []string) *writer {
	w := &writer{t: t, urls: map[string]string{}, order: members, stop: make(chan struct{}), stopped: make(chan struct{})}
	for _, m := range members {
		w.urls[m] = strings.TrimSpace(c.ok("url", cluster, "--member", m)) + "&connect_timeout=1"
	}
	go w.run()
	return w
}

func (w *writer) run() {
	defer close(w.stopped)
	ctx := context.Background()
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(ctx)
		}
	}()
	last := w.order[0]
	for {
		select {
		case <-w.stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		w.next++
		id := w.next
		tries := append([]string{last}, w.order...)
		for _, m := range tries {
			conn := conns[m]
			if conn == nil || conn.IsClosed() {
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				c, err := pgx.Connect(cctx, w.urls[m])
				cancel()
				if err != nil {
					continue
				}
				conns[m], conn = c, c
			}
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := conn.Exec(qctx, "INSERT INTO acks (id) VALUES ($1)", id)
			cancel()
			if err != nil {
				if !strings.Contains(err.Error(), "read-only") {
					conn.Close(ctx)
					delete(conns, m)
				}
				continue
			}
			w.mu.Lock()
			w.acks = append(w.acks, ack{id: id, member: m, at: time.Now()})
			w.mu.Unlock()
			last = m
			break
		}
	}
}

func (w *writer) halt() []ack {
	close(w.stop)
	<-w.stopped
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ack(nil), w.acks...)
}

// waitWritesOn waits until member acknowledged a commit after start.
func (w *writer) waitWritesOn(member string, start time.Time) {
	w.t.Helper()
	labtest.WaitFor(w.t, 10*time.Second, "writes on "+member, func() (bool, string) {
		for _, a := range w.since(start) {
			if a.member == member {
				return true, ""
			}
		}
		return false, "none yet"
	})
}

// since returns the acks after t.
func (w *writer) since(t time.Time) []ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []ack
	for _, a := range w.acks {
		if a.at.After(t) {
			out = append(out, a)
		}
	}
	return out
}

// checkOnePrimary fails if old acknowledged a commit after new acknowledged
// its first one: two writable primaries at once.
func checkOnePrimary(t *testing.T, acks []ack, old, new string) {
	t.Helper()
	var firstNew time.Time
	for _, a := range acks {
		if a.member == new && (firstNew.IsZero() || a.at.Before(firstNew)) {
			firstNew = a.at
		}
	}
	if firstNew.IsZero() {
		t.Fatalf("no commit was acknowledged by the new primary %s", new)
	}
	for _, a := range acks {
		if a.member == old && a.at.After(firstNew) {
			t.Fatalf("split brain: old primary %s acknowledged row %d at %s, after new primary %s's first commit at %s",
				old, a.id, a.at.Format("15:04:05.000"), new, firstNew.Format("15:04:05.000"))
		}
	}
}

// lostRows returns the acknowledged ids missing on the cluster's primary.
func lostRows(t *testing.T, c cli, cluster string, acks []ack) []int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", cluster)))
	if err != nil {
		t.Fatalf("connect to the primary: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id FROM acks")
	if err != nil {
		t.Fatal(err)
	}
	have := map[int]bool{}
	for rows.Next() {
		var id int
		rows.Scan(&id)
		have[id] = true
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	var lost []int
	for _, a := range acks {
		if !have[a.id] {
			lost = append(lost, a.id)
		}
	}
	return lost
}

func status(t *testing.T, c cli, cluster string) api.ClusterView {
	t.Helper()
	var v api.ClusterView
	args := []string{"status", cluster, "--json"}
	if c.apis != "" {
		args = append(args, "--api", c.apis)
	}
	out, _, code := c.run(args...)
	if code != 0 {
		return v
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	return v
}

// waitNewPrimary waits until a member other than old is a running primary.
func waitNewPrimary(t *testing.T, c cli, cluster, old string, timeout time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	var primary string
	labtest.WaitFor(t, timeout, "a new primary", func() (bool, string) {
		v := status(t, c, cluster)
		primary = v.Primary
		for _, m := range v.Members {
			if m.ID == v.Primary && m.ID != old && m.State == fleet.StateRunning {
				return true, ""
			}
		}
		return false, fmt.Sprintf("primary %q", v.Primary)
	})
	return primary, time.Since(start)
}

func waitAllStreaming(t *testing.T, c cli, cluster string) {
	t.Helper()
	labtest.WaitFor(t, 90*time.Second, "every member back and streaming", func() (bool, string) {
		v := status(t, c, cluster)
		var s []string
		ok := v.Primary != ""
		for _, m := range v.Members {
			s = append(s, fmt.Sprintf("%s %s %s", m.ID, m.Role, m.State))
			if m.ID != v.Primary && (m.State != fleet.StateStreaming || m.Role == fleet.RolePrimary) {
				ok = false
			}
		}
		return ok, strings.Join(s, ", ")
	})
}

func pidFile(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

// loseHost kills a dev-fleet host's agent and the postmaster of its member,
// as if the machine had died.
func loseHost(t *testing.T, dir, host, member string) {
	t.Helper()
	agentPid := pidFile(t, filepath.Join(dir, host+".pid"))
	pm := pidFile(t, filepath.Join(dir, host, "members", member, "pgdata", "postmaster.pid"))
	if err := syscall.Kill(agentPid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill agent %d: %v", agentPid, err)
	}
	// The postmaster may be gone already: it dies with its agent.
	if err := syscall.Kill(pm, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		t.Fatalf("kill postmaster %d: %v", pm, err)
	}
}

// staleTransaction opens a session on member, inserts a row in a
// transaction it leaves open, and stops (SIGSTOP) the session's backend.
func staleTransaction(t *testing.T, c cli, member string) (*pgx.Conn, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "db", "--member", member)))
	if err != nil {
		t.Fatalf("connect to %s: %v", member, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO acks (id) VALUES (-1)"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	return conn, pid
}

// TestFailover runs the faults of a primary's life on one cluster, each
// under a writer that records every acknowledged commit: a switchover, a
// crash of the primary's postmaster, its agent stopped (SIGSTOP) for longer
// than the lease, and the loss of its whole host, in sync mode and not. After each it checks
// that one primary at a time acknowledged writes, counts acknowledged rows
// lost, and waits for the old primary to rejoin as a standby.
func TestFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-host fleet through four faults")
	}
	c, dir, netArg := devFleetCLI(t, []string{"iad-1", "iad-2", "iad-3"})
	t.Cleanup(func() {
		if t.Failed() {
			out, _, _ := c.run("events", "db")
			t.Logf("events:\n%s", out)
		}
	})
	c.ok("dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad:3")
	var hosts []api.HostView
	if err := json.Unmarshal([]byte(c.ok("hosts", "--json")), &hosts); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		c.hostAPI = append(c.hostAPI, [2]string{h.Name, h.APIAddr})
	}
	const ttl = 4 * time.Second
	c.ok("create", "db", "--primary-region", "iad", "--ha", "3", "--lease-ttl", ttl.String(), "--wait")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "db")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE acks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	w := startWriter(t, c, "db", []string{"db-1", "db-2", "db-3"})
	defer func() {
		if w != nil {
			w.halt()
		}
	}()
	labtest.WaitFor(t, 10*time.Second, "writes acknowledged", func() (bool, string) {
		n := len(w.since(time.Time{}))
		return n > 10, fmt.Sprintf("%d acks", n)
	})

	hostOf := func(member string) string {
		for _, m := range status(t, c, "db").Members {
			if m.ID == member {
				return m.Host
			}
		}
		t.Fatalf("no member %s", member)
		return ""
	}

	t.Run("switchover", func(t *testing.T) {
		old := status(t, c, "db").Primary
		start := time.Now()
		out := c.ok("switchover", "db")
		newP := status(t, c, "db").Primary
		t.Logf("%s", strings.TrimSpace(out))
		// It returns once the old primary streams again: a failover
		// right after has a standby to go to.
		if !strings.Contains(out, old+" streams from "+newP+" as a standby") {
			t.Errorf("switchover printed %q; want it to say that %s streams from %s", out, old, newP)
		}
		w.waitWritesOn(newP, start)
		acks := w.since(time.Time{})
		checkOnePrimary(t, w.since(start), old, newP)
		if lost := lostRows(t, c, "db", acks); len(lost) > 0 {
			t.Fatalf("switchover lost %d acknowledged rows: %v", len(lost), lost)
		}
		waitAllStreaming(t, c, "db")
	})

	t.Run("postmaster crash hands over at once", func(t *testing.T) {
		old := status(t, c, "db").Primary
		pm := pidFile(t, filepath.Join(dir, hostOf(old), "members", old, "pgdata", "postmaster.pid"))
		start := time.Now()
		if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		newP, took := waitNewPrimary(t, c, "db", old, 30*time.Second)
		t.Logf("postmaster of %s killed: %s primary after %s", old, newP, took.Round(10*time.Millisecond))
		// Handed over, not expired: the old primary released the key when
		// its postgres died (how fast that is, bench/failover measures).
		labtest.WaitFor(t, 10*time.Second, "the crashed primary's release of the key", func() (bool, string) {
			out, _, _ := c.run("events", "db", "--limit", "20")
			return strings.Contains(out, old+": postgres exited") && strings.Contains(out, "leader key released"), out
		})
		w.waitWritesOn(newP, start)
		checkOnePrimary(t, w.since(start), old, newP)
		t.Logf("acknowledged rows lost (async): %d", len(lostRows(t, c, "db", w.since(time.Time{}))))
		waitAllStreaming(t, c, "db")
	})

	t.Run("stopped agent is fenced", func(t *testing.T) {
		old := status(t, c, "db").Primary
		agentPid := pidFile(t, filepath.Join(dir, hostOf(old)+".pid"))
		// A session on the old primary in the middle of a transaction,
		// whose backend is stopped too: it must never commit once another
		// member may have taken writes. A backend is in a session of its
		// own; only a fence that kills every process of postgres ends it.
		stale, backend := staleTransaction(t, c, old)
		c := c.without(hostOf(old)) // its API does not answer while stopped
		start := time.Now()
		if err := syscall.Kill(agentPid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		newP, took := waitNewPrimary(t, c, "db", old, 30*time.Second)
		t.Logf("agent of %s stopped: %s primary after %s", old, newP, took.Round(10*time.Millisecond))
		// Keep it stopped well past the new primary's start, then let it go.
		w.waitWritesOn(newP, start)
		syscall.Kill(backend, syscall.SIGCONT)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := stale.Exec(cctx, "COMMIT")
		cancel()
		if err == nil {
			t.Fatalf("a transaction on %s's stopped backend committed after %s took writes", old, newP)
		}
		time.Sleep(2 * time.Second) // the fault: the agent stays stopped a while longer
		if err := syscall.Kill(agentPid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		waitAllStreaming(t, c, "db")
		checkOnePrimary(t, w.since(start), old, newP)
		t.Logf("acknowledged rows lost (async): %d", len(lostRows(t, c, "db", w.since(time.Time{}))))
	})

	t.Run("sync mode loses no acknowledged commit", func(t *testing.T) {
		c.ok("set", "db", "--sync", "on")
		labtest.WaitFor(t, 30*time.Second, "both standbys in the sync set", func() (bool, string) {
			v := status(t, c, "db")
			return len(v.SyncStandbys) == 2, fmt.Sprintf("sync %s, standbys %v", v.Sync, v.SyncStandbys)
		})
		old := status(t, c, "db").Primary
		host := hostOf(old)
		start := time.Now()
		labtest.WaitFor(t, 30*time.Second, "50 commits in sync mode", func() (bool, string) {
			n := len(w.since(start))
			return n >= 50, fmt.Sprintf("%d commits", n)
		})
		c := c.without(host)
		kill := time.Now()
		loseHost(t, dir, host, old)
		newP, took := waitNewPrimary(t, c, "db", old, 30*time.Second)
		t.Logf("sync mode, host %s lost: %s primary after %s", host, newP, took.Round(10*time.Millisecond))
		w.waitWritesOn(newP, kill)
		phase := w.since(start)
		checkOnePrimary(t, phase, old, newP)
		if lost := lostRows(t, c, "db", phase); len(lost) > 0 {
			t.Fatalf("sync mode lost %d acknowledged rows: %v", len(lost), lost)
		}
		t.Logf("sync mode: all %d rows acknowledged during the phase are on %s", len(phase), newP)
		c.ok("dev", "up", "--dir", dir, "--net", netArg)
		waitAllStreaming(t, c, "db")
		c.ok("set", "db", "--sync", "off")
	})

	t.Run("host loss", func(t *testing.T) {
		old := status(t, c, "db").Primary
		host := hostOf(old)
		c := c.without(host)
		start := time.Now()
		loseHost(t, dir, host, old)
		newP, took := waitNewPrimary(t, c, "db", old, 30*time.Second)
		t.Logf("host %s lost: %s primary after %s", host, newP, took.Round(10*time.Millisecond))
		w.waitWritesOn(newP, start)
		c.ok("dev", "up", "--dir", dir, "--net", netArg)
		waitAllStreaming(t, c, "db")
		phase := w.since(start)
		acks := w.halt()
		w = nil
		checkOnePrimary(t, phase, old, newP)
		t.Logf("acknowledged rows lost (async): %d of %d", len(lostRows(t, c, "db", acks)), len(acks))
		for _, m := range status(t, c, "db").Members {
			if m.ID == old && m.Role != fleet.RoleStandby {
				t.Errorf("old primary %s came back as %s, want standby", old, m.Role)
			}
		}
	})

	t.Run("failover without a standby is refused", func(t *testing.T) {
		c.ok("create", "solo", "--primary-region", "iad", "--ha", "1", "--wait")
		c.fails(1, "no streaming standby", "failover", "solo")
		c.ok("destroy", "solo", "--yes")
	})

	out := c.ok("events", "db")
	for _, kind := range []string{"switchover", "crashed", "fenced", "elected", "promoted", "sync", "rewind"} {
		if !strings.Contains(out, " "+kind+" ") {
			t.Errorf("events lack a %q event:\n%s", kind, out)
		}
	}
}
