package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/pgfleet/pgfleet/internal/backup"
)

// Archiving ahead. Postgres runs archive_command for one WAL file at a
// time, oldest first, each a process of its own that waits for the upload:
// when WAL piles up (a burst of writes, a store that was away), the archive
// falls behind at one upload per round trip. So when a push comes for a
// member, the agent also starts pushing, in the background and a few at a
// time, the files postgres has marked ready to archive after it
// (pg_wal/archive_status/*.ready), as pgBackRest's asynchronous archive-push
// does. When archive_command then comes for one of them, the upload is done
// or under way, and the answer waits only for it.
//
// The answer is still exact: success only once that file, with that
// content, is durable in the store. The agent hashes the file postgres
// names when it asks and compares it with what the background push stored;
// anything else (a failed push, a file that changed) is pushed again, in the
// ordinary way, which also decides between an identical object already
// archived and a conflicting one.

// aheadMax bounds the files pushed ahead per member, and aheadWorkers the
// uploads under way at once across members (each holds a compressed
// segment in memory).
const (
	aheadMax     = 8
	aheadWorkers = 2
)

// aheadPush is one file pushed ahead.
type aheadPush struct {
	done   chan struct{}
	target walTarget
	pushed backup.PushedWAL
	err    error
}

// walAhead holds the pushes ahead of a WAL server.
type walAhead struct {
	ctx    context.Context // ends with the server
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup

	fetchSem chan struct{}

	mu      sync.Mutex
	pushes  map[string]*aheadPush // by the file's path
	fetches map[fetchKey]*aheadFetch
	seq     int // names files fetched ahead
}

func newWALAhead() *walAhead {
	ctx, cancel := context.WithCancel(context.Background())
	return &walAhead{ctx: ctx, cancel: cancel, sem: make(chan struct{}, aheadWorkers), fetchSem: make(chan struct{}, fetchAheadWorkers),
		pushes: map[string]*aheadPush{}, fetches: map[fetchKey]*aheadFetch{}}
}

// close stops the pushes under way and waits for them.
func (h *walAhead) close() {
	h.cancel()
	h.wg.Wait()
}

// take returns and forgets the push ahead of the file at path, if there is
// one.
func (h *walAhead) take(path string) *aheadPush {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.pushes[path]
	delete(h.pushes, path)
	return p
}

// readyAfter lists the WAL files of pg_wal that postgres has marked ready
// to archive, in the order it archives them, other than current.
func readyAfter(pgwal, current string) []string {
	ents, err := os.ReadDir(filepath.Join(pgwal, "archive_status"))
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".ready")
		if ok && name != current && name == filepath.Base(name) && !strings.HasPrefix(name, ".") {
			names = append(names, name)
		}
	}
	// Postgres archives history files first, then the oldest segment:
	// sorting by name puts a timeline's segments in order.
	sort.Strings(names)
	return names
}

// scheduleAhead starts pushing ahead the files ready after current in the
// member's pg_wal (at most aheadMax per member), and forgets finished pushes
// and marks (walmarks.go) of files no longer ready (archived meanwhile, or
// removed).
func (w *walServer) scheduleAhead(t walTarget, member, current string) {
	pgwal := filepath.Join(t.pgdata, "pg_wal")
	ready := readyAfter(pgwal, current)
	h := w.ahead
	h.mu.Lock()
	defer h.mu.Unlock()
	// The current file is ready too: its push ahead, if any, is what
	// answers this request.
	isReady := map[string]bool{filepath.Join(pgwal, current): true}
	readyNames := map[string]bool{current: true}
	for _, name := range ready {
		isReady[filepath.Join(pgwal, name)] = true
		readyNames[name] = true
	}
	w.marks.prune(member, readyNames)
	n := 0
	for path, p := range h.pushes {
		if filepath.Dir(path) != pgwal {
			continue
		}
		select {
		case <-p.done:
			if !isReady[path] {
				delete(h.pushes, path)
				continue
			}
		default:
		}
		n++
	}
	for _, name := range ready {
		path := filepath.Join(pgwal, name)
		if n >= aheadMax {
			break
		}
		if _, ok := h.pushes[path]; ok {
			continue
		}
		p := &aheadPush{done: make(chan struct{}), target: t}
		h.pushes[path] = p
		n++
		term := w.marks.current(member)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer close(p.done)
			select {
			case h.sem <- struct{}{}:
				defer func() { <-h.sem }()
			case <-h.ctx.Done():
				p.err = h.ctx.Err()
				return
			}
			p.pushed, p.err = w.pushFile(h.ctx, t, path)
			if p.err != nil {
				w.log.Debug("push WAL ahead", "path", path, "err", p.err)
				return
			}
			if err := w.marks.mark(member, term, filepath.Base(path)); err != nil {
				w.log.Warn("mark a WAL file archived: archive_command runs wal-push for it", "path", path, "err", err)
			}
		}()
	}
}

// pushFile archives the WAL file at path (in the member's pg_wal) to t's
// archive.
func (w *walServer) pushFile(ctx context.Context, t walTarget, path string) (backup.PushedWAL, error) {
	f, err := openWALFile(path, w.pgUser.UID)
	if err != nil {
		return backup.PushedWAL{}, err
	}
	defer f.Close()
	a, err := backup.OpenArchiveKey(ctx, t.store, t.archive, t.key)
	if err != nil {
		return backup.PushedWAL{}, err
	}
	return a.PushWALFrom(ctx, filepath.Base(path), f)
}

