// Package agent wires one host together: its part of the state store, its
// registration, the HTTP API and a supervisor for every member placed on it.
package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/netutil"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/memberlog"
	"github.com/pgfleet/pgfleet/internal/pki"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/proxy"
	"github.com/pgfleet/pgfleet/internal/store"
)

// Version is pgfleet's version, set at build time.
var Version = "dev"

// Defaults for an agent's ports.
const (
	DefaultAPIPort        = 7480
	DefaultEtcdClientPort = 2379
	DefaultEtcdPeerPort   = 2380
	// HostTTL is the host lease: a host's record and its members' status
	// vanish this long after its agent stops answering.
	HostTTL = 5 * time.Second
	// MaxAPIConns caps the API's connections, so that clients that open
	// many cannot take the agent's file descriptors.
	MaxAPIConns = 256
)

// Config is one agent's configuration.
type Config struct {
	Name      string // host name, unique in the fleet
	Region    string
	Advertise string // IP other hosts and clients reach this host at
	DataDir   string
	APIListen string // host:port; default Advertise:7480

	EtcdEndpoints  []string // an existing etcd cluster; empty runs embedded etcd
	EtcdPrefix     string   // key prefix, default /pgfleet/
	Join           string   // API address (HOST:PORT) of an agent of the fleet to join
	JoinToken      string   // admits this host; from `pgfleet token create`
	EtcdClientPort int
	EtcdPeerPort   int
	// External etcd's TLS: its CA, and this agent's client certificate.
	EtcdCACert, EtcdCert, EtcdKey string

	PGBin string // PostgreSQL server binaries; found automatically when empty
	// BackupStore is the object store URL new clusters back up to unless
	// they name one; recorded in the store for the whole fleet by the first
	// agent that has one.
	BackupStore string
	Logger      *slog.Logger
}

