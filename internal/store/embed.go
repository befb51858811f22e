package store

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/pgfleet/pgfleet/internal/pki"
)

// MaxVoters is how many hosts run an etcd voting member. Later hosts are
// clients only: three voters survive the loss of any one host, and more
// voters would slow every write down without helping a small fleet.
const MaxVoters = 3

// EmbedConfig says how a host takes part in the fleet's embedded etcd.
type EmbedConfig struct {
	Name       string // etcd member name: the host name
	Dir        string // etcd data directory
	Addr       string // advertise IP: etcd listens here
	ClientPort int
	PeerPort   int
	// Join is the client URL (or host:port) of any running etcd member of the
	// fleet; empty bootstraps a new fleet. Ignored once Dir holds state.
	Join string
	// TLS is this host's certificate, key and the fleet's CA: clients and
	// peers without a certificate from that CA are refused. Only the store's
	// own tests leave it nil, for a plain-text etcd on loopback.
	TLS    *pki.Files
	Logger *slog.Logger
}

// Embedded is this host's part of the state store: an etcd member, or only
// the endpoints of the fleet's members when this host is a client.
type Embedded struct {
	cfg       EmbedConfig
	mu        sync.Mutex  // guards etcd across Restart
	etcd      *embed.Etcd // nil on a client-only host
	Endpoints []string
}

// role is remembered next to the etcd data so a restart takes the same part.
type role struct {
	Member    bool     `json:"member"`
	Endpoints []string `json:"endpoints"`
}

func (c EmbedConfig) scheme() string {
	if c.TLS != nil {
		return "https"
	}
	return "http"
}

func (c EmbedConfig) clientURL() url.URL {
	return url.URL{Scheme: c.scheme(), Host: net.JoinHostPort(c.Addr, strconv.Itoa(c.ClientPort))}
}

func (c EmbedConfig) peerURL() url.URL {
	return url.URL{Scheme: c.scheme(), Host: net.JoinHostPort(c.Addr, strconv.Itoa(c.PeerPort))}
}

// tlsInfo is how etcd serves clients and peers: mutual TLS with the
// fleet's CA. The client's address is not checked against its
// certificate: the certificate, not where a connection comes from, is what
// admits a host (hosts behind NAT connect from other addresses).
func (c EmbedConfig) tlsInfo() transport.TLSInfo {
	return transport.TLSInfo{
		CertFile:            c.TLS.CertPath(),
		KeyFile:             c.TLS.KeyPath(),
		TrustedCAFile:       c.TLS.CAPath(),
		ClientCertAuth:      true,
		SkipClientSANVerify: true,
	}
}

// clientTLS is how this host talks to etcd: its own certificate, and the
// fleet's CA for the server's.
func (c EmbedConfig) clientTLS() (*tls.Config, error) {
	if c.TLS == nil {
		return nil, nil
	}
	id, err := pki.LoadIdentity(*c.TLS)
	if err != nil {
		return nil, err
	}
	return id.ClientTLS(), nil
}

