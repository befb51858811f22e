package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab"
)

// Config says what a run does to which fleet.
type Config struct {
	Dev     *lab.Dev        // the fleet, already up
	Plan    lab.Plan        // its hosts (with their namespace addresses)
	Net     *lab.Namespaces // nil: no partitions
	Client  *api.Client
	Cluster string // created by the run
	Sync    bool
	Seed    uint64
	Faults  int
	// Settle bounds how long a fault may take to settle after its heal
	// (default 60 s); Hold the longest a fault is held before it is healed
	// (default 8 s).
	Settle, Hold time.Duration
	Log          *slog.Logger
}

// Kinds are the faults the nemesis injects. Partitions need Config.Net.
var Kinds = []string{
	"kill-postmaster", "kill-agent", "host-loss", "stop-agent", "stop-postmaster",
	"stop-both", "partition", "switchover", "failover", "switchover-then-loss",
}

// insertSQL inserts one id and says who took it on which timeline: the WAL
// file name of the insert position starts with the timeline, in hex.
const insertSQL = `INSERT INTO chaos (id) VALUES ($1)
	RETURNING current_setting('cluster_name'), pg_walfile_name(pg_current_wal_insert_lsn())`

type runner struct {
	cfg  Config
	rng  *rand.Rand
	next atomic.Int64

	mu      sync.Mutex
	ops     []Op
	lastApp time.Time // newest acknowledged write through a proxy or the URL
	faults  []Fault
}

// Run creates the cluster, starts the writers, injects cfg.Faults faults one
// after another (now and then two at once), heals each and waits for the
// cluster to settle, then reads what every member holds. An error means the
// run itself could not go on (the cluster could not be created); Check
// decides whether a promise was broken.
func Run(ctx context.Context, cfg Config) (History, error) {
	if cfg.Settle == 0 {
		cfg.Settle = 60 * time.Second
	}
	if cfg.Hold == 0 {
		cfg.Hold = 8 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	r := &runner{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	if err := r.create(ctx); err != nil {
		return History{}, err
	}
	writers, err := r.writers(ctx)
	if err != nil {
		return History{}, err
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, w := range writers {
		wg.Go(func() { r.write(wctx, w) })
	}
	for i := range cfg.Faults {
		if ctx.Err() != nil {
			break
		}
		r.round(ctx, i)
	}
	stop()
	wg.Wait()
	h := History{Sync: cfg.Sync, Faults: r.faults}
	h.Ops = r.ops
	h.Final, h.Divergent = r.finish(ctx)
	if err := ctx.Err(); err != nil {
		// Cut short: the final reads did not happen, and a report would
		// count every acknowledged id as lost.
		return h, fmt.Errorf("fault suite interrupted: %w", err)
	}
	return h, nil
}

func (r *runner) create(ctx context.Context) error {
	region := r.cfg.Plan.Hosts[0].Region
	ha := 0
	for _, h := range r.cfg.Plan.Hosts {
		if h.Region == region {
			ha++
		}
	}
	sync := fleet.SyncOff
	if r.cfg.Sync {
		sync = fleet.SyncOn
	}
	req := api.CreateRequest{Name: r.cfg.Cluster, PrimaryRegion: region, HA: &ha, LeaseTTL: 3, Sync: sync}
	if _, err := r.cfg.Client.Create(ctx, req); err != nil {
		return fmt.Errorf("create %s: %w", r.cfg.Cluster, err)
	}
	if _, ok := r.waitSettled(ctx, time.Time{}, 3*time.Minute); !ok {
		return fmt.Errorf("cluster %s not ready in 3m", r.cfg.Cluster)
	}
	u, err := r.cfg.Client.ClusterURL(ctx, r.cfg.Cluster, api.URLOptions{})
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, u.URL)
	if err != nil {
		return fmt.Errorf("connect to create the table: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CREATE TABLE chaos (id bigint PRIMARY KEY)")
	return err
}

type writer struct {
	name  string
	url   string
	every time.Duration
}

// writers are the paths an application writes by: every host's proxy, the
// multi-host URL, and each member directly. The direct writers are what
// makes a leaking fence visible: they write to an old primary whatever the
// proxies think.
func (r *runner) writers(ctx context.Context) ([]writer, error) {
	def, err := r.cfg.Client.ClusterURL(ctx, r.cfg.Cluster, api.URLOptions{})
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(def.URL)
	if err != nil {
		return nil, fmt.Errorf("parse the cluster URL: %w", err)
	}
	v, err := r.cfg.Client.Cluster(ctx, r.cfg.Cluster)
	if err != nil {
		return nil, err
	}
	ws := []writer{{name: "url", url: withTimeout(def.URL), every: 20 * time.Millisecond}}
	for _, h := range r.cfg.Plan.Hosts {
		addr := net.JoinHostPort(h.Addr, strconv.Itoa(v.PrimaryProxyPort))
		pu := *u
		pu.Host = addr
		ws = append(ws, writer{name: "proxy:" + h.Name, url: withTimeout(pu.String()), every: 20 * time.Millisecond})
	}
	for _, m := range v.Members {
		mu, err := r.cfg.Client.URL(ctx, r.cfg.Cluster, m.ID)
		if err != nil {
			return nil, err
		}
		ws = append(ws, writer{name: "direct:" + m.ID, url: withTimeout(mu.URL), every: 50 * time.Millisecond})
	}
	return ws, nil
}

func withTimeout(u string) string {
	if strings.Contains(u, "?") {
		return u + "&connect_timeout=2"
	}
	return u + "?connect_timeout=2"
}

// write inserts ids through w until ctx ends, recording each outcome.
func (r *runner) write(ctx context.Context, w writer) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			c, err := pgx.Connect(cctx, w.url)
			cancel()
			if err != nil {
				sleep(ctx, w.every)
				continue
			}
			conn = c
		}
		op := Op{ID: r.next.Add(1), Client: w.name, Start: time.Now()}
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		var member, walfile string
		err := conn.QueryRow(qctx, insertSQL, op.ID).Scan(&member, &walfile)
		cancel()
		op.End = time.Now()
		switch {
		case err == nil:
			op.Outcome, op.Member = Acked, member
			op.Timeline, _ = strconv.ParseInt(walfile[:min(8, len(walfile))], 16, 64)
		case refused(err):
			op.Outcome = Failed
		default:
			op.Outcome = Unknown
			conn.Close(context.Background())
			conn = nil
		}
		r.record(op)
		sleep(ctx, w.every)
	}
}