// Validate checks the configuration and fills in defaults. It touches
// nothing on disk.
func (c *Config) Validate() error {
	if err := fleet.ValidateName("host", c.Name, 63); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	if err := fleet.ValidateName("region", c.Region, fleet.MaxRegionName); err != nil {
		return fmt.Errorf("--region: %w", err)
	}
	ip := net.ParseIP(c.Advertise)
	if ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("--advertise %q is not a usable IP address: give the address other hosts reach this one at, e.g. 10.0.0.5", c.Advertise)
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is required: the directory where this host keeps its state and databases")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	c.DataDir = abs
	if c.APIListen == "" {
		c.APIListen = net.JoinHostPort(c.Advertise, strconv.Itoa(DefaultAPIPort))
	}
	if _, p, err := net.SplitHostPort(c.APIListen); err != nil {
		return fmt.Errorf("--api-listen %q: want HOST:PORT (%v)", c.APIListen, err)
	} else if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("--api-listen %q: port must be 1-65535", c.APIListen)
	}
	if c.EtcdClientPort == 0 {
		c.EtcdClientPort = DefaultEtcdClientPort
	}
	if c.EtcdPeerPort == 0 {
		c.EtcdPeerPort = DefaultEtcdPeerPort
	}
	for _, p := range []int{c.EtcdClientPort, c.EtcdPeerPort} {
		if p < 1 || p > 65535 {
			return fmt.Errorf("etcd port %d: must be 1-65535", p)
		}
	}
	if c.Join != "" {
		if !strings.Contains(c.Join, ":") {
			c.Join = net.JoinHostPort(c.Join, strconv.Itoa(DefaultAPIPort))
		}
		if _, _, err := net.SplitHostPort(c.Join); err != nil {
			return fmt.Errorf("--join %q: want HOST:PORT of an agent's API (%v)", c.Join, err)
		}
		if c.JoinToken != "" {
			if _, err := pki.ParseJoinToken(c.JoinToken); err != nil {
				return fmt.Errorf("--join-token: %w", err)
			}
		}
	}
	if (c.EtcdCert == "") != (c.EtcdKey == "") {
		return errors.New("--etcd-cert and --etcd-key go together: give both, or neither")
	}
	if len(c.EtcdEndpoints) > 0 && c.Join != "" {
		return errors.New("--join and --etcd-endpoints exclude each other: --join joins the embedded etcd of another agent, --etcd-endpoints uses an existing etcd cluster")
	}
	// The fleet's CA, its key included, lives in an existing etcd: it must
	// be reached over verified TLS unless it is on this machine.
	for _, e := range c.EtcdEndpoints {
		raw := e
		if !strings.Contains(raw, "://") {
			raw = "http://" + raw // how etcd's client reads a bare HOST:PORT without TLS
			if c.EtcdCACert != "" {
				raw = "https://" + e
			}
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return fmt.Errorf("--etcd-endpoints %q: want https://HOST:PORT", e)
		}
		host := u.Hostname()
		loopback := host == "localhost" || (net.ParseIP(host) != nil && net.ParseIP(host).IsLoopback())
		switch {
		case u.Scheme == "https" && c.EtcdCACert == "":
			return fmt.Errorf("--etcd-endpoints %s: give --etcd-cacert, the CA that signed etcd's certificate", e)
		case u.Scheme != "https" && !loopback:
			return fmt.Errorf("--etcd-endpoints %s: an etcd on another machine must be reached over https (with --etcd-cacert, --etcd-cert and --etcd-key): the fleet's CA and every password pass through it", e)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// apiAddr is where other hosts and the CLI reach this host's API: the
// listen address, or the advertised address when it listens on all.
func (c Config) apiAddr() string {
	h, p, err := net.SplitHostPort(c.APIListen)
	if ip := net.ParseIP(h); err == nil && (h == "" || (ip != nil && ip.IsUnspecified())) {
		return net.JoinHostPort(c.Advertise, p)
	}
	return c.APIListen
}

// Agent is a running host.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	bin    postgres.Bin
	osUser postgres.OSUser
	exe    string // this binary: postgres runs it to archive and fetch WAL
	host   fleet.Host

	store *store.Store
	// view is the agent's copy of clusters and hosts, which its loop,
	// router and supervisors read (store.View).
	view  *store.View
	etcd  *store.Embedded
	apiLn net.Listener
	// identity is this host's certificate, for etcd and the API; ca is
	// the fleet's CA (with its key on the hosts that hold it); pgTLS is
	// what this host's members serve and trust.
	identity *pki.Identity
	ca       *pki.Authority
	pgTLS    atomic.Pointer[postgres.ServerTLS]
	api      *api.Server // handed the CA again when a rotation changes it
	// rotation is the CA rotation under way, as followRotation last read
	// it (nil: none); etcdCA is the CA file this host's etcd member was
	// started with.
	rotation atomic.Pointer[pki.Rotation]
	etcdCA   []byte
	// rotExcluded is every rotation's hosts left behind, as first seen
	// (noteExcluded); the API's renewals read it too.
	exclMu      sync.Mutex
	rotExcluded map[string]map[string]bool
	// primaryHosts are the hosts that run a primary, as reconcile last read
	// the clusters; lastLeaderMove is when this agent last moved etcd's
	// leadership away (keepStoreLeaderAway). Both the loop's alone.
	primaryHosts   map[string]bool
	lastLeaderMove time.Time

	leaseMu sync.Mutex
	lease   *store.Lease

	ready chan struct{}
	marks *archivedMarks // the WAL server's (walmarks.go), for the supervisors
	// sups are the supervisors, by member id. Only the agent's loop adds
	// and removes them, under supsMu, which the WAL server's reads take.
	sups    map[string]*running
	supsMu  sync.RWMutex
	fleetID string // the store's fleet id, once known
	// orphansChecked is when removeOrphans last looked; keptOrphans are the
	// directories it kept and reported.
	orphansChecked time.Time
	keptOrphans    map[string]bool
	reported       map[string]bool // invalid store records already logged
}

type running struct {
	sup     *supervisor
	cancel  context.CancelCauseFunc
	done    chan struct{}
	created time.Time // the cluster incarnation the supervisor serves
}

// New validates cfg and checks everything that can be checked before any
// state is created: Postgres binaries, the data directory, the API port.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bin, err := postgres.FindBin(cfg.PGBin)
	if err != nil {
		return nil, err
	}
	osUser, err := postgres.CurrentOrPostgres()
	if err != nil {
		return nil, err
	}
	if err := checkDataDir(cfg.DataDir, osUser); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the pgfleet binary for archive_command: %w", err)
	}
	return &Agent{
		cfg: cfg, bin: bin, osUser: osUser, log: cfg.Logger.With("host", cfg.Name), exe: exe,
		ready: make(chan struct{}), sups: map[string]*running{}, keptOrphans: map[string]bool{},
		host: fleet.Host{Name: cfg.Name, Region: cfg.Region, Addr: cfg.Advertise, APIAddr: cfg.apiAddr(), Version: Version},
	}, nil
}