// StartEmbedded starts (or restarts) this host's part of the store. The first
// host bootstraps a one-member etcd; a joining host becomes a voting member
// while the fleet has fewer than MaxVoters, and a client otherwise.
func StartEmbedded(ctx context.Context, cfg EmbedConfig) (*Embedded, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create etcd dir: %w", err)
	}
	rolePath := filepath.Join(cfg.Dir, "role.json")
	if b, err := os.ReadFile(rolePath); err == nil {
		var r role
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("read %s: %w (remove the data dir to start this host afresh)", rolePath, err)
		}
		if !r.Member {
			return &Embedded{Endpoints: r.Endpoints}, nil
		}
		e, err := startEtcd(ctx, cfg, cfg.Name+"="+urlString(cfg.peerURL()), embed.ClusterStateFlagExisting)
		if err != nil {
			return nil, err
		}
		return &Embedded{cfg: cfg, etcd: e, Endpoints: []string{urlString(cfg.clientURL())}}, nil
	}

	if cfg.Join == "" {
		e, err := startEtcd(ctx, cfg, cfg.Name+"="+urlString(cfg.peerURL()), embed.ClusterStateFlagNew)
		if err != nil {
			return nil, err
		}
		ep := []string{urlString(cfg.clientURL())}
		if err := writeRole(rolePath, role{Member: true, Endpoints: ep}); err != nil {
			e.Close()
			return nil, err
		}
		return &Embedded{cfg: cfg, etcd: e, Endpoints: ep}, nil
	}

	join := cfg.Join
	if !strings.Contains(join, "://") {
		join = cfg.scheme() + "://" + join
	}
	tlsCfg, err := cfg.clientTLS()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{join}, DialTimeout: 5 * time.Second, TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", cfg.Join, err)
	}
	defer cli.Close()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	list, err := cli.MemberList(lctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("join %s: cannot list etcd members: %w (is an agent running there, and does the fleet have quorum?)", cfg.Join, Translate(err))
	}
	var voters []string
	var clientURLs []string
	for _, m := range list.Members {
		if slices.Contains(m.PeerURLs, urlString(cfg.peerURL())) {
			// This host's own member from a join that did not finish (or whose
			// data was lost): it has no data here, so it goes and joins anew.
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := cli.MemberRemove(rctx, m.ID)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("join %s: remove this host's stale etcd member: %w", cfg.Join, Translate(err))
			}
			continue
		}
		if m.Name == cfg.Name {
			return nil, fmt.Errorf("join %s: an etcd member named %s already exists at %v: pick another --name", cfg.Join, cfg.Name, m.PeerURLs)
		}
		if !m.IsLearner {
			voters = append(voters, m.Name+"="+strings.Join(m.PeerURLs, ","))
		}
		clientURLs = append(clientURLs, m.ClientURLs...)
	}
	if len(voters) >= MaxVoters {
		if err := writeRole(rolePath, role{Member: false, Endpoints: clientURLs}); err != nil {
			return nil, err
		}
		return &Embedded{Endpoints: clientURLs}, nil
	}

	// Join as a learner first: a learner does not count towards quorum, so
	// the fleet keeps accepting writes while the new member starts and
	// catches up; it is promoted to voter once in sync.
	added, err := addLearner(ctx, cli, urlString(cfg.peerURL()))
	if err != nil {
		return nil, fmt.Errorf("join %s: add etcd member: %w", cfg.Join, Translate(err))
	}
	initial := strings.Join(append(voters, cfg.Name+"="+urlString(cfg.peerURL())), ",")
	ep := []string{urlString(cfg.clientURL())}
	e, err := startEtcd(ctx, cfg, initial, embed.ClusterStateFlagExisting)
	if err == nil {
		err = promote(ctx, cli, added.Member.ID)
		if err == nil {
			err = writeRole(rolePath, role{Member: true, Endpoints: ep})
		}
		if err != nil {
			e.Close()
		}
	}
	if err != nil {
		// Leave the fleet as it was.
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = cli.MemberRemove(rctx, added.Member.ID)
		os.RemoveAll(filepath.Join(cfg.Dir, "member"))
		return nil, err
	}
	return &Embedded{cfg: cfg, etcd: e, Endpoints: ep}, nil
}

func urlString(u url.URL) string { return u.String() }

// addLearner adds a learner. etcd refuses while a voter has been connected
// for less than its health interval (5 s), which happens right after the
// previous host joined, and answers "member not found" while it applies the
// removal of this host's stale member, so it retries through those.
func addLearner(ctx context.Context, cli *clientv3.Client, peerURL string) (*clientv3.MemberAddResponse, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.MemberAddAsLearner(actx, []string{peerURL})
		cancel()
		retry := errors.Is(err, rpctypes.ErrUnhealthy) || errors.Is(err, rpctypes.ErrMemberNotFound) || errors.Is(Translate(err), ErrNoQuorum)
		if err == nil || !retry || time.Now().After(deadline) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// promote makes a learner a voter. etcd refuses until the learner has caught
// up with the leader's log, so it retries for a while.
func promote(ctx context.Context, cli *clientv3.Client, id uint64) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cli.MemberPromote(pctx, id)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("promote etcd learner to voter: %w", Translate(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func writeRole(path string, r role) error {
	b, _ := json.Marshal(r)
	return writeFileAtomic(path, b, 0o600)
}

// writeFileAtomic writes through a temporary file and a rename, so a crash
// leaves either the old file or the new one.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func startEtcd(ctx context.Context, c EmbedConfig, initial, state string) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.Dir
	cu, pu := c.clientURL(), c.peerURL()
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = initial
	cfg.ClusterState = state
	cfg.InitialClusterToken = "pgfleet"
	if c.TLS != nil {
		cfg.ClientTLSInfo, cfg.PeerTLSInfo = c.tlsInfo(), c.tlsInfo()
	}
	// Loopback and LAN fleets: a 100 ms heartbeat and 1 s election keep the
	// store's own failover well inside a member's leader lease.
	cfg.TickMs = 100
	cfg.ElectionMs = 1000
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLogger())
	cfg.Logger = "zap"

	for _, u := range []url.URL{cu, pu} {
		if err := checkFree(u.Host); err != nil {
			return nil, err
		}
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	// A restarting member of a fleet without quorum is never "ready"; the
	// agent still comes up (its API then reports the lost quorum) instead of
	// hanging here.
	wait := 60 * time.Second
	if state == embed.ClusterStateFlagExisting && initial == c.Name+"="+urlString(pu) {
		wait = 10 * time.Second
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd: %w", err)
	case <-time.After(wait):
		if c.Logger != nil {
			c.Logger.Warn("etcd not ready yet; continuing", "wait", wait)
		}
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return e, nil
}

// checkFree fails with a clear message when another process has addr.
func checkFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, errAddrInUse) || strings.Contains(err.Error(), "address already in use") {
			return fmt.Errorf("address %s is already in use by another process: stop it or choose other etcd ports", addr)
		}
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l.Close()
}

// Member reports whether this host runs a member of the store (a voter),
// not only a client of it.
func (e *Embedded) Member() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.etcd != nil
}

