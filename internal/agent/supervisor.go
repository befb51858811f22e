package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// errRemoved is the cancel cause that tells a supervisor its cluster was
// destroyed (a tombstone says so), so its data goes too.
var errRemoved = errors.New("cluster destroyed")

// errVanished is the cancel cause for a member missing from the store with
// no record of a destroy: the supervisor stops and keeps the data.
var errVanished = errors.New("member missing from the store, with no record of its cluster's destroy")

// errSteppedDown ends a primary's term without a failure: a switchover or
// `pgfleet failover` asked it to hand over.
var errSteppedDown = errors.New("stepped down")

// Loop periods.
const (
	primaryTick = 250 * time.Millisecond // a primary checks for step-down and switchover requests
	standbyTick = 200 * time.Millisecond // a standby checks the leader key and runs elections
	// switchoverTick is how often a switchover's target checks.
	switchoverTick = 25 * time.Millisecond
	// divergedAfter is how long a standby may fail to stream from a running
	// primary before it is taken to have another history and rejoins.
	divergedAfter = 10 * time.Second
)

// supervisor runs one member: it creates or clones its data, runs postgres as
// a child, publishes its status every second, runs in elections, and while
// it is the primary holds the leader key, fences itself when it cannot, and
// keeps the other members' replication slots.
type supervisor struct {
	spec    fleet.MemberSpec
	cluster fleet.ClusterSpec
	host    fleet.Host
	store   *store.Store
	lease   func() *store.Lease // the host's current lease
	dir     string              // member directory, owned by the postgres OS user
	inst    *postgres.Instance
	log     *slog.Logger
	secrets fleet.Secrets

	publishNow chan struct{}   // wakes the status publisher
	exe        string          // this pgfleet binary, for archive_command and restore_command
	osUser     postgres.OSUser // runs postgres, wal-push and wal-fetch

	backingUp      atomic.Bool // a base backup of this member runs
	checkingBackup atomic.Bool // the primary's backup schedule check runs
	archiveFailing bool        // the last check found archiving failing

	mu       sync.Mutex
	state    fleet.State
	role     fleet.Role
	message  string
	progress string

	// Two connections: a status query must not wait behind (or hang with)
	// the control loop's work, and pgx connections are not safe for
	// concurrent use.
	ctl, pub pgConn
	stopping atomic.Bool // set once postgres is being stopped: no new queries
	diverged atomic.Bool // streaming from the leader failed for long: rejoin
	// primaryLSN is the leader's last published write LSN, as the standby
	// loop last read it; the status publisher measures lag against it
	// rather than read the cluster again.
	primaryLSN atomic.Uint64
	events     int // events written, to trim the history now and then

	hold    *leaderHold // while this member holds the leader key
	leading atomic.Bool // hold != nil, readable by the agent
	// syncApplied is the synchronous_standby_names list this primary runs
	// with; syncFrom is the WAL position from which every commit waits for
	// one of them.
	syncApplied []string
	syncFrom    postgres.LSN
	// lastStreamed is when each standby was last seen streaming, this term.
	lastStreamed map[string]time.Time
	// rewindFailures and startFailures count consecutive failures of
	// pg_rewind and of starts as a standby (see rewindTries, startTries).
	rewindFailures, startFailures int
	// candidacies dates the election's candidacies by this host's clock.
	candidacies ha.CandidacyClock
	// abstainUntil keeps a primary that was told to step down out of the
	// election its step-down starts; otherwise, holding the most WAL, it
	// would win it again.
	abstainUntil time.Time
}

func (s *supervisor) set(state fleet.State, role fleet.Role, msg string) {
	s.mu.Lock()
	changed := s.state != state || (role != "" && s.role != role)
	s.state, s.message, s.progress = state, msg, ""
	if role != "" {
		s.role = role
	}
	s.mu.Unlock()
	if changed {
		// A new role or state is published at once: the routing proxies
		// wait for a promoted member to say it runs before sending it
		// writes.
		select {
		case s.publishNow <- struct{}{}:
		default:
		}
	}
}

// eventRetry is how long an event that could not be recorded is retried.
const eventRetry = 30 * time.Second

// event logs what happened and records it in the store in the
// background: recording must not slow a failover down, and the event's key
// carries its time, so the history stays in order.
func (s *supervisor) event(ctx context.Context, kind, msg string) {
	s.log.Info(msg, "event", kind)
	ev := fleet.Event{Time: time.Now().UTC(), Cluster: s.spec.Cluster, Member: s.spec.ID, Host: s.host.Name, Kind: kind, Message: msg}
	// A member stuck in a failure loop writes an event per retry; trimming
	// now and then keeps the history bounded even when no primary runs.
	s.events++
	trim := s.events%50 == 0
	ctx = context.WithoutCancel(ctx)
	go func() {
		// The store may be briefly out of reach (this host's etcd member
		// catching up after the agent was stopped, an election): the event
		// is retried for a while rather than lost; its key keeps its time.
		deadline := time.Now().Add(eventRetry)
		for {
			err := s.store.AppendEvent(ctx, ev)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				s.log.Warn("record event", "err", err)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if trim {
			if err := s.store.TrimEvents(ctx, s.spec.Cluster); err != nil {
				s.log.Warn("trim events", "err", err)
			}
		}
	}()
}

func (s *supervisor) pgdata() string { return filepath.Join(s.dir, "pgdata") }

func (s *supervisor) addr() string {
	return net.JoinHostPort(s.host.Addr, strconv.Itoa(s.spec.Port))
}

func (s *supervisor) superuser() postgres.ConnInfo {
	return postgres.ConnInfo{Host: s.host.Addr, Port: s.spec.Port, User: fleet.Superuser, Password: s.secrets.SuperuserPassword, Database: "postgres"}
}

// run supervises the member until ctx ends. When ctx's cause is errRemoved
// the member's data is deleted after postgres stops.
func (s *supervisor) run(ctx context.Context) {
	pubCtx, stopPub := context.WithCancel(context.Background())
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); s.publishLoop(pubCtx) }()

	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := s.converge(ctx)
		if ctx.Err() != nil {
			break
		}
		// Whatever ended the term, postgres does not keep running half set
		// up, and a primary never runs without the key.
		s.stopPostgres()
		s.releaseLeader()
		if errors.Is(err, errSteppedDown) {
			backoff = time.Second
			continue
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		s.set(fleet.StateFailed, "", err.Error())
		s.event(ctx, "failed", fmt.Sprintf("%s: %v; retrying in %s", s.spec.ID, err, backoff))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 15*time.Second)
	}

	s.stopPostgres()
	s.releaseLeader()
	stopPub()
	<-pubDone
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errRemoved):
		if err := os.RemoveAll(s.dir); err != nil {
			s.log.Error("remove member data", "dir", s.dir, "err", err)
		} else {
			s.log.Info("cluster destroyed; member data deleted", "dir", s.dir)
		}
	case errors.Is(cause, errVanished):
		// The event is recorded only if the cluster itself still exists.
		s.log.Error("member missing from the store: postgres stopped, data kept", "dir", s.dir)
		s.event(context.Background(), "vanished", fmt.Sprintf("%s: its placement is missing from the store but its cluster was not destroyed; postgres stopped on %s, data kept in %s", s.spec.ID, s.host.Name, s.dir))
	default:
		s.set(fleet.StateStopped, "", "agent stopped")
		s.publish(context.Background())
	}
}