// refused reports whether err is the server's refusal of the statement
// (an ERROR reply): then nothing was committed. A FATAL or a broken
// connection leaves the commit unknown.
func refused(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Severity == "ERROR"
}

func (r *runner) record(op Op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	if op.Outcome == Acked && !strings.HasPrefix(op.Client, "direct:") && op.End.After(r.lastApp) {
		r.lastApp = op.End
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// injected is a fault in place, with what undoes it.
type injected struct {
	Fault
	hostOf string // the host it hit
	heal   func() error
}

// round injects one fault, or two overlapping ones, holds them, heals them
// and waits for the cluster to settle.
func (r *runner) round(ctx context.Context, i int) {
	v, err := r.cfg.Client.Cluster(ctx, r.cfg.Cluster)
	if err != nil {
		r.cfg.Log.Warn("read the cluster before a fault", "err", err)
		sleep(ctx, time.Second)
		return
	}
	kinds := slices.Clone(Kinds)
	if r.cfg.Net == nil {
		kinds = slices.DeleteFunc(kinds, func(k string) bool { return k == "partition" })
	}
	first := r.inject(ctx, v, kinds[r.rng.IntN(len(kinds))], "")
	all := []injected{first}
	if r.rng.IntN(4) == 0 {
		// An overlapping second fault on another host, a moment later.
		sleep(ctx, time.Duration(r.rng.IntN(2000))*time.Millisecond)
		second := []string{"kill-postmaster", "stop-agent", "kill-agent", "switchover", "failover"}
		if r.cfg.Net != nil {
			second = append(second, "partition")
		}
		all = append(all, r.inject(ctx, v, second[r.rng.IntN(len(second))], first.hostOf))
	}
	hold := time.Duration(1000+r.rng.IntN(int(r.cfg.Hold/time.Millisecond))) * time.Millisecond
	sleep(ctx, hold)
	healed := time.Now()
	for j := range all {
		if all[j].heal != nil {
			if err := all[j].heal(); err != nil {
				r.cfg.Log.Warn("heal", "fault", all[j].Kind, "target", all[j].Target, "err", err)
			}
		}
		all[j].Healed = healed
	}
	settled, ok := r.waitSettled(ctx, healed, r.cfg.Settle)
	for _, f := range all {
		if ok {
			f.Settled = settled
		}
		if ok {
			r.cfg.Log.Info("fault", "n", i+1, "kind", f.Kind, "target", f.Target, "settled_after_heal", settled.Sub(healed).Round(10*time.Millisecond))
		} else {
			r.cfg.Log.Warn("fault did not settle", "n", i+1, "kind", f.Kind, "target", f.Target, "bound", r.cfg.Settle)
		}
		r.mu.Lock()
		r.faults = append(r.faults, f.Fault)
		r.mu.Unlock()
	}
	if !ok {
		// Give it one more bound before the next fault piles on.
		r.waitSettled(ctx, healed, r.cfg.Settle)
	}
	sleep(ctx, time.Duration(500+r.rng.IntN(1500))*time.Millisecond)
}

// inject starts one fault of kind on a member of v: its primary more often
// than not, never on the host avoid (an overlapping fault's).
func (r *runner) inject(ctx context.Context, v api.ClusterView, kind, avoid string) injected {
	var target api.MemberView
	var others []api.MemberView
	for _, m := range v.Members {
		if m.Host == avoid {
			continue
		}
		if m.ID == v.Primary && r.rng.IntN(10) < 6 {
			target = m
		}
		others = append(others, m)
	}
	if target.ID == "" && len(others) > 0 {
		target = others[r.rng.IntN(len(others))]
	}
	h := r.host(target.Host)
	f := injected{Fault: Fault{Kind: kind, Target: target.ID + "@" + target.Host, Start: time.Now()}}
	f.hostOf = target.Host
	d := r.cfg.Dev
	agent, pm := d.AgentPid(h), d.PostmasterPid(h, target.ID)
	signal := func(pid int, sig syscall.Signal) {
		if pid > 0 {
			syscall.Kill(pid, sig)
		}
	}
	restart := func() error { _, _, err := d.Up(ctx, r.cfg.Plan, false); return err }
	switch kind {
	case "kill-postmaster":
		signal(pm, syscall.SIGKILL)
	case "kill-agent":
		signal(agent, syscall.SIGKILL)
		f.heal = restart
	case "host-loss":
		signal(agent, syscall.SIGKILL)
		signal(pm, syscall.SIGKILL)
		f.heal = restart
	case "stop-agent":
		signal(agent, syscall.SIGSTOP)
		f.heal = func() error { signal(agent, syscall.SIGCONT); return nil }
	case "stop-postmaster":
		signal(pm, syscall.SIGSTOP)
		f.heal = func() error { signal(pm, syscall.SIGCONT); return nil }
	case "stop-both":
		signal(agent, syscall.SIGSTOP)
		signal(pm, syscall.SIGSTOP)
		f.heal = func() error { signal(pm, syscall.SIGCONT); signal(agent, syscall.SIGCONT); return nil }
	case "partition":
		if err := r.cfg.Net.Cut(h.Name); err != nil {
			r.cfg.Log.Warn("cut", "host", h.Name, "err", err)
		}
		f.heal = func() error { return r.cfg.Net.Heal(h.Name) }
	case "switchover":
		f.Target = v.Primary
		if _, err := r.cfg.Client.Switchover(ctx, r.cfg.Cluster, ""); err != nil {
			r.cfg.Log.Info("switchover refused", "err", err)
		}
	case "switchover-then-loss":
		// The new primary's host is lost the moment it takes over, before
		// the old primary has streamed anything of the new timeline.
		sw, err := r.cfg.Client.Switchover(ctx, r.cfg.Cluster, "")
		if err != nil {
			r.cfg.Log.Info("switchover refused", "err", err)
			break
		}
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if nv, err := r.cfg.Client.Cluster(ctx, r.cfg.Cluster); err == nil && nv.Primary == sw.To {
				break
			}
			sleep(ctx, 20*time.Millisecond)
		}
		for _, m := range v.Members {
			if m.ID == sw.To {
				nh := r.host(m.Host)
				f.Target, f.hostOf = m.ID+"@"+m.Host, m.Host
				signal(d.AgentPid(nh), syscall.SIGKILL)
				signal(d.PostmasterPid(nh, m.ID), syscall.SIGKILL)
				f.heal = restart
			}
		}
	case "failover":
		f.Target = v.Primary
		if err := r.cfg.Client.Failover(ctx, r.cfg.Cluster); err != nil {
			r.cfg.Log.Info("failover refused", "err", err)
		}
	}
	return f
}

func (r *runner) host(name string) lab.HostPlan {
	for _, h := range r.cfg.Plan.Hosts {
		if h.Name == name {
			return h
		}
	}
	return lab.HostPlan{Name: name}
}

// waitSettled waits until the cluster has a running primary, every other
// member streams, and a write through a proxy or the URL was acknowledged
// after since; it returns when that was first seen.
func (r *runner) waitSettled(ctx context.Context, since time.Time, bound time.Duration) (time.Time, bool) {
	deadline := time.Now().Add(bound)
	last := ""
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ok, why := r.settled(ctx)
		if ok && !since.IsZero() {
			r.mu.Lock()
			wrote := r.lastApp.After(since)
			r.mu.Unlock()
			if !wrote {
				ok, why = false, "no write acknowledged since the heal"
			}
		}
		if ok {
			return time.Now(), true
		}
		if why != last {
			r.cfg.Log.Debug("not settled", "why", why)
			last = why
		}
		sleep(ctx, 250*time.Millisecond)
	}
	r.cfg.Log.Warn("did not settle", "bound", bound, "last", last)
	return time.Time{}, false
}