// Restart stops this host's etcd member and starts it again from its data,
// so that it reads its TLS files afresh: etcd loads the CAs it trusts only
// at start, and a CA rotation has to change them. Leadership moves away
// first, so the fleet's store does not wait out an election. It returns once
// the member is back and serving; the fleet's other voters keep quorum in
// the meantime, so it is one voter at a time.
func (e *Embedded) Restart(ctx context.Context) error {
	if !e.Member() {
		return nil
	}
	if _, err := e.MoveLeaderAway(ctx, nil); err != nil && e.cfg.Logger != nil {
		e.cfg.Logger.Warn("restart etcd member: leadership stays here", "err", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.etcd
	done := make(chan struct{})
	go func() { defer close(done); old.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return errors.New("restart etcd member: it did not stop within 10 s")
	}
	next, err := startEtcd(ctx, e.cfg, e.cfg.Name+"="+urlString(e.cfg.peerURL()), embed.ClusterStateFlagExisting)
	if err != nil {
		// Keep the stopped member's handle: Close on it is harmless, and the
		// agent's next Restart (or its own restart) tries again.
		return fmt.Errorf("restart etcd member: %w", err)
	}
	e.etcd = next
	select {
	case <-next.Server.ReadyNotify():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("restart etcd member: it is not serving 30 s after its start")
	}
}

// Close stops the embedded member, if any. etcd's Close waits for client
// servers that a member which never reached quorum has not started yet, so
// the wait is bounded: the process is leaving anyway.
func (e *Embedded) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.etcd == nil {
		return
	}
	done := make(chan struct{})
	go func() { defer close(done); e.etcd.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

// etcdLogger is etcd's own logger: quiet unless PGFLEET_ETCD_LOG names a
// level, because its info lines would drown the agent's.
func etcdLogger() *zap.Logger {
	lvl := os.Getenv("PGFLEET_ETCD_LOG")
	if lvl == "" {
		return zap.NewNop()
	}
	zc := zap.NewProductionConfig()
	if err := zc.Level.UnmarshalText([]byte(lvl)); err != nil {
		return zap.NewNop()
	}
	zc.OutputPaths, zc.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	l, err := zc.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l
}

// MoveLeaderAway hands etcd's leadership to another voter if this host's
// member leads. A host that runs a primary should not also lead etcd: when
// such a host dies, etcd first elects a new leader, which extends every
// lease by its election timeout, and the failover waits that much longer.
// It reports whether leadership moved.
//
// avoid, when not nil, names hosts leadership must not go to: those that run
// a primary too. When every other voter is one of them, leadership stays:
// etcd extends every lease by its election timeout on each leader change,
// so moving it back and forth would keep a dead host's leases, a dead
// primary's leader key among them, from ever expiring.
func (e *Embedded) MoveLeaderAway(ctx context.Context, avoid func(host string) bool) (bool, error) {
	e.mu.Lock()
	if e.etcd == nil {
		e.mu.Unlock()
		return false, nil
	}
	srv := e.etcd.Server
	e.mu.Unlock()
	self := uint64(srv.MemberID())
	if srv.Leader() != srv.MemberID() {
		return false, nil
	}
	for _, m := range srv.Cluster().Members() {
		if uint64(m.ID) == self || m.IsLearner || len(m.ClientURLs) == 0 {
			continue // ClientURLs are published once a member has started
		}
		if avoid != nil && avoid(m.Name) {
			continue
		}
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := srv.MoveLeader(ctx, self, uint64(m.ID))
		cancel()
		if err != nil {
			return false, fmt.Errorf("move etcd leadership to %s: %w", m.Name, err)
		}
		return true, nil
	}
	return false, nil
}