// stopPostgres stops postgres with a fast shutdown: clients are
// disconnected and their transactions rolled back.
func (s *supervisor) stopPostgres() {
	s.stopping.Store(true)
	defer s.stopping.Store(false)
	s.ctl.close()
	s.pub.close()
	if s.inst.Pid() != 0 {
		if err := s.inst.StopFast(30 * time.Second); err != nil {
			s.log.Warn("stop postgres", "err", err)
		}
	}
}

// fence kills every process of postgres at once, so that no transaction
// commits after it returns, and records why. The leader hold has usually
// done the killing already (it does not wait for this loop); fencing twice
// is harmless.
func (s *supervisor) fence(ctx context.Context, why string) {
	s.stopping.Store(true)
	defer s.stopping.Store(false)
	if err := s.inst.Fence(); err != nil {
		s.log.Error("fence", "err", err)
	}
	s.ctl.close()
	s.pub.close()
	s.event(ctx, "fenced", fmt.Sprintf("%s fenced: %s; every process of postgres killed", s.spec.ID, why))
}

func (s *supervisor) setHold(h *leaderHold) {
	s.hold = h
	s.leading.Store(h != nil)
}

func (s *supervisor) releaseLeader() {
	if s.hold != nil {
		s.hold.release()
		s.setHold(nil)
	}
}

// observe gathers what ha.Next needs.
func (s *supervisor) observe(ctx context.Context) (ha.Observation, store.ClusterState, error) {
	c, err := s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil {
		return ha.Observation{}, c, err
	}
	o := ha.Observation{
		Self: s.spec, Initialized: s.inst.Initialized(), Leader: c.Leader,
		ClusterInitialized: c.Initialized, Diverged: s.diverged.Load(),
	}
	if o.Initialized {
		_, err := os.Stat(filepath.Join(s.pgdata(), "standby.signal"))
		o.WasPrimary = errors.Is(err, os.ErrNotExist)
	}
	if st, ok := c.Status[c.Leader]; ok && st.Role == fleet.RolePrimary && st.State == fleet.StateRunning {
		o.LeaderReady = true
	}
	return o, c, nil
}

// converge brings the member up and returns only when its postgres has
// exited, its term as primary ended, or a step failed; run retries it.
func (s *supervisor) converge(ctx context.Context) error {
	if err := s.writeKey(); err != nil {
		return err
	}
	for {
		o, c, err := s.observe(ctx)
		if err != nil {
			return err
		}
		if s.cluster.Restore != nil && !c.Initialized && o.Initialized && c.Leader == "" {
			// A restore that was cut off (the agent died): its data is
			// half-recovered, so the restore starts over.
			s.event(ctx, "restore", s.spec.ID+": discarding an interrupted restore; starting it over")
			if err := os.RemoveAll(s.pgdata()); err != nil {
				return fmt.Errorf("remove an interrupted restore: %w", err)
			}
			continue
		}
		act, why := ha.Next(o)
		switch act {
		case ha.Wait:
			s.set(fleet.StateWaiting, "", why)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(300 * time.Millisecond):
			}
			continue
		case ha.Rejoin:
			if err := s.rejoin(ctx, c, why); err != nil {
				return err
			}
			continue
		case ha.Bootstrap:
			if s.cluster.Restore != nil {
				return s.restore(ctx)
			}
			s.event(ctx, "initdb", why)
			s.set(fleet.StateInitializing, fleet.RolePrimary, why)
			if err := s.inst.InitDB(ctx, s.secrets.SuperuserPassword); err != nil {
				return fmt.Errorf("initdb: %w", err)
			}
			return s.runPrimary(ctx, true)
		case ha.StartPrimary:
			return s.runPrimary(ctx, false)
		case ha.Clone:
			if err := s.clone(ctx, c, why); err != nil {
				return err
			}
			return s.runStandby(ctx)
		case ha.StartStandby:
			return s.runStandby(ctx)
		}
		return fmt.Errorf("unknown action %q", act)
	}
}