func (r *runner) settled(ctx context.Context) (bool, string) {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := r.cfg.Client.Cluster(qctx, r.cfg.Cluster)
	if err != nil {
		return false, err.Error()
	}
	var s []string
	ok := v.Primary != ""
	for _, m := range v.Members {
		s = append(s, fmt.Sprintf("%s %s %s", m.ID, m.Role, m.State))
		if m.ID == v.Primary {
			ok = ok && m.State == fleet.StateRunning
		} else {
			ok = ok && m.State == fleet.StateStreaming && m.Role != fleet.RolePrimary
		}
	}
	return ok, "primary " + v.Primary + ": " + strings.Join(s, ", ")
}

// finish waits for the cluster to settle, reads the ids on the primary,
// and checks that every other member holds the same ones.
func (r *runner) finish(ctx context.Context) (map[int64]bool, []string) {
	var divergent []string
	if _, ok := r.waitSettled(ctx, time.Time{}, 2*r.cfg.Settle); !ok {
		_, why := r.settled(ctx)
		divergent = append(divergent, "after the last heal the cluster did not settle: "+why)
	}
	v, err := r.cfg.Client.Cluster(ctx, r.cfg.Cluster)
	if err != nil {
		return nil, append(divergent, "read the cluster: "+err.Error())
	}
	final, err := r.ids(ctx, v.Primary)
	if err != nil {
		return nil, append(divergent, fmt.Sprintf("read the primary %s: %v", v.Primary, err))
	}
	for _, m := range v.Members {
		if m.ID == v.Primary {
			continue
		}
		var have map[int64]bool
		deadline := time.Now().Add(30 * time.Second)
		for {
			have, err = r.ids(ctx, m.ID)
			if err == nil && len(have) == len(final) || time.Now().After(deadline) {
				break
			}
			sleep(ctx, 500*time.Millisecond)
		}
		if err != nil {
			divergent = append(divergent, fmt.Sprintf("read %s: %v", m.ID, err))
			continue
		}
		missing, extra := 0, 0
		for id := range final {
			if !have[id] {
				missing++
			}
		}
		for id := range have {
			if !final[id] {
				extra++
			}
		}
		if missing > 0 || extra > 0 {
			divergent = append(divergent, fmt.Sprintf("%s lacks %d of the primary's %d rows and has %d it lacks", m.ID, missing, len(final), extra))
		}
	}
	return final, divergent
}

func (r *runner) ids(ctx context.Context, member string) (map[int64]bool, error) {
	u, err := r.cfg.Client.URL(ctx, r.cfg.Cluster, member)
	if err != nil {
		return nil, err
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(qctx, u.URL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(qctx, "SELECT id FROM chaos")
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	out := make(map[int64]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}
