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

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// errRemoved is the cancel cause that tells a supervisor its member was
// deleted from the store, so its data goes too.
var errRemoved = errors.New("member removed from the cluster spec")

// LeaderTTL is the leader key's lease. Automatic failover builds on it.
const LeaderTTL = 5 * time.Second

// supervisor runs one member: it creates or clones its data, runs postgres as
// a child, publishes its status every second and, on the primary, holds the
// leader key and the replication slots of the other members.
type supervisor struct {
	spec    fleet.MemberSpec
	host    fleet.Host
	store   *store.Store
	lease   func() *store.Lease // the host's current lease
	dir     string              // member directory, owned by the postgres OS user
	inst    *postgres.Instance
	log     *slog.Logger
	secrets fleet.Secrets
	params  map[string]string // the cluster spec's postgres parameters

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
	events   int         // events written, to trim the history now and then

	leader *store.Lease // held while this member is the primary
}

// pgConn is a lazily opened superuser connection to the member's postgres.
type pgConn struct {
	mu   sync.Mutex
	conn *pgx.Conn
}

func (s *supervisor) set(state fleet.State, role fleet.Role, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state, s.message, s.progress = state, msg, ""
	if role != "" {
		s.role = role
	}
}

func (s *supervisor) event(ctx context.Context, kind, msg string) {
	s.log.Info(msg, "event", kind)
	ev := fleet.Event{Time: time.Now().UTC(), Cluster: s.spec.Cluster, Member: s.spec.ID, Host: s.host.Name, Kind: kind, Message: msg}
	if err := s.store.AppendEvent(ctx, ev); err != nil && ctx.Err() == nil {
		s.log.Warn("record event", "err", err)
	}
	// A member stuck in a failure loop writes an event per retry; trimming
	// here keeps the history bounded even when no primary runs.
	if s.events++; s.events%50 == 0 {
		if err := s.store.TrimEvents(ctx, s.spec.Cluster); err != nil && ctx.Err() == nil {
			s.log.Warn("trim events", "err", err)
		}
	}
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
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		// Whatever step failed, postgres does not keep running half set up:
		// a primary that could not take the leader key must not take writes.
		s.stopPostgres()
		s.releaseLeader()
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
	if errors.Is(context.Cause(ctx), errRemoved) {
		if err := os.RemoveAll(s.dir); err != nil {
			s.log.Error("remove member data", "dir", s.dir, "err", err)
		} else {
			s.log.Info("member removed; data deleted", "dir", s.dir)
		}
	} else {
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

func (s *supervisor) releaseLeader() {
	if s.leader == nil {
		return
	}
	// Revoking at once lets another member take over without waiting for the
	// lease to expire.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = s.leader.Revoke(ctx)
	s.leader = nil
}

// observe gathers what ha.Next needs.
func (s *supervisor) observe(ctx context.Context) (ha.Observation, store.ClusterState, error) {
	c, err := s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil {
		return ha.Observation{}, c, err
	}
	o := ha.Observation{Self: s.spec, Initialized: s.inst.Initialized(), Leader: c.Leader, ClusterInitialized: c.Initialized}
	if o.Initialized {
		_, err := os.Stat(filepath.Join(s.pgdata(), "standby.signal"))
		o.WasPrimary = errors.Is(err, os.ErrNotExist)
	}
	if st, ok := c.Status[c.Leader]; ok && st.Role == fleet.RolePrimary && st.State == fleet.StateRunning {
		o.LeaderReady = true
	}
	return o, c, nil
}

// converge brings the member up and returns only when postgres has exited or
// a step failed; run retries it.
func (s *supervisor) converge(ctx context.Context) error {
	for {
		o, c, err := s.observe(ctx)
		if err != nil {
			return err
		}
		act, why := ha.Next(o)
		switch act {
		case ha.Wait:
			s.set(fleet.StateWaiting, "", why)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
			continue
		case ha.Rejoin:
			// Automatic rewind comes with failover; until then say what is needed.
			s.set(fleet.StateFailed, fleet.RoleStandby, why+": rejoin needs pg_rewind")
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Second):
			}
			continue
		case ha.Bootstrap:
			s.event(ctx, "initdb", why)
			s.set(fleet.StateInitializing, fleet.RolePrimary, why)
			if err := s.inst.InitDB(ctx, s.secrets.SuperuserPassword); err != nil {
				return fmt.Errorf("initdb: %w", err)
			}
			return s.runPrimary(ctx, c)
		case ha.StartPrimary:
			return s.runPrimary(ctx, c)
		case ha.Clone:
			leader, _ := c.Member(c.Leader)
			src, err := s.replicationSource(ctx, c, leader)
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
			return s.runStandby(ctx, c, leader)
		case ha.StartStandby:
			leader, _ := c.Member(c.Leader)
			return s.runStandby(ctx, c, leader)
		}
		return fmt.Errorf("unknown action %q", act)
	}
}

func (s *supervisor) standbyRole() fleet.Role {
	if s.spec.Role == fleet.RoleReplica {
		return fleet.RoleReplica
	}
	return fleet.RoleStandby
}

// replicationSource is where a standby streams from: the leader's host
// address, from its host record.
func (s *supervisor) replicationSource(ctx context.Context, c store.ClusterState, leader fleet.MemberSpec) (postgres.ConnInfo, error) {
	h, err := s.store.Host(ctx, leader.Host)
	if err != nil {
		return postgres.ConnInfo{}, fmt.Errorf("find primary %s's host %s: %w", leader.ID, leader.Host, err)
	}
	return postgres.ConnInfo{Host: h.Addr, Port: leader.Port, User: fleet.ReplicationUser, Password: s.secrets.ReplicationPassword, Database: "postgres"}, nil
}