func (s *supervisor) clone(ctx context.Context, c store.ClusterState, why string) error {
	leader, _ := c.Member(c.Leader)
	src, err := s.replicationSource(ctx, leader)
	if err != nil {
		return err
	}
	s.event(ctx, "clone", fmt.Sprintf("cloning %s from %s (%s)", s.spec.ID, leader.ID, net.JoinHostPort(src.Host, strconv.Itoa(src.Port))))
	s.set(fleet.StateCloning, s.standbyRole(), why)
	start := time.Now()
	err = s.inst.BaseBackup(ctx, src, postgres.SlotName(s.spec.ID), func(done, total int64) {
		s.mu.Lock()
		if total > 0 {
			s.progress = fmt.Sprintf("%d%% of %d MB", done*100/total, total>>20)
		}
		s.mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("clone from %s: %w", leader.ID, err)
	}
	s.event(ctx, "cloned", fmt.Sprintf("cloned %s from %s in %s", s.spec.ID, leader.ID, time.Since(start).Round(time.Millisecond)))
	return nil
}

// rejoin makes data whose history left the leader's follow it again: with
// pg_rewind when it can, else by removing it so that the member is cloned
// afresh.
func (s *supervisor) rejoin(ctx context.Context, c store.ClusterState, why string) error {
	leader, _ := c.Member(c.Leader)
	h, err := s.store.Host(ctx, leader.Host)
	if err != nil {
		return fmt.Errorf("find primary %s's host: %w", leader.ID, err)
	}
	src := postgres.ConnInfo{Host: h.Addr, Port: leader.Port, User: fleet.Superuser, Password: s.secrets.SuperuserPassword, Database: "postgres"}
	s.set(fleet.StateRejoining, s.standbyRole(), why)
	start := time.Now()
	if err := s.inst.Rewind(ctx, src); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A rewind can fail for a moment (the source restarted, the
		// network dropped): the run loop retries it, from whoever leads by
		// then; only a failure that repeats costs the data a re-clone.
		s.rewindFailures++
		if s.rewindFailures < rewindTries {
			return fmt.Errorf("pg_rewind from %s failed (try %d of %d): %w", leader.ID, s.rewindFailures, rewindTries, err)
		}
		s.rewindFailures = 0
		return s.discardData(ctx, fmt.Sprintf("pg_rewind from %s failed %d times (%v)", leader.ID, rewindTries, err))
	}
	s.rewindFailures = 0
	s.forgetTimeline()
	// pg_rewind copied the leader's configuration; make the data a standby's.
	if err := s.inst.Configure(s.settings(nil, true)); err != nil {
		return fmt.Errorf("configure after rewind: %w", err)
	}
	s.diverged.Store(false)
	s.event(ctx, "rewind", fmt.Sprintf("%s rewound to follow %s in %s (%s)", s.spec.ID, leader.ID, time.Since(start).Round(time.Millisecond), why))
	return nil
}

// rewindTries is how many consecutive pg_rewind failures a member takes
// before it gives its data up for a re-clone.
const rewindTries = 3

// startTries is how many consecutive failed starts as a standby of a
// running primary a member takes before it treats its data as diverged and
// rejoins.
const startTries = 3

// discardData sets the member's data aside, since it cannot follow the
// leader, so that the next round clones it afresh. Only called with a
// running leader to clone from, which holds every acknowledged commit; even
// so the data is not deleted but kept as pgdata.discarded (one generation)
// until the member streams again.
func (s *supervisor) discardData(ctx context.Context, why string) error {
	s.event(ctx, "reclone", fmt.Sprintf("%s: %s; cloning afresh (the old data is kept in %s until it streams)", s.spec.ID, why, s.discarded()))
	if err := os.RemoveAll(s.discarded()); err != nil {
		return fmt.Errorf("remove the data set aside before: %w", err)
	}
	if err := os.Rename(s.pgdata(), s.discarded()); err != nil {
		return fmt.Errorf("set data aside to re-clone: %w", err)
	}
	s.forgetTimeline()
	s.diverged.Store(false)
	return nil
}

// discarded is where discardData keeps the data it set aside.
func (s *supervisor) discarded() string { return s.pgdata() + ".discarded" }

// dropDiscarded deletes the data set aside for a re-clone, once the member
// streams again and so holds what the primary has.
func (s *supervisor) dropDiscarded() {
	if _, err := os.Stat(s.discarded()); err != nil {
		return
	}
	if err := os.RemoveAll(s.discarded()); err != nil {
		s.log.Warn("remove data set aside for a re-clone", "dir", s.discarded(), "err", err)
		return
	}
	s.log.Info("member streams again: removed the data set aside for its re-clone", "dir", s.discarded())
}

func (s *supervisor) standbyRole() fleet.Role {
	if s.spec.Role == fleet.RoleReplica {
		return fleet.RoleReplica
	}
	return fleet.RoleStandby
}

// replicationSource is where a standby streams from: the leader's host
// address, from its host record.
func (s *supervisor) replicationSource(ctx context.Context, leader fleet.MemberSpec) (postgres.ConnInfo, error) {
	h, err := s.store.Host(ctx, leader.Host)
	if err != nil {
		return postgres.ConnInfo{}, fmt.Errorf("find primary %s's host %s: %w", leader.ID, leader.Host, err)
	}
	return postgres.ConnInfo{Host: h.Addr, Port: leader.Port, User: fleet.ReplicationUser, Password: s.secrets.ReplicationPassword, Database: "postgres"}, nil
}

func (s *supervisor) settings(follow *postgres.ConnInfo, standby bool) postgres.Settings {
	// A standby ignores synchronous_standby_names; a member about to be
	// promoted already has the list its first commits wait for.
	return postgres.Settings{
		Name: s.spec.ID, ListenAddr: s.host.Addr, Port: s.spec.Port,
		Follow: follow, Standby: standby, SlotName: postgres.SlotName(s.spec.ID), Params: s.cluster.Params,
		SyncStandbys: s.syncApplied, Archive: s.archiveSettings(),
	}
}

// takeLeader acquires the leader key under a fresh lease and starts holding
// it; false when another member has it.
func (s *supervisor) takeLeader(ctx context.Context) (bool, error) {
	lease, err := s.store.GrantManual(ctx, s.cluster.TTL())
	if err != nil {
		return false, err
	}
	sent := time.Now()
	ok, err := s.store.AcquireLeader(ctx, s.spec.Cluster, s.spec.ID, lease)
	if err != nil || !ok {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		lease.Revoke(rctx)
		cancel()
		return false, err
	}
	// The grant was sent before the acquiring transaction, so the key
	// cannot expire before sent+TTL.
	h, err := holdLeader(lease, s.cluster.TTL(), sent, s.inst, s.log)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		lease.Revoke(rctx)
		cancel()
		return false, err
	}
	s.setHold(h)
	return true, nil
}

