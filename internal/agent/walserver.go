package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// The WAL socket is how postgres' archive_command and restore_command reach
// the backup store: `pgfleet wal-push --socket` and `wal-fetch --socket`,
// run by postgres as its OS user, ask the agent, which holds the store's
// credentials (its environment) and the cluster's backup key (the state
// store) and does the upload or download itself. So the postgres OS user,
// and any superuser session that can run a program as it (COPY ... FROM
// PROGRAM), never reads a credential or a key.
//
// The protocol is HTTP over a unix socket, one request per WAL file:
//
//	POST /v1/wal/push?cluster=C&member=M&path=P        204; P is %p, relative to M's data directory
//	GET  /v1/wal/fetch?cluster=C&member=M&name=N[&from=F]  200 and the file's bytes (Content-Length set)
//
// A WAL file that is not in the archive is 404 and nothing else is; every
// refusal or failure answers another status with the reason as plain text.
//
// Who may connect: the socket's directory and the socket are the agent's
// and the postgres OS user's group's (0710 and 0660), and every request's
// peer (SO_PEERCRED) must be root, the agent's user or the postgres OS user.
// What a request may do: only for a member placed on this host; a push only
// reads a regular file in that member's pg_wal owned by the postgres OS user
// (never a link: the agent may be root) and uploads it to its cluster's
// archive; a fetch reads its cluster's archive, or, for a cluster made by a
// restore, the archive it was restored from, whose data it holds anyway.

// WALSocketPath is where the agent whose data directory is dataDir serves
// WAL push and fetch.
func WALSocketPath(dataDir string) string { return filepath.Join(dataDir, "run", "wal.sock") }

// ErrNotArchived is returned (wrapped) by WALClient.Fetch for a WAL file
// the archive does not hold, which postgres asks for as a matter of course.
var ErrNotArchived = errors.New("not in the archive")

// WALRequest names whose WAL a request is about.
type WALRequest struct {
	Cluster string // the member's cluster
	Member  string
	// From is, for a fetch by a cluster made by a restore, the cluster whose
	// archive it replays; "" is the cluster's own archive.
	From string
}

// walMaxRequest bounds one push or fetch in the agent, as wal-push's
// --timeout bounds it for postgres.
const walMaxRequest = 10 * time.Minute

// walClusters is what the WAL server reads from the state store.
type walClusters interface {
	Cluster(ctx context.Context, name string) (store.ClusterState, error)
	Secrets(ctx context.Context, cluster string) (fleet.Secrets, error)
}

var _ walClusters = (*store.Store)(nil)

// walServer serves the WAL socket.
type walServer struct {
	clusters walClusters
	host     string // this host's name
	dataDir  string // the agent's
	pgUser   postgres.OSUser
	log      *slog.Logger
	socket   string
	spool    string // private to the agent: files fetched for postgres, checked before they are sent

	// known is the last target each request resolved to, by request: when
	// the state store cannot answer (no quorum), WAL still reaches the
	// archive the store last named, so a primary's last writes are
	// archived while it can still make them.
	mu    sync.Mutex
	known map[walKey]walTarget

	// postmasters names this host's members by their postmaster's pid:
	// a caller of the postgres OS user may act only for the member whose
	// postgres it descends from (callerOf). Nil: only processes the agent
	// runs itself.
	postmasters func() map[int]memberRef

	ahead *walAhead      // pushes and fetches ahead of postgres (walahead.go)
	marks *archivedMarks // files pushed ahead, for archive_command's test (walmarks.go)

	srv  *http.Server
	done chan struct{}
}

type walKey struct {
	req  WALRequest
	push bool
}

// serveWAL opens the agent's WAL socket and serves it until Close.
func (a *Agent) serveWAL() (*walServer, error) {
	w := newWALServer(a.store, a.cfg.Name, a.cfg.DataDir, a.osUser, a.log.With("component", "wal"))
	w.postmasters = a.postmasters
	if err := w.start(); err != nil {
		return nil, err
	}
	return w, nil
}

// newWALServer returns the WAL server of the agent of host whose data
// directory is dataDir. It does no I/O.
func newWALServer(clusters walClusters, host, dataDir string, pgUser postgres.OSUser, log *slog.Logger) *walServer {
	socket := WALSocketPath(dataDir)
	return &walServer{
		clusters: clusters, host: host, dataDir: dataDir, pgUser: pgUser, log: log,
		socket: socket, spool: filepath.Join(filepath.Dir(socket), "spool"),
		known: map[walKey]walTarget{}, ahead: newWALAhead(), done: make(chan struct{}),
	}
}

