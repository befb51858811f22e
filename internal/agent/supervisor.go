package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// errRemoved is the cancel cause that tells a supervisor its member was
// destroyed, with its cluster or removed from it (a tombstone says so), so
// its data goes too.
var errRemoved = errors.New("member destroyed")

// errVanished is the cancel cause for a member missing from the store with
// no record of a destroy: the supervisor stops and keeps the data.
var errVanished = errors.New("member missing from the store, with no record of its cluster's destroy")

// errSteppedDown ends a primary's term without a failure: a switchover or
// `pgfleet failover` asked it to hand over.
var errSteppedDown = errors.New("stepped down")

// errRestart ends a standby's run to restart its postgres on a restart
// order (`pgfleet restart`): stopped, then started again as a standby.
var errRestart = errors.New("restarting postgres on order")

// Loop periods.
const (
	// A primary and a standby wake on every change of their cluster
	// (store.View.SubscribeCluster): a step-down or switchover request, a
	// leader key gone. Their ticks are for what the view does not wake them
	// for: the primary's upkeep (slots, the sync set, which follows the
	// standbys' lag) and a standby's lag and stream checks, and, faster,
	// for reading the store itself while the view is not current.
	primaryTick     = time.Second
	primaryPollTick = 250 * time.Millisecond
	standbyIdleTick = time.Second
	// standbyTick is how often a standby checks during an election, whose
	// candidacies and waits are timed, and while the view is not current.
	standbyTick = 200 * time.Millisecond
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
//
// Its work is split by concern, one file each: this one holds the life
// cycle (run, converge, stop); primary.go the term as primary (taking and
// holding the key, fencing, upkeep), handover.go a switchover's old half,
// sync.go sync mode, standby.go following the leader, election.go running
// in elections and promoting, rejoin.go cloning, rewinding and re-cloning,
// publish.go the status it publishes.
type supervisor struct {
	spec    fleet.MemberSpec
	cluster fleet.ClusterSpec
	written *postgres.Settings // the configuration last written (configure)
	// restartWant is the restart order being carried out; restarted the
	// last one done, which the status publishes.
	restartWant string
	restarted   atomic.Pointer[string]
	host        fleet.Host
	store       *store.Store
	// view answers the member's steady reads (its loops' ticks); the
	// store, the reads that start a term or an election, and every write.
	view    *store.View
	lease   func() *store.Lease // the host's current lease
	dir     string              // member directory, owned by the postgres OS user
	inst    *postgres.Instance
	log     *slog.Logger
	secrets fleet.Secrets

	publishNow chan struct{} // wakes the status publisher
	// published is the status last written, under the host lease
	// publishedLease; only the publisher uses them.
	published      fleet.MemberStatus
	publishedLease clientv3.LeaseID
	checked        atomic.Int64    // unix nanoseconds of the last status check (checkedAt)
	exe            string          // this pgfleet binary, for archive_command and restore_command
	osUser         postgres.OSUser // runs postgres, wal-push and wal-fetch
	marks          *archivedMarks  // the WAL server's marks of files archived ahead; nil in unit tests
	serverTLS      func() postgres.ServerTLS

	backingUp      atomic.Bool // a base backup of this member runs
	checkingBackup atomic.Bool // the primary's backup schedule check runs
	archiveFailing bool        // the last check found archiving failing

	mu       sync.Mutex
	state    fleet.State
	role     fleet.Role
	message  string
	progress string
	// readOnly is, while this member is a primary the disk guard made
	// read-only, why (disk.go); empty otherwise.
	readOnly string
	// wantRole is the role this member's record asks for now, which a move
	// of the primary region changes while the member runs (followRole);
	// "" until first read, when spec.Role holds.
	wantRole fleet.Role

	// Two connections: a status query must not wait behind (or hang with)
	// the control loop's work, and pgx connections are not safe for
	// concurrent use.
	ctl, pub pgConn
	// mon answers /metrics scrapes (metrics.go), apart from both.
	mon pgConn
	// mx holds the counters and caches /metrics reports for this member.
	mx       memberMetrics
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
	// standbyCloneFailed is set when the last clone was from a standby and
	// failed: the next comes from the primary (ha.CloneSource).
	standbyCloneFailed bool
	// noopRewind is set when the last rewind changed nothing, until the
	// member streams: if it cannot follow after all, rewinding again would
	// change nothing again.
	noopRewind bool
	// stayOnTimeline is set when this member could not start without a
	// primary because a newer timeline forked away from its data: it then
	// starts on its own timeline to run in the election (see
	// postgres.Settings.StayOnTimeline).
	stayOnTimeline bool
	// recvTL is the newest timeline this member streamed on (timeline).
	recvTL receivedTimeline
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
		s.publishSoon()
	}
}