// runPrimary starts the member as the primary: the leader key first, then
// postgres, so that it never accepts a write without the key. A fresh
// cluster starts asynchronous whatever its mode: it has nothing to lose yet,
// and its standbys can only clone once its first commits went through.
func (s *supervisor) runPrimary(ctx context.Context, fresh bool) error {
	ok, err := s.takeLeader(ctx)
	if err != nil {
		return fmt.Errorf("take leader key: %w", err)
	}
	if !ok {
		return errors.New("another member holds the leader key")
	}
	s.syncApplied, s.syncFrom = nil, 0
	if !fresh {
		if err := s.initialSync(ctx); err != nil {
			return err
		}
	}
	if err := s.inst.Configure(s.settings(nil, false)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	s.set(fleet.StateStarting, fleet.RolePrimary, "starting postgres")
	if err := s.start(ctx); err != nil {
		return err
	}
	return s.servePrimary(ctx, "primary", fmt.Sprintf("%s is primary on %s (%s)", s.spec.ID, s.host.Name, s.addr()))
}

// servePrimary runs the member as the primary until its term ends. It arms
// the fence, makes sure of the replication role and every other member's
// slot, and then watches: postgres exiting, the lease no longer confirmed,
// a step-down or switchover request.
func (s *supervisor) servePrimary(ctx context.Context, kind, msg string) error {
	// Every standby the term started with gets the grace period to connect.
	s.lastStreamed = map[string]time.Time{}
	for _, m := range s.syncApplied {
		s.lastStreamed[m] = time.Now()
	}
	c, err := s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil {
		return err
	}
	var timeline int64
	err = s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
		st, err := postgres.QueryStatus(ctx, conn)
		if err != nil {
			return fmt.Errorf("read timeline: %w", err)
		}
		timeline = st.Timeline
		// Every start, not only after initdb: a first start that failed
		// half-way must not leave the cluster without its replication role.
		if err := postgres.EnsureRole(ctx, conn, fleet.ReplicationUser, s.secrets.ReplicationPassword, true); err != nil {
			return fmt.Errorf("create replication role: %w", err)
		}
		// Slots exist before the member reports itself running, which is
		// what standbys wait for before they clone.
		if err := postgres.EnsureSlots(ctx, conn, s.otherSlots(c)); err != nil {
			return fmt.Errorf("create replication slots: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Elections keep members whose WAL stops on an older timeline out.
	if err := s.store.RaiseTimeline(ctx, s.spec.Cluster, s.spec.ID, timeline); err != nil {
		return err
	}
	s.set(fleet.StateRunning, fleet.RolePrimary, "")
	s.event(ctx, kind, msg)

	tick := time.NewTicker(primaryTick)
	defer tick.Stop()
	lastTrim := time.Time{}
	// The first check soon after the term starts: a new cluster gets its
	// first backup at once.
	lastBackupCheck := time.Now().Add(-backupCheckEvery + 3*time.Second)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.inst.Done():
			// Promoting an up-to-date standby is quicker than crash
			// recovery here, so the key goes at once, but only once the
			// backends the postmaster left are gone too.
			s.releaseLeader()
			s.event(ctx, "crashed", fmt.Sprintf("%s: postgres exited (%v); its processes killed and the leader key released", s.spec.ID, s.inst.ExitErr()))
			return fmt.Errorf("postgres exited: %v", s.inst.ExitErr())
		case <-s.hold.lost:
			s.fence(ctx, s.hold.why())
			s.hold.forget()
			s.setHold(nil)
			return errors.New("leader lease not confirmed in time")
		case <-tick.C:
		}
		c, err := s.store.Cluster(ctx, s.spec.Cluster)
		if err != nil {
			continue // the lease decides; the fence fires if the store stays away
		}
		switch {
		case c.Leader != s.spec.ID:
			s.fence(ctx, "the leader key names "+c.Leader)
			s.hold.forget()
			s.setHold(nil)
			return errors.New("lost the leader key")
		case c.Stepdown:
			s.fence(ctx, "asked to step down")
			s.abstainUntil = time.Now().Add(2 * s.cluster.TTL())
			s.releaseLeader()
			return errSteppedDown
		case c.Switchover != nil && c.Switchover.From == s.spec.ID && c.Switchover.LSN == 0:
			return s.handOver(ctx, *c.Switchover)
		}
		s.serveBackupRequest(ctx, c)
		if time.Since(lastBackupCheck) > backupCheckEvery && s.checkingBackup.CompareAndSwap(false, true) {
			lastBackupCheck = time.Now()
			go func() {
				defer s.checkingBackup.Store(false)
				bctx, cancel := context.WithTimeout(ctx, backupCheckEvery)
				defer cancel()
				s.watchArchiving(bctx)
				s.scheduleBackups(bctx, c)
			}()
		}
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = s.ctl.do(qctx, s.superuser(), func(conn *pgx.Conn) error { return postgres.EnsureSlots(qctx, conn, s.otherSlots(c)) })
		if err == nil {
			err = s.reconcileSync(qctx, c)
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("primary upkeep", "err", err)
		}
		if time.Since(lastTrim) > time.Minute {
			// The primary keeps its cluster's event history bounded.
			lastTrim = time.Now()
			if err := s.store.TrimEvents(ctx, s.spec.Cluster); err != nil && ctx.Err() == nil {
				s.log.Warn("trim events", "err", err)
			}
		}
	}
}

// initialSync is the sync set a new primary starts with, before its first
// write: in sync mode every other eligible member, published first, so that
// not even the first commits of a term go unprotected; reconcileSync then
// narrows it to the standbys that stream.
func (s *supervisor) initialSync(ctx context.Context) error {
	s.syncApplied, s.syncFrom = nil, 0
	c, err := s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil {
		return err
	}
	s.cluster = c.Spec
	if c.Spec.SyncMode() == fleet.SyncOff {
		return nil
	}
	var all []string
	for _, m := range c.Members {
		if m.ID != s.spec.ID && ha.Eligible(m, c.Spec) {
			all = append(all, m.ID)
		}
	}
	if len(all) == 0 {
		return nil
	}
	if err := s.store.PutSync(ctx, s.spec.Cluster, fleet.SyncState{Primary: s.spec.ID, Members: all}); err != nil {
		return err
	}
	s.syncApplied = all
	return nil
}

// reconcileSync keeps synchronous replication as the cluster's mode asks,
// with the standbys of the primary region that stream now. The published
// sync set must always contain every standby that may hold a commit no
// other has: so a standby joins the set before commits may wait for it, and
// leaves it only after another member has flushed everything from the
// moment commits stopped waiting for it.
func (s *supervisor) reconcileSync(ctx context.Context, c store.ClusterState) error {
	mode := c.Spec.SyncMode()
	var want []string
	if mode != fleet.SyncOff {
		// A standby counts while it streams, and for a grace period after:
		// right after a promotion or a restart it needs a moment to
		// reconnect, and dropping it at once would weaken the guarantee for
		// nothing.
		now := time.Now()
		for _, m := range c.Members {
			if m.ID == s.spec.ID || !ha.Eligible(m, c.Spec) {
				continue
			}
			if st, ok := c.Status[m.ID]; ok && st.State == fleet.StateStreaming {
				s.lastStreamed[m.ID] = now
			}
			if seen, ok := s.lastStreamed[m.ID]; ok && now.Sub(seen) < syncGrace {
				want = append(want, m.ID)
			}
		}
		if len(want) == 0 && mode == fleet.SyncStrict {
			// No standby can acknowledge: strict keeps commits waiting
			// rather than accept one that a failover could lose.
			want = s.syncApplied
			if len(want) == 0 {
				for _, m := range c.Members {
					if m.ID != s.spec.ID && ha.Eligible(m, c.Spec) {
						want = append(want, m.ID)
					}
				}
			}
		}
	}
	var published []string
	if c.Sync != nil && c.Sync.Primary == s.spec.ID {
		published = c.Sync.Members
	}
	// A standby enters the published set before commits wait for it.
	if grown := union(published, want); mode != fleet.SyncOff && !sameSet(grown, published) {
		if err := s.store.PutSync(ctx, s.spec.Cluster, fleet.SyncState{Primary: s.spec.ID, Members: grown}); err != nil {
			return err
		}
		published = grown
	}
	if mode == fleet.SyncOff && len(published) > 0 {
		// Leaving sync mode: the set goes before commits stop waiting.
		if err := s.store.PutSync(ctx, s.spec.Cluster, fleet.SyncState{Primary: s.spec.ID}); err != nil {
			return err
		}
		published = nil
	}
	if !sameSet(want, s.syncApplied) {
		// The bookkeeping (syncApplied, syncFrom) changes only once the new
		// list is in effect: until then the published set keeps covering
		// both the old list and the new one.
		next := s.settings(nil, false)
		next.SyncStandbys = want
		if err := s.inst.Configure(next); err != nil {
			return err
		}
		if err := s.inst.Reload(); err != nil {
			return err
		}
		err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
			// The reload applies a moment after the signal; the position
			// that counts is the one after it took effect.
			wantSetting := postgres.SyncStandbyNames(want)
			for {
				v, err := postgres.SyncStandbysInEffect(ctx, conn)
				if err != nil {
					return err
				}
				if v == wantSetting {
					break
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(10 * time.Millisecond):
				}
			}
			lsn, err := postgres.CurrentLSN(ctx, conn)
			if err == nil {
				s.syncApplied, s.syncFrom = want, lsn
			}
			return err
		})
		if err != nil {
			return err
		}
		s.event(ctx, "sync", fmt.Sprintf("%s: commits wait for %s", s.spec.ID, syncNote(want)))
	}
	// Shrink the published set to what commits wait for, once one of those
	// has flushed past the change; with none left (mode on, no standby),
	// replication is asynchronous and the set goes.
	if len(published) > 0 && !sameSet(published, s.syncApplied) {
		ready := false
		err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
			// Only while the server runs with the list the bookkeeping
			// names: a change that took effect after its confirmation timed
			// out makes commits wait for members the set would drop.
			inEffect, err := postgres.SyncStandbysInEffect(ctx, conn)
			if err != nil || inEffect != postgres.SyncStandbyNames(s.syncApplied) {
				return err
			}
			if len(s.syncApplied) == 0 {
				ready = true
				return nil
			}
			flushed, err := postgres.FlushedBy(ctx, conn)
			for _, m := range s.syncApplied {
				ready = ready || flushed[m] >= s.syncFrom
			}
			return err
		})
		if err != nil {
			return err
		}
		if ready {
			return s.store.PutSync(ctx, s.spec.Cluster, fleet.SyncState{Primary: s.spec.ID, Members: s.syncApplied})
		}
	}
	return nil
}