// start opens the socket and serves it.
func (w *walServer) start() error {
	ln, err := w.listen()
	if err != nil {
		return fmt.Errorf("WAL socket %s: %w", w.socket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/wal/push", w.limit(w.push))
	mux.HandleFunc("GET /v1/wal/fetch", w.limit(w.fetch))
	w.srv = &http.Server{
		Handler:           w.checkPeer(mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ConnContext:       w.withPeer,
		ErrorLog:          slog.NewLogLogger(w.log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(w.done)
		if err := w.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Error("WAL socket", "err", err)
		}
	}()
	w.log.Info("serving WAL push and fetch", "socket", w.socket)
	return nil
}

// Close stops serving, letting requests under way finish for a while: the
// agent closes the socket only after its members' postgres stopped, whose
// shutdown archives the last WAL.
func (w *walServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := w.srv.Shutdown(ctx)
	<-w.done
	w.ahead.close()
	os.RemoveAll(w.spool)
	return err
}

// listen makes the socket's directory (0710, group of the postgres OS user:
// it may reach the socket, not list the directory) and its spool (0700),
// and listens on the socket (0660, same group). A socket left by an agent
// that died is replaced; anything else in its place is an error.
func (w *walServer) listen() (net.Listener, error) {
	run := filepath.Dir(w.socket)
	uid, gid := os.Geteuid(), os.Getegid()
	if uid == 0 && w.pgUser.UID != 0 {
		gid = w.pgUser.GID
	}
	if err := os.MkdirAll(run, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chown(run, uid, gid); err != nil {
		return nil, err
	}
	if err := os.Chmod(run, 0o710); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(w.spool); err != nil {
		return nil, err
	}
	if err := os.Mkdir(w.spool, 0o700); err != nil {
		return nil, err
	}
	w.marks = newArchivedMarks(filepath.Join(run, "archived"), uid, gid)
	if err := w.marks.reset(); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(w.socket); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket: move it away", w.socket)
		}
		if err := os.Remove(w.socket); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", w.socket)
	if err != nil {
		return nil, err
	}
	if err := os.Chown(w.socket, uid, gid); err == nil {
		err = os.Chmod(w.socket, 0o660)
	}
	if err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// peerKey is the context key of a connection's peer credentials.
type peerKey struct{}

type peer struct {
	uid int
	pid int
	err error
	// Whose process the peer is (callerOf), decided at accept: the pid
	// the kernel recorded at connect names that process only while it
	// lives, and a pid is reused once it exits.
	caller    memberRef
	byAgent   bool
	callerErr error
}

// withPeer records the uid of the process at the other end of the
// connection, as the kernel tells it (SO_PEERCRED).
func (w *walServer) withPeer(ctx context.Context, c net.Conn) context.Context {
	p := peer{uid: -1, err: errors.New("not a unix socket")}
	if uc, ok := c.(*net.UnixConn); ok {
		p.err = nil
		raw, err := uc.SyscallConn()
		if err == nil {
			err = raw.Control(func(fd uintptr) {
				var cred *syscall.Ucred
				cred, p.err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
				if p.err == nil {
					p.uid, p.pid = int(cred.Uid), int(cred.Pid)
				}
			})
		}
		if err != nil {
			p.err = err
		}
	}
	if p.err == nil && p.uid == w.pgUser.UID {
		var pms map[int]memberRef
		if w.postmasters != nil {
			pms = w.postmasters()
		}
		p.caller, p.byAgent, p.callerErr = callerOf(p.pid, os.Getpid(), pms, procPPid)
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// walPeerAllowed reports whether a process running as uid may use the WAL
// socket: the postgres OS user (pgUID), whose archive_command and
// restore_command it serves, the agent's own user (agentUID) and root. The
// directory's and socket's modes already keep others out; this holds even
// if someone loosens them or joins the postgres group.
func walPeerAllowed(uid, agentUID, pgUID int) bool {
	return uid >= 0 && (uid == 0 || uid == agentUID || uid == pgUID)
}

// checkPeer refuses requests from processes walPeerAllowed does not allow.
func (w *walServer) checkPeer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(peerKey{}).(peer)
		if p.err != nil || !walPeerAllowed(p.uid, os.Geteuid(), w.pgUser.UID) {
			w.log.Warn("WAL socket: refused a connection", "uid", p.uid, "err", p.err)
			http.Error(rw, fmt.Sprintf("uid %d may not use the WAL socket: only the %s OS user (uid %d) and root may", p.uid, w.pgUser.Name, w.pgUser.UID), http.StatusForbidden)
			return
		}
		next.ServeHTTP(rw, r)
	})
}

// checkCaller refuses a request of the postgres OS user for a member
// other than the one whose postgres the calling process descends from.
func (w *walServer) checkCaller(ctx context.Context, req WALRequest) error {
	p, _ := ctx.Value(peerKey{}).(peer)
	if p.uid != w.pgUser.UID {
		return nil // root or the agent's own user
	}
	ref, byAgent, err := p.caller, p.byAgent, p.callerErr
	switch {
	case err != nil:
		return fmt.Errorf("%w: %v", errRefused, err)
	case byAgent:
		return nil
	case ref.Cluster != req.Cluster || ref.Member != req.Member:
		return fmt.Errorf("%w: the calling process belongs to member %s of cluster %s, not to %s of %s", errRefused, ref.Member, ref.Cluster, req.Member, req.Cluster)
	}
	return nil
}

// walTarget is what a WAL request resolves to: the member's data directory
// and the archive to push to or fetch from.
type walTarget struct {
	pgdata  string
	store   string // URL
	archive string // the archive's cluster
	key     string // backup key, "" when the archive is not encrypted
}

// errRefused marks a request that no retry will make right: a member not
// placed here, an archive it may not read, a path outside its pg_wal.
var errRefused = errors.New("refused")

// resolveWAL decides where a member's WAL request goes, from its cluster
// as the state store holds it. The member must be placed on host. A push
// goes to the cluster's own archive. A fetch reads the cluster's own
// archive, or, with From, the archive the cluster was restored from, and no
// other: the postgres OS user must not read the archives of clusters that
// are not on its host. The data directory is <dataDir>/members/<id>/pgdata,
// where startSupervisor puts it.
func resolveWAL(c store.ClusterState, sec fleet.Secrets, host, dataDir string, r WALRequest, push bool) (walTarget, error) {
	m, ok := c.Member(r.Member)
	if !ok || m.Host != host {
		return walTarget{}, fmt.Errorf("%w: member %s of cluster %s does not run on host %s", errRefused, r.Member, r.Cluster, host)
	}
	t := walTarget{pgdata: filepath.Join(dataDir, "members", m.ID, "pgdata")}
	var encrypted bool
	switch {
	case push && r.From != "":
		return walTarget{}, fmt.Errorf("%w: a push goes to the member's own cluster's archive, not to %s's", errRefused, r.From)
	case r.From == "" || r.From == r.Cluster:
		b := c.Spec.Backup
		if b == nil {
			return walTarget{}, fmt.Errorf("%w: cluster %s has no backups configured", errRefused, r.Cluster)
		}
		t.store, t.archive, encrypted = b.Store, r.Cluster, b.Encrypted
	default:
		rs := c.Spec.Restore
		if rs == nil || rs.From != r.From {
			return walTarget{}, fmt.Errorf("%w: cluster %s is not restored from %s", errRefused, r.Cluster, r.From)
		}
		t.store, t.archive, encrypted = rs.Store, rs.From, rs.Encrypted
	}
	if encrypted {
		if sec.BackupKey == "" {
			return walTarget{}, fmt.Errorf("the archive of %s is encrypted, but cluster %s has no backup key in the state store", t.archive, r.Cluster)
		}
		t.key = sec.BackupKey
	}
	return t, nil
}

// target resolves a request with the state store, or, when the store
// cannot answer, as it last did.
func (w *walServer) target(ctx context.Context, r WALRequest, push bool) (walTarget, error) {
	if r.Cluster == "" || r.Member == "" {
		return walTarget{}, fmt.Errorf("%w: cluster and member are required", errRefused)
	}
	c, err := w.clusters.Cluster(ctx, r.Cluster)
	var sec fleet.Secrets
	if err == nil {
		sec, err = w.clusters.Secrets(ctx, r.Cluster)
	}
	k := walKey{req: r, push: push}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return walTarget{}, fmt.Errorf("%w: there is no cluster %s", errRefused, r.Cluster)
	case err != nil:
		// The store away, or the cluster's record invalid (its members
		// keep running, left alone): archiving goes on where it went,
		// rather than fill the disk with WAL.
		w.mu.Lock()
		t, ok := w.known[k]
		w.mu.Unlock()
		if ok {
			w.log.Warn("the cluster cannot be read from the state store: using the archive it last named", "cluster", r.Cluster, "member", r.Member, "err", err)
			return t, nil
		}
		return walTarget{}, err
	}
	t, err := resolveWAL(c, sec, w.host, w.dataDir, r, push)
	w.mu.Lock()
	if err == nil {
		w.known[k] = t
	} else {
		delete(w.known, k)
	}
	w.mu.Unlock()
	return t, err
}

// walFilePath resolves what archive_command's %p names (relative to the
// data directory, or absolute) to a file directly in pgdata's pg_wal, and
// refuses anything else.
func walFilePath(pgdata, p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: no WAL file path", errRefused)
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(pgdata, p)
	}
	p = filepath.Clean(p)
	if filepath.Dir(p) != filepath.Join(pgdata, "pg_wal") {
		return "", fmt.Errorf("%w: %s is not a file in the member's pg_wal", errRefused, p)
	}
	return p, nil
}

// openWALFile opens a WAL file for the agent to read on behalf of the
// postgres OS user (uid), and only what that user could read itself: a
// regular file it owns, reached without following a link in its last
// component. The agent may run as root, and pg_wal is the postgres user's to
// fill with links to anything.
// maxWALFile bounds what a push uploads: pgfleet's clusters use initdb's
// 16 MiB segments, and the archive holds a file in memory while it
// compresses and seals it, so a larger file is refused rather than let a
// postgres-side process exhaust the agent's memory.
const maxWALFile = 16 << 20

// walConcurrency bounds the pushes and fetches the agent serves at once,
// for the same reason.
const walConcurrency = 4

func openWALFile(path string, uid int) (*os.File, error) {
	// O_NONBLOCK: a FIFO would block the open; it is refused below.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: %s is a symbolic link", errRefused, path)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%w: %s is not a regular file", errRefused, path)
	case !ok || int(st.Uid) != uid:
		err = fmt.Errorf("%w: %s is not owned by uid %d, which runs postgres", errRefused, path, uid)
	case fi.Size() > maxWALFile:
		err = fmt.Errorf("%w: %s is %d bytes, more than a WAL segment (%d)", errRefused, path, fi.Size(), maxWALFile)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// limit runs h for at most walConcurrency requests at a time; the others
// wait their turn (postgres retries archive_command anyway).
func (w *walServer) limit(h http.HandlerFunc) http.HandlerFunc {
	sem := make(chan struct{}, walConcurrency)
	return func(rw http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
			h(rw, r)
		case <-r.Context().Done():
		}
	}
}

// push archives the WAL file a member's postgres names.
func (w *walServer) push(rw http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), walMaxRequest)
	defer cancel()
	q := r.URL.Query()
	req := WALRequest{Cluster: q.Get("cluster"), Member: q.Get("member")}
	start := time.Now()
	err := w.checkCaller(r.Context(), req)
	if err == nil {
		err = w.pushWAL(ctx, req, q.Get("path"))
	}
	log := w.log.With("cluster", req.Cluster, "member", req.Member, "path", q.Get("path"))
	if err != nil {
		log.Warn("archive WAL", "err", err)
		http.Error(rw, err.Error(), walStatus(err))
		return
	}
	log.Debug("archived WAL", "took", time.Since(start).Round(time.Millisecond))
	rw.WriteHeader(http.StatusNoContent)
}