// publishSoon wakes the status publisher.
func (s *supervisor) publishSoon() {
	select {
	case s.publishNow <- struct{}{}:
	default:
	}
}

// eventRetry is how long an event that could not be recorded is retried.
const eventRetry = 30 * time.Second

// event logs what happened and records it in the store in the
// background: recording must not slow a failover down, and the event's key
// carries its time, so the history stays in order.
func (s *supervisor) event(ctx context.Context, kind, msg string) {
	s.log.Info(msg, "event", kind)
	s.mx.count(kind)
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
	return postgres.ConnInfo{Host: s.host.Addr, Port: s.spec.Port, User: fleet.Superuser, Password: s.secrets.SuperuserPassword, Database: "postgres", RootCert: s.inst.RootCertPath()}
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
		if errors.Is(err, errSteppedDown) || errors.Is(err, errRestart) {
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
			s.log.Info("member destroyed (with its cluster, or removed from it); its data deleted", "dir", s.dir)
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
	s.mon.close()
	if s.inst.Pid() != 0 {
		if err := s.inst.StopFast(30 * time.Second); err != nil {
			s.log.Warn("stop postgres", "err", err)
		}
	}
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
	c, err := s.view.Cluster(ctx, s.spec.Cluster)
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

func (s *supervisor) standbyRole() fleet.Role {
	s.mu.Lock()
	want := s.wantRole
	s.mu.Unlock()
	if want == fleet.RoleReplica || (want == "" && s.spec.Role == fleet.RoleReplica) {
		return fleet.RoleReplica
	}
	return fleet.RoleStandby
}

// replicationSource is where a standby streams from, or a clone copies
// from, as the replication user: member m's host address, from its host
// record.
func (s *supervisor) replicationSource(ctx context.Context, m fleet.MemberSpec) (postgres.ConnInfo, error) {
	h, err := s.view.Host(ctx, m.Host)
	if err != nil {
		return postgres.ConnInfo{}, fmt.Errorf("find member %s's host %s: %w", m.ID, m.Host, err)
	}
	return postgres.ConnInfo{Host: h.Addr, Port: m.Port, User: fleet.ReplicationUser, Password: s.secrets.ReplicationPassword, Database: "postgres", RootCert: s.inst.RootCertPath()}, nil
}

func (s *supervisor) settings(follow *postgres.ConnInfo, standby bool) postgres.Settings {
	// A standby ignores synchronous_standby_names; a member about to be
	// promoted already has the list its first commits wait for.
	return postgres.Settings{
		Name: s.spec.ID, ListenAddr: s.host.Addr, Port: s.spec.Port,
		Follow: follow, Standby: standby, StayOnTimeline: standby && follow == nil && s.stayOnTimeline,
		SlotName: postgres.SlotName(s.spec.ID), Params: s.cluster.Params,
		SyncStandbys: s.syncApplied, Archive: s.archiveSettings(),
		ReadOnly: !standby && follow == nil && s.guarded(),
	}
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

// installTLS puts the fleet's current certificate and CA in place for the
// member, and has a running postgres serve a changed one.
func (s *supervisor) installTLS() error {
	t := s.serverTLS()
	if t.CertPEM == nil {
		return nil
	}
	changed, err := s.inst.InstallTLS(t)
	if err != nil {
		s.log.Error("install the members' certificate", "err", err)
		return err
	}
	if changed && s.inst.Pid() != 0 {
		if err := s.inst.Reload(); err != nil {
			s.log.Warn("reload postgres for its new certificate", "err", err)
		}
	}
	return nil
}