// syncGrace is how long a standby that stopped streaming stays one that
// commits wait for.
const syncGrace = 5 * time.Second

func syncNote(names []string) string {
	if len(names) == 0 {
		return "no standby (asynchronous)"
	}
	return "any one of " + strings.Join(names, ", ")
}

func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// handOver is the old primary's half of a switchover: a clean shutdown
// streams every record to the standbys, the last record's LSN goes into the
// switchover, and the key is released for the target to take.
func (s *supervisor) handOver(ctx context.Context, sw fleet.Switchover) error {
	s.event(ctx, "switchover", fmt.Sprintf("%s stopping to hand over to %s", s.spec.ID, sw.To))
	s.drain(ctx)
	// A checkpoint while clients still write leaves the shutdown checkpoint
	// little to flush, and the clients' pause is that much shorter.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	if err := s.ctl.do(cctx, s.superuser(), func(conn *pgx.Conn) error { _, err := conn.Exec(cctx, "CHECKPOINT"); return err }); err != nil {
		s.log.Warn("checkpoint before switchover", "err", err)
	}
	cancel()
	s.set(fleet.StateStopped, fleet.RolePrimary, "switchover to "+sw.To)
	s.stopPostgres()
	lsn, clean, err := s.inst.ShutdownCheckpoint(ctx)
	if err != nil {
		return err
	}
	if !clean {
		// The fast shutdown had to be escalated: WAL may go on past the
		// last checkpoint, so no position proves that the target has
		// everything. An ordinary election, which compares what every
		// member received, decides instead; the switchover record goes
		// first, or the election would wait for its position.
		if err := s.store.ClearSwitchover(ctx, s.spec.Cluster); err != nil {
			return fmt.Errorf("give the switchover up: %w", err)
		}
		s.releaseLeader()
		s.event(ctx, "switchover", fmt.Sprintf("%s did not shut down cleanly; the switchover to %s gives way to an ordinary election", s.spec.ID, sw.To))
		return errSteppedDown
	}
	sw.LSN = uint64(lsn)
	if err := s.store.UpdateSwitchover(ctx, s.spec.Cluster, sw); err != nil {
		return fmt.Errorf("record switchover LSN: %w", err)
	}
	s.releaseLeader()
	s.event(ctx, "switchover", fmt.Sprintf("%s stopped at %s and released the leader key for %s", s.spec.ID, lsn, sw.To))
	return errSteppedDown
}