// pushedAhead reports whether the file at path was pushed ahead to t's
// archive with the content it has now, waiting for a push under way.
func (w *walServer) pushedAhead(ctx context.Context, t walTarget, path string) bool {
	p := w.ahead.take(path)
	if p == nil {
		return false
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return false
	}
	if p.err != nil || p.target != t {
		return false
	}
	f, err := openWALFile(path, w.pgUser.UID)
	if err != nil {
		return false
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return err == nil && n == p.pushed.Size && hex.EncodeToString(h.Sum(nil)) == p.pushed.SHA256
}

// Fetching ahead. A recovery (a restore, a standby catching up from the
// archive) runs restore_command for one segment at a time and replays it
// before it asks for the next, so each segment's download, decryption and
// check is on its critical path. When a fetch of a segment succeeds, the
// agent also fetches the next few segments of its timeline into its spool,
// a few at a time, as pgBackRest's archive-get queue does; a later fetch of
// one of them is answered from the spool. What is in the spool was checked
// (checksum, and the key's authentication) as any fetch is, before it was
// written there. The spool is on the agent's own disk, which members' data
// may share: it holds at most fetchAheadMax segments per member and
// archive, and none is fetched ahead that would leave less than
// backup.FileStoreReserve of the filesystem free.
const (
	fetchAheadMax     = 8
	fetchAheadWorkers = 2
)

// fetchKey names a segment fetched ahead for a request's member and
// archive.
type fetchKey struct {
	req  WALRequest
	name string
}

// aheadFetch is one segment fetched ahead into the spool.
type aheadFetch struct {
	done    chan struct{}
	target  walTarget
	path    string
	err     error
	dropped bool // no longer wanted: its file is removed once fetched
}

// scheduleFetchAhead starts fetching the segments that follow name for
// req into the spool, and drops those fetched ahead for req that a
// recovery at name no longer asks for.
func (w *walServer) scheduleFetchAhead(t walTarget, req WALRequest, name string) {
	next := backup.NextSegments(name, backup.DefaultWALSegmentSize, fetchAheadMax)
	wanted := map[string]bool{}
	for _, n := range next {
		wanted[n] = true
	}
	h := w.ahead
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, f := range h.fetches {
		if k.req == req && (!wanted[k.name] || f.target != t) {
			h.dropFetch(k, f)
		}
	}
	for _, n := range next {
		k := fetchKey{req: req, name: n}
		if _, ok := h.fetches[k]; ok {
			continue
		}
		h.seq++
		f := &aheadFetch{done: make(chan struct{}), target: t, path: filepath.Join(w.spool, fmt.Sprintf("ahead-%d-%s", h.seq, n))}
		h.fetches[k] = f
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			select {
			case h.fetchSem <- struct{}{}:
				f.err = w.fetchFile(h.ctx, t, n, f.path)
				<-h.fetchSem
			case <-h.ctx.Done():
				f.err = h.ctx.Err()
			}
			h.mu.Lock()
			if f.dropped || f.err != nil {
				os.Remove(f.path)
			}
			close(f.done)
			h.mu.Unlock()
		}()
	}
}

// dropFetch forgets a segment fetched ahead and removes its file, now or
// once its fetch ends. h.mu is held.
func (h *walAhead) dropFetch(k fetchKey, f *aheadFetch) {
	delete(h.fetches, k)
	f.dropped = true
	select {
	case <-f.done:
		os.Remove(f.path)
	default:
	}
}

// fetchFile fetches the WAL file name from t's archive to path, checked,
// unless that would leave too little of the spool's filesystem free: a
// fetch ahead may wait, where the fetch postgres asks for is not held back.
func (w *walServer) fetchFile(ctx context.Context, t walTarget, name, path string) error {
	if err := backup.CheckRoom(filepath.Dir(path), maxWALFile); err != nil {
		return err
	}
	return w.fetchInto(ctx, t, name, path)
}

// fetchInto fetches the WAL file name from t's archive into a new file at
// path in the spool, which holds it only once it is whole and checked. It
// is not fsynced: the spool is emptied when the agent starts, and what
// postgres keeps of a restored file it makes durable itself.
func (w *walServer) fetchInto(ctx context.Context, t walTarget, name, path string) error {
	return intoSpool(ctx, t, path, func(a *backup.Archive, f io.Writer) error { return a.ReadWAL(ctx, name, f) })
}

// intoSpool fills a new file at path with what read writes from t's
// archive; on an error it leaves no file.
func intoSpool(ctx context.Context, t walTarget, path string, read func(*backup.Archive, io.Writer) error) error {
	a, err := backup.OpenArchiveKey(ctx, t.store, t.archive, t.key)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = read(a, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// fetchedAhead returns the segment name fetched ahead for req from t's
// archive, opened (and already removed from the spool), or nil if there is
// none: not fetched ahead, failed (not archived then, perhaps archived
// since), or from another archive than t.
func (w *walServer) fetchedAhead(ctx context.Context, t walTarget, req WALRequest, name string) *os.File {
	h := w.ahead
	k := fetchKey{req: req, name: name}
	h.mu.Lock()
	f := h.fetches[k]
	delete(h.fetches, k)
	h.mu.Unlock()
	if f == nil {
		return nil
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		h.mu.Lock()
		h.dropFetch(k, f)
		h.mu.Unlock()
		return nil
	}
	if f.err != nil || f.target != t {
		os.Remove(f.path)
		return nil
	}
	file, err := os.Open(f.path)
	os.Remove(f.path)
	if err != nil {
		return nil
	}
	return file
}