func (s *supervisor) settings(follow *postgres.ConnInfo) postgres.Settings {
	return postgres.Settings{
		Name: s.spec.ID, ListenAddr: s.host.Addr, Port: s.spec.Port,
		Follow: follow, SlotName: postgres.SlotName(s.spec.ID), Params: s.params,
	}
}

// runPrimary starts the member as primary, takes the leader key and keeps the
// other members' replication slots until postgres exits.
func (s *supervisor) runPrimary(ctx context.Context, c store.ClusterState) error {
	if err := s.inst.Configure(s.settings(nil)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	s.set(fleet.StateStarting, fleet.RolePrimary, "starting postgres")
	if err := s.start(ctx); err != nil {
		return err
	}
	err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
		// Every start, not only after initdb: a first start that failed
		// half-way must not leave the cluster without its replication role.
		if err := postgres.EnsureRole(ctx, conn, fleet.ReplicationUser, s.secrets.ReplicationPassword, true); err != nil {
			return fmt.Errorf("create replication role: %w", err)
		}
		// Slots exist before the leader key does, so a clone never finds its
		// slot missing and WAL a standby still needs is never recycled.
		if err := postgres.EnsureSlots(ctx, conn, s.otherSlots(c)); err != nil {
			return fmt.Errorf("create replication slots: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The lease is kept alive independently of ctx: when the agent stops,
	// it must outlive postgres' shutdown and end only with releaseLeader.
	lease, err := s.store.Grant(context.WithoutCancel(ctx), LeaderTTL)
	if err != nil {
		return err
	}
	ok, err := s.store.AcquireLeader(ctx, s.spec.Cluster, s.spec.ID, lease)
	if err != nil || !ok {
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		lease.Revoke(cctx)
		cancel()
		if err == nil {
			err = errors.New("another member took the leader key")
		}
		return fmt.Errorf("take leader key: %w", err)
	}
	s.leader = lease
	s.set(fleet.StateRunning, fleet.RolePrimary, "")
	s.event(ctx, "primary", fmt.Sprintf("%s is primary on %s (%s)", s.spec.ID, s.host.Name, s.addr()))

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for n := 0; ; n++ {
		if n%60 == 0 {
			// The primary keeps its cluster's event history bounded.
			if err := s.store.TrimEvents(ctx, s.spec.Cluster); err != nil && ctx.Err() == nil {
				s.log.Warn("trim events", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.inst.Done():
			s.releaseLeader()
			return fmt.Errorf("postgres exited: %v", s.inst.ExitErr())
		case <-lease.Done():
			// Fencing with a margin and election come with automatic
			// failover; until then a primary that lost its key stops at
			// once rather than run writable without it.
			s.stopping.Store(true)
			s.inst.StopFast(2 * time.Second)
			s.leader = nil
			s.event(ctx, "fenced", fmt.Sprintf("%s lost its leader lease; postgres stopped", s.spec.ID))
			return errors.New("lost the leader lease; postgres stopped")
		case <-tick.C:
			c, err := s.store.Cluster(ctx, s.spec.Cluster)
			if err != nil {
				continue
			}
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err = s.ctl.do(qctx, s.superuser(), func(conn *pgx.Conn) error { return postgres.EnsureSlots(qctx, conn, s.otherSlots(c)) })
			cancel()
			if err != nil && ctx.Err() == nil {
				s.log.Warn("ensure replication slots", "err", err)
			}
		}
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

// runStandby starts the member as a standby of leader and runs until
// postgres exits.
func (s *supervisor) runStandby(ctx context.Context, c store.ClusterState, leader fleet.MemberSpec) error {
	src, err := s.replicationSource(ctx, c, leader)
	if err != nil {
		return err
	}
	if err := s.inst.Configure(s.settings(&src)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	s.set(fleet.StateStarting, s.standbyRole(), "starting postgres")
	if err := s.start(ctx); err != nil {
		return err
	}
	s.set(fleet.StateCatchingUp, s.standbyRole(), "following "+leader.ID)
	s.event(ctx, "standby", fmt.Sprintf("%s runs as %s of %s on %s (%s)", s.spec.ID, s.standbyRole(), leader.ID, s.host.Name, s.addr()))
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.inst.Done():
		return fmt.Errorf("postgres exited: %v", s.inst.ExitErr())
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
			st.Timeline = pst.Timeline
			if pst.InRecovery {
				st.ReceiveLSN, st.ReplayLSN = pst.ReceiveLSN.String(), pst.ReplayLSN.String()
				st.State = fleet.StateCatchingUp
				if pst.Streaming {
					st.State = fleet.StateStreaming
				}
				st.LagBytes = s.lag(ctx, pst.ReplayLSN)
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

// lag measures replay distance to the primary's last published write LSN.
func (s *supervisor) lag(ctx context.Context, replay postgres.LSN) int64 {
	c, err := s.store.Cluster(ctx, s.spec.Cluster)
	if err != nil {
		return -1
	}
	st, ok := c.Status[c.Leader]
	if !ok || st.WriteLSN == "" {
		return -1
	}
	w, err := postgres.ParseLSN(st.WriteLSN)
	if err != nil {
		return -1
	}
	return fleet.LagBytes(uint64(w), uint64(replay))
}