// Draining before a switchover's shutdown.
const (
	// drainSettle is how long the proxies get to see the switchover and
	// start holding new connections: a watch event, milliseconds.
	drainSettle = 100 * time.Millisecond
	// drainMax bounds the wait for running transactions; those still busy
	// then are aborted by the shutdown.
	drainMax = 5 * time.Second
)

// drain waits, up to drainMax, until no client session is inside a
// transaction. The routing proxies hold new connections from the moment the
// switchover is written, so this lets work already under way finish instead
// of being cut off by the shutdown: a client sees a pause, not an error.
// Idle sessions are closed by the shutdown, between two transactions.
func (s *supervisor) drain(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(drainSettle):
	}
	deadline := time.Now().Add(drainMax)
	quiet := 0
	for time.Now().Before(deadline) && quiet < 2 {
		var busy int
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		err := s.ctl.do(qctx, s.superuser(), func(conn *pgx.Conn) (err error) {
			busy, err = postgres.BusySessions(qctx, conn)
			return err
		})
		cancel()
		if err != nil {
			s.log.Warn("drain before switchover", "err", err)
			return
		}
		// Twice in a row: a connection the proxy forwarded just before it
		// began to hold may still be authenticating.
		if busy == 0 {
			quiet++
		} else {
			quiet = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	if quiet < 2 {
		s.log.Info("switchover: transactions still running after the drain; the shutdown aborts them", "waited", drainMax)
	}
}

func (s *supervisor) otherSlots(c store.ClusterState) []string {
	var slots []string
	for _, m := range c.Members {
		if m.ID != s.spec.ID {
			slots = append(slots, postgres.SlotName(m.ID))
		}
	}
	return slots
}

// runStandby starts the member read-only, following the leader when there
// is one, and runs until postgres exits or the member is promoted and its
// term as primary ends. While no member holds the leader key, an eligible
// standby runs in the election.
func (s *supervisor) runStandby(ctx context.Context) error {
	c, err := s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil {
		return err
	}
	following := ""
	var follow *postgres.ConnInfo
	if l, ok := c.Member(c.Leader); ok && c.Leader != s.spec.ID {
		src, err := s.replicationSource(ctx, l)
		if err != nil {
			return err
		}
		following, follow = l.ID, &src
	}
	if err := s.inst.Configure(s.settings(follow, true)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	s.set(fleet.StateStarting, s.standbyRole(), "starting postgres")
	if err := s.startStandby(ctx, following); err != nil {
		if errors.Is(err, postgres.ErrWALGone) && following != "" {
			if err := s.discardData(ctx, fmt.Sprintf("%s no longer has the WAL this standby needs to start", following)); err != nil {
				return err
			}
			return errSteppedDown
		}
		if following != "" && !errors.Is(err, errSteppedDown) && ctx.Err() == nil {
			// Data that cannot start as a standby of a running primary,
			// because its history left the primary's or for a reason that
			// repeats, is rewound (and re-cloned if that fails); retrying
			// it as it is never helps.
			s.startFailures++
			if errors.Is(err, postgres.ErrDiverged) || s.startFailures >= startTries {
				s.startFailures = 0
				s.diverged.Store(true)
				s.event(ctx, "diverged", fmt.Sprintf("%s cannot start as a standby of %s (%v); rejoining", s.spec.ID, following, err))
				return errSteppedDown
			}
		}
		return err
	}
	s.startFailures = 0
	s.set(fleet.StateCatchingUp, s.standbyRole(), followNote(following))
	if following != "" {
		s.event(ctx, "standby", fmt.Sprintf("%s runs as %s of %s on %s (%s)", s.spec.ID, s.standbyRole(), following, s.host.Name, s.addr()))
	}

	var (
		candidateSince time.Time // when this member entered the current election
		since          = time.Now()
	)
	s.primaryLSN.Store(0)
	tick := standbyTick
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.inst.Done():
			return fmt.Errorf("postgres exited: %v", s.inst.ExitErr())
		case <-time.After(tick):
		}
		c, err := s.store.Cluster(ctx, s.spec.Cluster)
		if err != nil {
			continue
		}
		// While a switchover runs, clients wait for the target: it watches
		// closely for the old primary's release.
		tick = standbyTick
		if c.Switchover != nil && c.Switchover.To == s.spec.ID {
			tick = switchoverTick
		}
		s.cluster = c.Spec
		if c.Leader == "" {
			won, err := s.campaign(ctx, c, &candidateSince)
			if err != nil {
				s.log.Warn("election", "err", err)
			}
			if won {
				return s.promote(ctx)
			}
			continue
		}
		candidateSince = time.Time{}
		s.serveBackupRequest(ctx, c)
		if c.Leader == s.spec.ID {
			// The key is ours but this member runs read-only (an election won
			// by a previous run): finish the promotion.
			return s.promote(ctx)
		}
		if st, ok := c.Status[c.Leader]; ok && st.WriteLSN != "" {
			if l, err := postgres.ParseLSN(st.WriteLSN); err == nil {
				s.primaryLSN.Store(uint64(l))
			}
		}
		if c.Leader != following {
			l, _ := c.Member(c.Leader)
			src, err := s.replicationSource(ctx, l)
			if err != nil {
				continue
			}
			if err := s.inst.Configure(s.settings(&src, true)); err != nil {
				return fmt.Errorf("configure: %w", err)
			}
			if err := s.inst.Reload(); err != nil {
				return err
			}
			s.event(ctx, "follow", fmt.Sprintf("%s now follows %s", s.spec.ID, l.ID))
			following, since = l.ID, time.Now()
			s.set(fleet.StateCatchingUp, s.standbyRole(), followNote(following))
			continue
		}
		// A standby that cannot stream from a running leader has a history
		// the leader does not share (it was ahead of the promoted member):
		// it rejoins.
		s.mu.Lock()
		streaming := s.state == fleet.StateStreaming
		s.mu.Unlock()
		leaderRunning := false
		if st, ok := c.Status[c.Leader]; ok && st.State == fleet.StateRunning {
			leaderRunning = true
		}
		if streaming {
			since = time.Now()
			s.dropDiscarded()
		} else if leaderRunning && s.inst.WALGone(5*time.Second) {
			// Rewinding cannot bring back WAL the leader recycled.
			s.stopPostgres()
			if err := s.discardData(ctx, fmt.Sprintf("%s no longer has the WAL this standby needs to catch up", c.Leader)); err != nil {
				return err
			}
			return errSteppedDown
		} else if st, ok := c.Status[c.Leader]; ok && st.State == fleet.StateRunning && time.Since(since) > divergedAfter {
			s.diverged.Store(true)
			s.event(ctx, "diverged", fmt.Sprintf("%s cannot stream from %s; rejoining", s.spec.ID, c.Leader))
			return errSteppedDown
		}
	}
}