// checkDataDir refuses a data directory that belongs to someone else, and,
// when postgres runs as another OS user, one that user cannot reach.
func checkDataDir(dir string, pg postgres.OSUser) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Created by Run; its parents must still let postgres through.
	case err != nil:
		return fmt.Errorf("--data-dir %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("--data-dir %s is not a directory", dir)
	default:
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != os.Geteuid() {
			owner := strconv.Itoa(int(st.Uid))
			if u, err := user.LookupId(owner); err == nil {
				owner = u.Username
			}
			me := strconv.Itoa(os.Geteuid())
			if u, err := user.Current(); err == nil {
				me = u.Username
			}
			return fmt.Errorf("--data-dir %s is owned by %s, but pgfleet runs as %s: use a directory of your own, or `chown -R %s %s` if it really is this agent's", dir, owner, me, me, dir)
		}
	}
	if pg.UID == os.Geteuid() {
		return nil
	}
	// postgres must be able to traverse every parent of the data directory.
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			st := fi.Sys().(*syscall.Stat_t)
			ok := fi.Mode().Perm()&0o001 != 0 ||
				(int(st.Uid) == pg.UID && fi.Mode().Perm()&0o100 != 0) ||
				(int(st.Gid) == pg.GID && fi.Mode().Perm()&0o010 != 0)
			if !ok {
				return fmt.Errorf("--data-dir %s: the %s OS user, which runs postgres, cannot enter %s (mode %s): choose a data dir under a directory it can reach, such as /var/lib/pgfleet, or `chmod o+x %s`", dir, pg.Name, p, fi.Mode().Perm(), p)
			}
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// Ready returns a channel that closes once the agent serves its API and has
// registered its host.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Host returns this agent's host record.
func (a *Agent) Host() fleet.Host { return a.host }

// TokenPath is where the fleet's API token is kept on the host that created it.
func TokenPath(dataDir string) string { return filepath.Join(dataDir, "token") }