func (w *walServer) pushWAL(ctx context.Context, req WALRequest, path string) error {
	t, err := w.target(ctx, req, true)
	if err != nil {
		return err
	}
	p, err := walFilePath(t.pgdata, path)
	if err != nil {
		return err
	}
	w.scheduleAhead(t, req.Member, filepath.Base(p))
	if w.pushedAhead(ctx, t, p) {
		return nil
	}
	_, err = w.pushFile(ctx, t, p)
	return err
}

// fetch sends a WAL file from the archive, once it is whole and its
// checksum verified: restore_command's caller writes it to %p.
func (w *walServer) fetch(rw http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), walMaxRequest)
	defer cancel()
	q := r.URL.Query()
	req := WALRequest{Cluster: q.Get("cluster"), Member: q.Get("member"), From: q.Get("from")}
	name := q.Get("name")
	log := w.log.With("cluster", req.Cluster, "member", req.Member, "name", name)
	if err := w.checkCaller(r.Context(), req); err != nil {
		log.Warn("fetch WAL", "err", err)
		http.Error(rw, err.Error(), walStatus(err))
		return
	}
	dir, err := os.MkdirTemp(w.spool, "fetch-")
	if err != nil {
		log.Error("fetch WAL", "err", err)
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	defer os.RemoveAll(dir)
	f, err := w.fetchWAL(ctx, req, name, dir)
	switch {
	case errors.Is(err, backup.ErrNotFound):
		// Asked for as a matter of course: not worth a log line.
		http.Error(rw, fmt.Sprintf("%s is not in the archive", name), http.StatusNotFound)
		return
	case err != nil:
		log.Warn("fetch WAL", "err", err)
		http.Error(rw, err.Error(), walStatus(err))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", "application/octet-stream")
	rw.Header().Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
	if _, err := io.Copy(rw, f); err != nil {
		// The client sees a short body and fails.
		log.Warn("send WAL", "err", err)
		return
	}
	log.Debug("fetched WAL", "from", req.From, "bytes", fi.Size())
}

// fetchWAL fetches name into dir and opens it.
func (w *walServer) fetchWAL(ctx context.Context, req WALRequest, name, dir string) (*os.File, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return nil, fmt.Errorf("%w: %q is not a WAL file name", errRefused, name)
	}
	t, err := w.target(ctx, req, false)
	if err != nil {
		return nil, err
	}
	if f := w.fetchedAhead(ctx, t, req, name); f != nil {
		w.scheduleFetchAhead(t, req, name)
		return f, nil
	}
	dest := filepath.Join(dir, name)
	err = w.fetchInto(ctx, t, name, dest)
	if errors.Is(err, backup.ErrNotFound) && req.From != "" && req.From != req.Cluster {
		err = w.fetchStreamed(ctx, t, name, dest) // walstream.go
	}
	if err != nil {
		return nil, err
	}
	w.scheduleFetchAhead(t, req, name)
	return os.Open(dest)
}