func followNote(leader string) string {
	if leader == "" {
		return "no primary: waiting for an election"
	}
	return "following " + leader
}

// campaign is one round of the election for an eligible standby: publish
// its candidacy, wait the election window, and try to take the key if it is
// the most advanced candidate. It reports whether this member won.
func (s *supervisor) campaign(ctx context.Context, c store.ClusterState, since *time.Time) (bool, error) {
	if !ha.Eligible(s.spec, c.Spec) || time.Now().Before(s.abstainUntil) {
		return false, nil
	}
	var pst postgres.Status
	err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) (err error) {
		pst, err = postgres.QueryStatus(ctx, conn)
		return err
	})
	if err != nil {
		return false, err
	}
	lsn := uint64(max(pst.ReceiveLSN, pst.ReplayLSN))
	cd := fleet.Candidacy{Member: s.spec.ID, LSN: lsn, LagBytes: -1, Timeline: s.timeline(pst), At: time.Now().UTC()}
	if w := s.primaryLSN.Load(); w > 0 {
		cd.LagBytes = fleet.LagBytes(w, lsn)
	}
	if err := s.store.PutCandidate(ctx, s.spec.Cluster, cd, s.lease()); err != nil {
		return false, err
	}
	// A switchover's target is known in advance: it need not wait for other
	// candidacies, which only an ordinary election compares.
	planned := c.Switchover != nil && c.Switchover.To == s.spec.ID && c.Switchover.LSN > 0
	if since.IsZero() {
		*since = time.Now()
		s.event(ctx, "election", fmt.Sprintf("%s runs in the election with %s received", s.spec.ID, postgres.LSN(lsn)))
		if !planned {
			return false, nil
		}
	}
	if !planned && time.Since(*since) < ha.ElectionWindow {
		return false, nil
	}
	c, err = s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil || c.Leader != "" {
		return false, err
	}
	now := time.Now()
	winner, why := ha.Elect(ha.ElectionInput{
		Now: now, Spec: c.Spec, Members: c.Members, Candidates: s.candidacies.Date(now, c.Candidates),
		Switchover: c.Switchover, Sync: c.Sync, Timeline: c.Timeline,
	})
	if winner != s.spec.ID {
		s.set(fleet.StateCatchingUp, s.standbyRole(), "election: "+why)
		return false, nil
	}
	ok, err := s.takeLeader(ctx)
	if err != nil || !ok {
		return false, err
	}
	s.event(ctx, "elected", fmt.Sprintf("%s won the election: %s", s.spec.ID, why))
	return true, nil
}

// promote turns the running standby, which holds the leader key, into the
// primary.
func (s *supervisor) promote(ctx context.Context) error {
	if s.hold == nil {
		ok, err := s.takeLeader(ctx)
		if err != nil {
			return fmt.Errorf("take leader key: %w", err)
		}
		if !ok {
			return errors.New("another member holds the leader key")
		}
	}
	start := time.Now()
	if err := s.initialSync(ctx); err != nil {
		return err
	}
	// The other members' slots are made here, still in recovery, so that
	// they exist the moment the standbys re-point to this member: a
	// standby asking for a missing slot waits out postgres' 5 s retry, and
	// in sync mode commits would wait (or, after the grace period, stop
	// waiting) for it meanwhile. Slots created on a standby survive its
	// promotion.
	if c, err := s.store.Cluster(ctx, s.spec.Cluster); err == nil {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.ctl.do(qctx, s.superuser(), func(conn *pgx.Conn) error { return postgres.EnsureSlots(qctx, conn, s.otherSlots(c)) })
		cancel()
		if err != nil {
			s.log.Warn("create replication slots before promotion; the primary creates them after", "err", err)
		}
	}
	if err := s.inst.Configure(s.settings(nil, true)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if err := s.inst.Reload(); err != nil {
		return err
	}
	if err := s.inst.Promote(ctx, s.superuser()); err != nil {
		return err
	}
	// Promotion removed standby.signal itself; drop the upstream settings
	// and the replication passfile a primary does not need.
	if err := s.inst.Configure(s.settings(nil, false)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if err := s.inst.Reload(); err != nil {
		return err
	}
	if c, err := s.store.Cluster(ctx, s.spec.Cluster); err == nil && c.Switchover != nil && c.Switchover.To == s.spec.ID {
		if err := s.store.ClearSwitchover(ctx, s.spec.Cluster); err != nil {
			s.log.Warn("clear switchover", "err", err)
		}
	}
	s.set(fleet.StateRunning, fleet.RolePrimary, "")
	return s.servePrimary(ctx, "promoted", fmt.Sprintf("%s promoted to primary on %s (%s) in %s", s.spec.ID, s.host.Name, s.addr(), time.Since(start).Round(time.Millisecond)))
}

// startTimeout bounds a start: crash recovery or a standby reaching a
// consistent state can take a while, but not forever.
const startTimeout = 10 * time.Minute

func (s *supervisor) start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := s.inst.Start(ctx); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	return nil
}

// startStandby starts postgres read-only. A standby is ready only once it
// is consistent, which may need WAL from the leader; if the leader changes
// meanwhile (it died, another was elected) the start is abandoned and the
// member converges again instead of waiting for a primary that is gone.
func (s *supervisor) startStandby(ctx context.Context, following string) error {
	sctx, cancel := context.WithCancelCause(ctx)
	watchDone := make(chan struct{})
	defer func() { cancel(nil); <-watchDone }()
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-sctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			if c, err := s.store.Cluster(sctx, s.spec.Cluster); err == nil && c.Leader != following {
				cancel(errLeaderChanged)
				return
			}
		}
	}()
	err := s.start(sctx)
	if err != nil && errors.Is(context.Cause(sctx), errLeaderChanged) {
		return errSteppedDown
	}
	return err
}