// Run runs the agent until ctx ends, then stops its members and leaves the
// fleet cleanly.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.cfg
	ln, err := net.Listen("tcp", cfg.APIListen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("--api-listen %s is already in use by another process: stop it or pass another --api-listen", cfg.APIListen)
		}
		return fmt.Errorf("listen on %s: %w", cfg.APIListen, err)
	}
	a.apiLn = ln
	defer ln.Close()

	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "members"), 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	var id *pki.Identity
	var ca *pki.Authority
	var etcdTLS *tls.Config
	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		var join string
		if id, ca, join, err = a.embeddedIdentity(ctx); err != nil {
			return err
		}
		files := a.tlsFiles()
		a.etcdCA = readCAFile(files)
		e, err := store.StartEmbedded(ctx, store.EmbedConfig{
			Name: cfg.Name, Dir: filepath.Join(cfg.DataDir, "etcd"), Addr: cfg.Advertise,
			ClientPort: cfg.EtcdClientPort, PeerPort: cfg.EtcdPeerPort, Join: join, TLS: &files, Logger: a.log,
		})
		if err != nil {
			return err
		}
		a.etcd = e
		defer e.Close()
		endpoints = e.Endpoints
		// Only the store's voters keep the CA's key: a host that was
		// handed it while it looked like it would be one, and is a client,
		// gives it up.
		if !e.Member() && ca.Key != nil {
			if err := os.Remove(a.tlsFiles().CAKeyPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove the CA key from a host that is not a store voter: %w", err)
			}
			ca.Key = nil
			a.log.Info("this host is a client of the store, not a voter: it keeps no copy of the CA's key")
		}
	} else if etcdTLS, err = a.externalTLS(); err != nil {
		return err
	}
	var st *store.Store
	if a.etcd != nil {
		// Read for each connection: a CA rotation changes what it trusts.
		st, err = store.OpenWith(endpoints, cfg.EtcdPrefix, id.ClientTLS)
	} else {
		st, err = store.Open(endpoints, cfg.EtcdPrefix, etcdTLS)
	}
	if err != nil {
		return err
	}
	a.store = st
	defer st.Close()
	a.view = st.StartView(ctx, a.log.With("component", "view"))
	if a.etcd != nil {
		// A voter's endpoints start as its own member only.
		syncCtx, stopSync := context.WithCancel(ctx)
		defer stopSync()
		go st.FollowMembers(syncCtx, 30*time.Second, a.log)
	} else {
		// The fleet's CA lives in the existing etcd; without quorum the
		// agent waits for it, as it does below for its registration.
		for id == nil {
			if id, ca, err = a.externalIdentity(ctx, st); err != nil {
				if !errors.Is(err, store.ErrNoQuorum) {
					return err
				}
				a.log.Warn("waiting for the state store", "err", err)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		}
	}
	a.identity, a.ca = id, ca

	rt := &router{a: a, proxy: proxy.New(cfg.Advertise, a.log.With("component", "proxy"))}
	defer rt.proxy.Close()
	rt.pool = a.newPooler(rt.proxy)
	defer rt.pool.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", rt.metrics)
	apiSrv := api.NewServer(st, a.host, a.log.With("component", "api"))
	apiSrv.SetCA(ca)
	apiSrv.SetStoreVoters(a.storeVoters())
	apiSrv.SetExcluded(a.excluded)
	a.api = apiSrv
	apiSrv.SetMemberLogs(func(member string) string {
		return memberlog.Dir(filepath.Join(a.cfg.DataDir, "members", member))
	})
	apiSrv.SetConsole(a.console(st, apiSrv))
	apiSrv.SetMemberChecked(a.memberChecked)
	mux.Handle("/", apiSrv.Handler())
	srv := &http.Server{
		Handler: mux,
		// Every bound, so that a slow or idle client holds a connection
		// only so long: the header (and TLS handshake), the body, the
		// answer, and the wait between requests.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         id.ServerTLS(tls.VerifyClientCertIfGiven),
		ErrorLog:          slog.NewLogLogger(a.log.With("component", "api").Handler(), slog.LevelDebug),
	}
	srv.RegisterOnShutdown(apiSrv.Stopping) // ends the streams that would hold Shutdown up
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		if err := srv.ServeTLS(limitPerIP(netutil.LimitListener(ln, MaxAPIConns)), "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("api server", "err", err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-srvDone
	}()

	// Two agents under one name would look like one host and fight over its
	// members. The same host restarting within its lease has the same address.
	if h, err := st.Host(ctx, cfg.Name); err == nil && h.Addr != cfg.Advertise {
		return fmt.Errorf("--name %s: a host of that name is already registered at %s; pick another name", cfg.Name, h.Addr)
	}
	a.host.Started = time.Now().UTC()
	// Without quorum (a restarted fleet whose other voters are still down)
	// the agent waits for the store, and its API says why meanwhile.
	for {
		err := a.ensureToken(ctx)
		if err == nil {
			err = a.register(ctx)
		}
		if err == nil {
			break
		}
		a.log.Warn("waiting for the state store", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	// Members serve the fleet's certificate from their first start.
	for {
		err := a.refreshPostgresTLS(ctx)
		if err == nil {
			break
		}
		a.log.Warn("waiting for the members' certificate", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	if cfg.BackupStore != "" {
		if err := a.prepareBackupStore(ctx); err != nil {
			return err
		}
	}
	// Postgres archives and fetches WAL through the agent (walserver.go),
	// from before the first member starts until after the last one stopped.
	walSrv, err := a.serveWAL()
	if err != nil {
		return err
	}
	defer walSrv.Close()
	a.marks = walSrv.marks
	a.log.Info("agent ready", "region", cfg.Region, "addr", cfg.Advertise, "api", cfg.APIListen, "etcd", endpoints, "postgres", a.bin.Dir)
	close(a.ready)

	var bg sync.WaitGroup
	bgCtx, stopBg := context.WithCancel(ctx)
	bg.Go(func() { rt.run(bgCtx) })
	bg.Go(func() { rt.measure(bgCtx) })
	a.loop(ctx)
	stopBg()
	bg.Wait()

	a.stopAll()
	a.leaseMu.Lock()
	if a.lease != nil {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		a.lease.Revoke(rctx)
		cancel()
	}
	a.leaseMu.Unlock()
	a.log.Info("agent stopped")
	return nil
}

// ensureToken creates the fleet's API token if the fleet has none: the
// first agent to get here saves it in its data dir (mode 0600) and its hash
// in the store. The file is written before the hash, so a crash between the
// two cannot leave a fleet whose token nobody knows; and it gets its name
// only once the store holds the hash, so whoever reads it (`dev up`, a
// test) finds a token the API takes. A crash in between leaves the token in
// the temporary file, which the next start names if its hash is the one
// stored.
func (a *Agent) ensureToken(ctx context.Context) error {
	path := TokenPath(a.cfg.DataDir)
	if hash, err := a.store.TokenHash(ctx); err == nil {
		if b, err := os.ReadFile(path + ".tmp"); err == nil && api.HashToken(strings.TrimSpace(string(b))) == hash {
			if err := os.Rename(path+".tmp", path); err != nil {
				return fmt.Errorf("save API token: %w", err)
			}
		}
		return nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	tok := api.NewToken()
	if err := os.WriteFile(path+".tmp", []byte(tok+"\n"), 0o600); err != nil {
		return fmt.Errorf("save API token: %w", err)
	}
	ok, err := a.store.InitToken(ctx, api.HashToken(tok))
	if err != nil {
		// The hash may be stored all the same: the next call finds out,
		// and the temporary file still holds its token.
		return err
	}
	if !ok {
		os.Remove(path + ".tmp") // another agent's token won
		return nil
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("save API token: %w", err)
	}
	a.log.Info("created the fleet's API token", "path", path)
	return nil
}

func (a *Agent) currentLease() *store.Lease {
	a.leaseMu.Lock()
	defer a.leaseMu.Unlock()
	return a.lease
}

// register grants the host lease and writes the host record under it.
func (a *Agent) register(ctx context.Context) error {
	l, err := a.store.Grant(ctx, HostTTL)
	if err != nil {
		return fmt.Errorf("register host: %w", err)
	}
	if err := a.store.RegisterHost(ctx, a.host, l); err != nil {
		return fmt.Errorf("register host: %w", err)
	}
	a.leaseMu.Lock()
	a.lease = l
	a.leaseMu.Unlock()
	return nil
}

// loop keeps the host registered and its supervisors in line with the
// store until ctx ends.
func (a *Agent) loop(ctx context.Context) {
	placement := a.view.Subscribe(ctx, store.PlacementChange)
	rotWatch := a.store.WatchCARotation(ctx)
	lastTLSCheck := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.currentLease().Done():
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("host lease lost; registering again")
			if err := a.register(ctx); err != nil {
				a.log.Error("register host", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		case <-placement:
		case _, ok := <-rotWatch:
			if !ok {
				rotWatch = a.store.WatchCARotation(ctx)
				continue
			}
			a.checkTLS(ctx)
			lastTLSCheck = time.Now()
		case <-tick.C:
			a.keepStoreLeaderAway(ctx)
			if time.Since(lastTLSCheck) >= postgresTLSEvery {
				lastTLSCheck = time.Now()
				a.checkTLS(ctx)
			}
		}
		a.reconcile(ctx)
	}
}

// checkTLS keeps this host's certificates current: it follows a CA
// rotation, keeps the members' certificate naming every host, and renews
// this host's own. The members' certificate waits for a rotation step that
// failed: which CA issues it depends on the rotation's phase.
func (a *Agent) checkTLS(ctx context.Context) {
	if err := a.followRotation(ctx); err != nil {
		a.log.Warn("follow the CA rotation", "err", err)
		return
	}
	if err := a.refreshPostgresTLS(ctx); err != nil {
		a.log.Warn("check the members' certificate", "err", err)
	}
	if err := a.renewHostCert(ctx); err != nil {
		a.log.Warn("renew this host's certificate", "err", err, "expires", a.identity.Leaf().NotAfter)
	}
}

// keepStoreLeaderAway moves etcd's leadership off this host while it runs
// a primary (see store.Embedded.MoveLeaderAway).
//
// Leadership goes only to a voter that runs no primary (a.primaryHosts, as
// reconcile last read the clusters), and moves at most every
// leaderMoveEvery: each move extends every lease in the store, so moves
// back and forth between hosts that all run primaries would keep a dead
// host's leases alive.
func (a *Agent) keepStoreLeaderAway(ctx context.Context) {
	if a.etcd == nil || time.Since(a.lastLeaderMove) < leaderMoveEvery {
		return
	}
	for _, r := range a.sups {
		if r.sup.leading.Load() {
			moved, err := a.etcd.MoveLeaderAway(ctx, func(host string) bool { return a.primaryHosts[host] })
			if err != nil {
				a.log.Debug("move etcd leadership", "err", err)
			} else if moved {
				a.lastLeaderMove = time.Now()
				a.log.Info("moved etcd leadership to another host: this one runs a primary")
			}
			return
		}
	}
}

// leaderMoveEvery bounds how often an agent moves etcd's leadership away.
const leaderMoveEvery = 10 * time.Second

// placed is a member this host should run, with the cluster it belongs to.
type placed struct {
	spec    fleet.MemberSpec
	cluster fleet.ClusterSpec
}

// reconcile starts a supervisor for every member placed on this host and
// stops those whose member is gone. A cluster destroyed and created again
// under the same name is another cluster: its members get new supervisors
// and fresh data.
func (a *Agent) reconcile(ctx context.Context) {
	cs, err := a.view.Clusters(ctx)
	// Clusters with an invalid record are left out, and left alone: their
	// members here keep running as they are until the record is repaired.
	invalid := map[string]bool{}
	switch {
	case store.OnlyInvalid(err):
		for _, ie := range store.InvalidRecords(err) {
			invalid[ie.Cluster] = true
			a.reportInvalid(ie)
		}
	case err != nil:
		if ctx.Err() == nil {
			a.log.Debug("read clusters", "err", err)
		}
		return
	}
	want := map[string]placed{}
	a.primaryHosts = map[string]bool{}
	for _, c := range cs {
		if m, ok := c.Member(c.Leader); ok {
			a.primaryHosts[m.Host] = true
		}
		for _, m := range c.Members {
			if m.Host == a.cfg.Name {
				want[m.ID] = placed{spec: m, cluster: c.Spec}
			}
		}
	}
	for id, r := range a.sups {
		if p, ok := want[id]; (ok && p.cluster.Created.Equal(r.created)) || invalid[r.sup.spec.Cluster] {
			continue
		}
		// Only a destroy or a removal, recorded as a tombstone, deletes
		// data; a member that is merely missing stops and keeps it.
		gone, err := a.store.MemberGone(ctx, r.sup.spec.Cluster, r.created, id)
		if err != nil {
			a.log.Warn("member missing from the store; deciding once the store answers", "member", id, "err", err)
			continue
		}
		cause := errVanished
		if gone {
			cause = errRemoved
		}
		a.log.Info("member no longer placed here", "member", id, "destroyed", gone)
		r.cancel(cause)
		<-r.done
		a.supsMu.Lock()
		delete(a.sups, id)
		a.supsMu.Unlock()
	}
	for id, p := range want {
		if _, ok := a.sups[id]; ok {
			continue
		}
		if err := a.startSupervisor(ctx, p); err != nil {
			a.log.Error("start supervisor", "member", id, "err", err)
		}
	}
	a.removeOrphans(ctx, want)
}

// reportInvalid logs a record of the store that failed validation, once
// per record and fault: the agent acts on none of it.
func (a *Agent) reportInvalid(ie *store.InvalidRecordError) {
	msg := ie.Error()
	if a.reported[msg] {
		return
	}
	if a.reported == nil {
		a.reported = map[string]bool{}
	}
	a.reported[msg] = true
	a.log.Error("invalid record in the state store; not acted on", "key", ie.Key, "cluster", ie.Cluster, "err", ie.Err)
}

// memberMark is written into every member directory: which fleet and which
// incarnation of its cluster the data belongs to.
type memberMark struct {
	FleetID string    `json:"fleet_id"`
	Cluster string    `json:"cluster"`
	Created time.Time `json:"created"`
}

const markFile = "member.json"

// orphanCheckEvery spaces the checks of member directories that no
// supervisor runs: each costs a store read per directory.
const orphanCheckEvery = 30 * time.Second

// removeOrphans deletes member directories whose cluster was destroyed,
// e.g. while this agent was down. It only deletes what the store positively
// says is gone: data marked with this fleet's id whose cluster incarnation
// has a tombstone. Data whose member is merely missing (a restored store
// snapshot, a stray delete, a wrong --etcd-prefix or --etcd-endpoints, which
// also has another fleet id or none) is kept and reported once.
func (a *Agent) removeOrphans(ctx context.Context, want map[string]placed) {
	if time.Since(a.orphansChecked) < orphanCheckEvery {
		return
	}
	a.orphansChecked = time.Now()
	if a.fleetID == "" {
		id, err := a.store.FleetID(ctx, false)
		if err != nil {
			return
		}
		a.fleetID = id
	}
	entries, err := os.ReadDir(filepath.Join(a.cfg.DataDir, "members"))
	if err != nil {
		return
	}
	for _, e := range entries {
		if _, ok := a.sups[e.Name()]; ok || !e.IsDir() {
			continue
		}
		dir := filepath.Join(a.cfg.DataDir, "members", e.Name())
		var mark memberMark
		b, err := os.ReadFile(filepath.Join(dir, markFile))
		if err != nil || json.Unmarshal(b, &mark) != nil || mark.FleetID != a.fleetID {
			continue
		}
		if p, ok := want[e.Name()]; ok && p.cluster.Created.Equal(mark.Created) {
			continue
		}
		gone, err := a.store.MemberGone(ctx, mark.Cluster, mark.Created, e.Name())
		if err != nil {
			return
		}
		if !gone {
			if !a.keptOrphans[dir] {
				a.keptOrphans[dir] = true
				a.log.Warn("member data with no member in the store and no record of its cluster's destroy: kept", "dir", dir, "cluster", mark.Cluster)
			}
			continue
		}
		a.log.Info("removing data of a destroyed cluster's member", "dir", dir, "cluster", mark.Cluster)
		if err := os.RemoveAll(dir); err != nil {
			a.log.Error("remove member data", "dir", dir, "err", err)
		}
	}
}

func (a *Agent) startSupervisor(ctx context.Context, p placed) error {
	m := p.spec
	fleetID, err := a.store.FleetID(ctx, true)
	if err != nil {
		return err
	}
	sec, err := a.store.Secrets(ctx, m.Cluster)
	if err != nil {
		return err
	}
	dir := filepath.Join(a.cfg.DataDir, "members", m.ID)
	var mark memberMark
	if b, err := os.ReadFile(filepath.Join(dir, markFile)); err == nil && json.Unmarshal(b, &mark) == nil &&
		(mark.FleetID != fleetID || !mark.Created.Equal(p.cluster.Created)) {
		// Data of another cluster of the same name (destroyed while this
		// agent was down, then created again), or of another fleet: never
		// serve it as this one. Deleted only on a tombstone's word.
		gone, err := a.store.Tombstoned(ctx, mark.Cluster, mark.Created)
		if err != nil {
			return err
		}
		if gone && mark.FleetID == fleetID {
			a.log.Info("removing data of an earlier cluster of the same name", "dir", dir)
			if err := os.RemoveAll(dir); err != nil {
				return fmt.Errorf("remove stale member data: %w", err)
			}
		} else {
			aside := fmt.Sprintf("%s.set-aside-%s", dir, time.Now().UTC().Format("20060102T150405Z"))
			a.log.Warn("member data of another cluster or fleet under this member's name: set aside, not deleted", "dir", dir, "moved_to", aside)
			if err := os.Rename(dir, aside); err != nil {
				return fmt.Errorf("set aside foreign member data: %w", err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create member dir: %w", err)
	}
	if err := os.Chown(dir, a.osUser.UID, a.osUser.GID); err != nil {
		return fmt.Errorf("hand member dir to %s: %w", a.osUser.Name, err)
	}
	b, _ := json.Marshal(memberMark{FleetID: fleetID, Cluster: m.Cluster, Created: p.cluster.Created})
	if err := os.WriteFile(filepath.Join(dir, markFile), b, 0o600); err != nil {
		return fmt.Errorf("mark member dir: %w", err)
	}
	// The member's log keeps postgres's output and the supervisor's lines
	// on this host, for `pgfleet logs`; without it (a full disk) the
	// member runs all the same, logging to the agent's log only.
	log := a.log
	mlog, err := memberlog.Open(memberlog.Dir(dir), 0)
	if err != nil {
		a.log.Warn("member log not kept: `pgfleet logs` shows none of its lines until the agent restarts", "member", m.ID, "err", err)
	} else {
		log = slog.New(memberlog.Tee(a.log.Handler(), mlog))
	}
	log = log.With("cluster", m.Cluster, "member", m.ID)
	s := &supervisor{
		spec: m, host: a.host, store: a.store, view: a.view, lease: a.currentLease, dir: dir, log: log, secrets: sec,
		cluster: p.cluster, role: m.Role, state: fleet.StatePending, publishNow: make(chan struct{}, 1),
		exe: a.exe, osUser: a.osUser, marks: a.marks,
	}
	s.inst = postgres.New(postgres.Config{Bin: a.bin, DataDir: s.pgdata(), User: a.osUser, Logger: log, Exe: a.exe})
	s.serverTLS = a.postgresTLS
	if err := s.installTLS(); err != nil {
		if mlog != nil {
			mlog.Close()
		}
		return err
	}
	sctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	r := &running{sup: s, cancel: cancel, done: make(chan struct{}), created: p.cluster.Created}
	a.supsMu.Lock()
	a.sups[m.ID] = r
	a.supsMu.Unlock()
	go func() {
		defer close(r.done)
		if mlog != nil {
			defer mlog.Close()
		}
		s.run(sctx)
	}()
	return nil
}

// stopAll stops every supervisor, in parallel, keeping their data.
func (a *Agent) stopAll() {
	for _, r := range a.sups {
		r.cancel(errors.New("agent stopping"))
	}
	for id, r := range a.sups {
		<-r.done
		a.supsMu.Lock()
		delete(a.sups, id)
		a.supsMu.Unlock()
	}
}

// memberChecked is when the supervisor of member on this host last checked
// its status; zero when none runs here.
func (a *Agent) memberChecked(member string) time.Time {
	a.supsMu.RLock()
	r, ok := a.sups[member]
	a.supsMu.RUnlock()
	if !ok {
		return time.Time{}
	}
	return r.sup.checkedAt()
}
