// Command failover measures pgfleet's failover on a local three-host fleet:
// host loss (kill -9 of the primary's agent and postmaster), postgres crash
// (kill -9 of the postmaster only) and switchover; for each, the time from
// the fault to the first committed INSERT on the new primary, with a client
// trying every 50 ms on every member, and the acknowledged rows lost. With
// -report it renders bench/results/failover.md from its own results and
// Patroni's (../shared/peers/patroni-failover.sh), measured in the same run.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab"
)

type sample struct {
	Old      string  `json:"old"`
	New      string  `json:"new"`
	Seconds  float64 `json:"seconds"`
	WriteGap float64 `json:"write_gap,omitempty"`
	Lost     int     `json:"lost"`
}

type result struct {
	TTL        int      `json:"ttl"`
	Sync       string   `json:"sync,omitempty"`
	HostLoss   []sample `json:"host_loss"`
	Crash      []sample `json:"crash"`
	Switchover []sample `json:"switchover"`
}

func main() {
	exe := flag.String("pgfleet", "bin/pgfleet", "pgfleet binary")
	dir := flag.String("dir", "bench/tmp/failover", "working directory")
	iters := flag.Int("iters", 10, "repetitions of each fault")
	ttl := flag.Int("ttl", 3, "leader lease TTL in seconds")
	out := flag.String("out", "", "write results as JSON here")
	sync := flag.String("sync", "off", "replication mode of the measured cluster; with on, only host loss is measured")
	report := flag.String("report", "", "render the markdown report from these comma-separated result files")
	peers := flag.String("peers", "bench/tmp/peers", "Patroni results directory")
	flag.Parse()
	var err error
	if *report != "" {
		err = render(strings.Split(*report, ","), *peers)
	} else {
		err = run(*exe, *dir, *iters, *ttl, *sync, *out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// ack is a commit the client saw acknowledged.
type ack struct {
	id     int
	member string
	at     time.Time
}

type client struct {
	urls  map[string]string
	mu    sync.Mutex
	acks  []ack
	stopc chan struct{}
	done  chan struct{}
}

// loop inserts a row every 50 ms into whichever member takes it.
func (c *client) loop() {
	defer close(c.done)
	ctx := context.Background()
	conns := map[string]*pgx.Conn{}
	ids := make([]string, 0, len(c.urls))
	for m := range c.urls {
		ids = append(ids, m)
	}
	sort.Strings(ids)
	for n := 1; ; n++ {
		select {
		case <-c.stopc:
			return
		case <-time.After(50 * time.Millisecond):
		}
		for _, m := range ids {
			conn := conns[m]
			if conn == nil || conn.IsClosed() {
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				cn, err := pgx.Connect(cctx, c.urls[m])
				cancel()
				if err != nil {
					continue
				}
				conns[m], conn = cn, cn
			}
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := conn.Exec(qctx, "INSERT INTO acks (id) VALUES ($1)", n)
			cancel()
			if err != nil {
				if !strings.Contains(err.Error(), "read-only") {
					conn.Close(ctx)
					delete(conns, m)
				}
				continue
			}
			c.mu.Lock()
			c.acks = append(c.acks, ack{n, m, time.Now()})
			c.mu.Unlock()
			break
		}
	}
}

// firstNew waits for the first ack after t0 from a member other than old.
func (c *client) firstNew(old string, t0 time.Time, timeout time.Duration) (ack, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, a := range c.acks {
			if a.at.After(t0) && a.member != old {
				c.mu.Unlock()
				return a, nil
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	return ack{}, fmt.Errorf("no commit on a new primary within %s", timeout)
}

func (c *client) lastBefore(member string, t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var last time.Time
	for _, a := range c.acks {
		if a.member == member && a.at.Before(t) && a.at.After(last) {
			last = a.at
		}
	}
	return last
}

// lost counts the commits acknowledged between from and to that the
// primary at primaryURL does not have.
func (c *client) lost(ctx context.Context, primaryURL string, from, to time.Time) (int, error) {
	conn, err := pgx.Connect(ctx, primaryURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id FROM acks")
	if err != nil {
		return 0, err
	}
	have := map[int]bool{}
	for rows.Next() {
		var id int
		rows.Scan(&id)
		have[id] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, a := range c.acks {
		if a.at.After(from) && a.at.Before(to) && !have[a.id] {
			n++
		}
	}
	return n, rows.Err()
}

func run(exe, dir string, iters, ttl int, sync, out string) (err error) {
	ctx := context.Background()
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	exeAbs, err := filepath.Abs(exe)
	if err != nil {
		return err
	}
	os.RemoveAll(abs)
	plan, err := lab.ParsePlan("iad:3", 201)
	if err != nil {
		return err
	}
	d := &lab.Dev{Exe: exeAbs, Dir: abs, Out: os.Stderr}
	// The fleet's logs stay when the run fails.
	defer func() { d.Down(err == nil) }()
	plan, token, err := d.Up(ctx, plan, true)
	if err != nil {
		return err
	}
	c, err := d.Client(plan, token)
	if err != nil {
		return err
	}
	ha := 3
	if _, err := c.Create(ctx, api.CreateRequest{Name: "bench", PrimaryRegion: "iad", HA: &ha, LeaseTTL: ttl, Sync: sync}); err != nil {
		return err
	}
	if err := healthy(ctx, c); err != nil {
		return err
	}
	u, err := c.URL(ctx, "bench", "")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, u.URL)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE acks (id int PRIMARY KEY)"); err != nil {
		return err
	}
	conn.Close(ctx)
	cl := &client{urls: map[string]string{}, stopc: make(chan struct{}), done: make(chan struct{})}
	for _, m := range []string{"bench-1", "bench-2", "bench-3"} {
		u, err := c.URL(ctx, "bench", m)
		if err != nil {
			return err
		}
		cl.urls[m] = u.URL + "&connect_timeout=1"
	}
	go cl.loop()
	defer func() { close(cl.stopc); <-cl.done }()

	res := result{TTL: ttl, Sync: sync}
	faults := []string{"host-loss", "crash", "switchover"}
	if sync != "off" {
		faults = []string{"host-loss"}
	}
	prevFault := time.Time{}
	hostOf := func(v api.ClusterView, id string) string {
		for _, m := range v.Members {
			if m.ID == id {
				return m.Host
			}
		}
		return ""
	}
	pid := func(path string) int {
		b, _ := os.ReadFile(path)
		n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
		return n
	}
	for i := 0; i < iters; i++ {
		for _, fault := range faults {
			if err := healthy(ctx, c); err != nil {
				return err
			}
			time.Sleep(time.Duration(500+rand.IntN(1000)) * time.Millisecond) // random phase to the lease renewals
			v, err := c.Cluster(ctx, "bench")
			if err != nil {
				return err
			}
			old, host := v.Primary, hostOf(v, v.Primary)
			pm := pid(filepath.Join(abs, host, "members", old, "pgdata", "postmaster.pid"))
			t0 := time.Now()
			switch fault {
			case "host-loss":
				syscall.Kill(pid(filepath.Join(abs, host+".pid")), syscall.SIGKILL)
				syscall.Kill(pm, syscall.SIGKILL)
			case "crash":
				syscall.Kill(pm, syscall.SIGKILL)
			case "switchover":
				// A member that rejoined after the previous fault may still be
				// settling; the API refuses until a standby streams.
				for try := 0; ; try++ {
					_, err := c.Switchover(ctx, "bench", "")
					var ae *api.APIError
					if err == nil {
						break
					} else if !errors.As(err, &ae) || ae.Status != 422 || try == 100 {
						return err
					}
					time.Sleep(100 * time.Millisecond)
					t0 = time.Now()
				}
			}
			first, err := cl.firstNew(old, t0, 60*time.Second)
			if err != nil {
				return fmt.Errorf("%s %d: %w", fault, i, err)
			}
			s := sample{Old: old, New: first.member, Seconds: first.at.Sub(t0).Seconds()}
			if fault == "switchover" {
				s.WriteGap = first.at.Sub(cl.lastBefore(old, first.at)).Seconds()
			}
			if fault == "host-loss" {
				if _, _, err := d.Up(ctx, plan, false); err != nil {
					return err
				}
			}
			pu, err := c.URL(ctx, "bench", first.member)
			if err != nil {
				return err
			}
			// Commits acknowledged since the previous fault, by the primary
			// of that time, that the new primary lacks.
			if s.Lost, err = cl.lost(ctx, pu.URL, prevFault, t0); err != nil {
				return err
			}
			prevFault = t0
			fmt.Fprintf(os.Stderr, "ttl %ds sync %s %-10s %d: %s -> %s in %.3fs (gap %.3fs, lost %d)\n", ttl, sync, fault, i, s.Old, s.New, s.Seconds, s.WriteGap, s.Lost)
			switch fault {
			case "host-loss":
				res.HostLoss = append(res.HostLoss, s)
			case "crash":
				res.Crash = append(res.Crash, s)
			default:
				res.Switchover = append(res.Switchover, s)
			}
		}
	}
	b, _ := json.MarshalIndent(res, "", " ")
	if out == "" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(out, b, 0o644)
}

// healthy waits until the cluster has had a running primary and two
// streaming standbys with no lag for two seconds.
func healthy(ctx context.Context, c *api.Client) error {
	deadline := time.Now().Add(3 * time.Minute)
	last := ""
	var since time.Time
	for time.Now().Before(deadline) {
		v, err := c.Cluster(ctx, "bench")
		if err == nil {
			ok := v.Primary != ""
			var s []string
			for _, m := range v.Members {
				s = append(s, fmt.Sprintf("%s %s %s", m.ID, m.Role, m.State))
				if !m.Healthy || (m.Role != fleet.RolePrimary && m.LagBytes != 0) {
					ok = false
				}
			}
			switch {
			case !ok:
				since = time.Time{}
			case since.IsZero():
				since = time.Now()
			case time.Since(since) >= 2*time.Second:
				return nil
			}
			last = strings.Join(s, ", ")
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("cluster not healthy after 3 minutes: %s", last)
}