var errLeaderChanged = errors.New("the leader changed")

// pgConn is a lazily opened superuser connection to the member's postgres.
type pgConn struct {
	mu   sync.Mutex
	conn *pgx.Conn
}

// do runs f on the connection, connecting first if needed. A failed call
// drops the connection, so the next one reconnects after a postgres restart.
func (p *pgConn) do(ctx context.Context, ci postgres.ConnInfo, f func(*pgx.Conn) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil || p.conn.IsClosed() {
		conn, err := postgres.Connect(ctx, ci)
		if err != nil {
			return fmt.Errorf("connect as superuser: %w", err)
		}
		p.conn = conn
	}
	err := f(p.conn)
	if err != nil {
		p.conn.Close(context.Background())
		p.conn = nil
	}
	return err
}

func (p *pgConn) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close(context.Background())
		p.conn = nil
	}
}

// publishLoop writes the member's status every second.
func (s *supervisor) publishLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	s.publish(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.publish(ctx)
		case <-s.publishNow:
			s.publish(ctx)
		}
	}
}

func (s *supervisor) publish(ctx context.Context) {
	s.mu.Lock()
	st := fleet.MemberStatus{
		ID: s.spec.ID, Host: s.host.Name, Region: s.spec.Region, Role: s.role, State: s.state,
		Addr: s.addr(), Message: s.message, Progress: s.progress, Updated: time.Now().UTC(),
	}
	s.mu.Unlock()
	if st.Role == "" {
		st.Role = s.spec.Role
	}

	if s.inst.Pid() != 0 && !s.stopping.Load() && (st.State == fleet.StateRunning || st.State == fleet.StateStreaming || st.State == fleet.StateCatchingUp) {
		qctx, cancel := context.WithTimeout(ctx, 800*time.Millisecond)
		var pst postgres.Status
		err := s.pub.do(qctx, s.superuser(), func(conn *pgx.Conn) (err error) {
			pst, err = postgres.QueryStatus(qctx, conn)
			return err
		})
		cancel()
		if err != nil {
			st.Healthy = false
			st.Message = "status query failed: " + err.Error()
		} else {
			st.Timeline = s.timeline(pst)
			if pst.InRecovery {
				st.ReceiveLSN, st.ReplayLSN = pst.ReceiveLSN.String(), pst.ReplayLSN.String()
				st.State = fleet.StateCatchingUp
				if pst.Streaming {
					st.State = fleet.StateStreaming
				}
				st.LagBytes = s.lag(pst.ReplayLSN)
			} else {
				st.WriteLSN, st.ReplayLSN = pst.WriteLSN.String(), pst.WriteLSN.String()
			}
			st.Healthy = st.State == fleet.StateRunning || st.State == fleet.StateStreaming
			s.mu.Lock()
			if s.state == fleet.StateCatchingUp || s.state == fleet.StateStreaming {
				s.state = st.State
			}
			s.mu.Unlock()
		}
	}
	if err := s.store.PutStatus(ctx, s.spec.Cluster, st, s.lease()); err != nil && ctx.Err() == nil {
		s.log.Debug("publish status", "err", err)
	}
}

// receivedTimelineFile keeps, in the member's directory, the newest
// timeline this member's WAL receiver streamed on.
const receivedTimelineFile = "received-timeline"

// timeline is the timeline of the WAL the member holds. A primary and a
// streaming standby say it themselves; a standby whose upstream is gone
// (the election case) has no WAL receiver to ask, and pg_control still names
// the timeline of its last restartpoint, which may be several switches old.
// So the newest timeline it streamed on is remembered on disk, and the
// newer of the two counts: WAL received on a timeline stays on it.
func (s *supervisor) timeline(pst postgres.Status) int64 {
	if !pst.InRecovery {
		return pst.Timeline
	}
	path := filepath.Join(s.dir, receivedTimelineFile)
	known, _ := os.ReadFile(path)
	tl, _ := strconv.ParseInt(strings.TrimSpace(string(known)), 10, 64)
	if pst.Streaming && pst.Timeline > tl {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(strconv.FormatInt(pst.Timeline, 10)+"\n"), 0o600); err == nil {
			if err := os.Rename(tmp, path); err != nil {
				s.log.Warn("remember received timeline", "err", err)
			}
		}
		tl = pst.Timeline
	}
	return max(tl, pst.Timeline)
}

// forgetTimeline drops the remembered timeline when the data is replaced
// or rewound: what it held is gone.
func (s *supervisor) forgetTimeline() {
	if err := os.Remove(filepath.Join(s.dir, receivedTimelineFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("forget received timeline", "err", err)
	}
}

// lag measures replay distance to the primary's last published write LSN;
// -1 while that is not known.
func (s *supervisor) lag(replay postgres.LSN) int64 {
	w := s.primaryLSN.Load()
	if w == 0 {
		return -1
	}
	return fleet.LagBytes(w, uint64(replay))
}