// walStatus is the HTTP status that tells a WAL client what err was.
func walStatus(err error) int {
	switch {
	case errors.Is(err, errRefused):
		return http.StatusForbidden
	case errors.Is(err, backup.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, store.ErrNoQuorum), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	default:
		return http.StatusBadGateway
	}
}

// WALClient is the postgres side of the WAL socket: what `pgfleet wal-push`
// and `wal-fetch --socket` run as archive_command and restore_command.
type WALClient struct {
	socket string
	hc     *http.Client
}

// NewWALClient returns a client of the agent listening on socket. It does
// no I/O.
func NewWALClient(socket string) *WALClient {
	return &WALClient{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}}
}

// do sends one request and returns the response of a success; any other
// answer is an error holding the agent's reason, wrapping ErrNotArchived
// for a 404.
func (c *WALClient) do(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://pgfleet-agent"+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("reach the pgfleet agent at %s (is it running?): %w", c.socket, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := strings.TrimSpace(string(b))
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%s: %w", msg, ErrNotArchived)
	}
	return nil, fmt.Errorf("the agent says (%s): %s", resp.Status, msg)
}

// Push asks the agent to archive the WAL file at path, archive_command's
// %p (relative to the member's data directory). It returns nil only once
// the file is durable in the store.
func (c *WALClient) Push(ctx context.Context, r WALRequest, path string) error {
	resp, err := c.do(ctx, http.MethodPost, "/v1/wal/push", url.Values{"cluster": {r.Cluster}, "member": {r.Member}, "path": {path}})
	if err != nil {
		return fmt.Errorf("archive %s: %w", filepath.Base(path), err)
	}
	resp.Body.Close()
	return nil
}

// Fetch restores the archived WAL file name (restore_command's %f) to dest
// (%p): the agent fetches and verifies it, and Fetch writes it to a
// temporary file beside dest, renamed into place once it is complete, so
// dest never holds part of a file. A file that is not archived is an error
// wrapping ErrNotArchived.
func (c *WALClient) Fetch(ctx context.Context, r WALRequest, name, dest string) error {
	q := url.Values{"cluster": {r.Cluster}, "member": {r.Member}, "name": {name}}
	if r.From != "" {
		q.Set("from", r.From)
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/wal/fetch", q)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", name, err)
	}
	defer resp.Body.Close()
	if err := writeWALFile(dest, resp.Body, resp.ContentLength); err != nil {
		return fmt.Errorf("fetch %s: write %s: %w", name, dest, err)
	}
	return nil
}

// writeWALFile writes size bytes of r to a temporary file beside path and
// renames it to path. Fewer bytes (the agent failed midway) is an error,
// and path is left as it was. It does not fsync: postgres reads the file
// restore_command restored and removes it, or keeps it with a
// durable_rename of its own, and after a crash it fetches it again.
func writeWALFile(path string, r io.Reader, size int64) error {
	return backup.WriteFileRenamed(path, &sizedReader{r: r, size: size})
}

// sizedReader ends in an error instead of io.EOF unless exactly size bytes
// came (any number when size < 0).
type sizedReader struct {
	r       io.Reader
	size, n int64
}

func (s *sizedReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err == io.EOF && s.size >= 0 && s.n != s.size {
		return n, fmt.Errorf("got %d bytes of %d", s.n, s.size)
	}
	return n, err
}
