package backup

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// A base backup of manifest version 2 is stored in parts: its tar, cut into
// pieces of partSize bytes (the last one shorter), each piece an object of
// its own (object.go) under <cluster>/backups/<id>/base.tar.NNNNNN.zst. The
// manifest lists every part's length and SHA-256, so a part that is lost,
// swapped with another backup's or reordered is found before a restore
// finishes. A part is not a tar of its own: the concatenated parts are.
//
// Parts let a backup compress and upload, and a restore download, decrypt
// and decompress, with several workers at once, where a single zstd stream
// keeps one core busy and leaves the others idle. A restore still extracts
// the tar in order, from the parts as they come in; what it decodes ahead is
// bounded to a few parts in memory.
//
// Version 1 backups are one object (base.tar.zst) and stay restorable.
const (
	// partSize is the length of every part but the last that PutBackup
	// writes. It bounds the memory of a backup or restore to a few times
	// itself, and is large enough that each part compresses about as well
	// as the whole stream would (zstd's window at the default level is
	// 8 MiB).
	partSize = 16 << 20
	// maxPartSize is the longest part a restore reads, which bounds its
	// memory whatever a manifest says.
	maxPartSize = 64 << 20
	// maxParts bounds the parts a manifest may list.
	maxParts = 1 << 20
)

// Part is one part of a version 2 base backup.
type Part struct {
	RawBytes    int64  `json:"raw_bytes"`    // its share of the tar
	StoredBytes int64  `json:"stored_bytes"` // size of its object
	SHA256      string `json:"sha256"`       // of its share of the tar
}

func (a *Archive) partKey(id string, i int) string {
	return fmt.Sprintf("%s%s/base.tar.%06d.zst", a.backupPrefix(), id, i)
}

// partWorkers is how many parts a backup or restore works on at once: one
// per core, at least two (while one part waits for the store another is
// decoded) and at most four, which keeps memory to a few partSize buffers.
func partWorkers() int { return min(max(runtime.GOMAXPROCS(0), 2), 4) }

// partWriter takes a tar stream (Write) and stores it in parts: each full
// part is compressed, sealed and uploaded by one of a few workers while the
// next is being filled. Close stores the last part and waits for all of
// them. After an error every later Write and Close fails with it; the
// caller deletes what was uploaded (the parts of the backup's ID).
type partWriter struct {
	ctx  context.Context
	a    *Archive
	id   string
	size int // of a part

	cur  []byte      // the part being filled
	free chan []byte // buffers not in use
	jobs chan partJob
	wg   sync.WaitGroup

	mu    sync.Mutex
	parts []Part
	err   error
}

type partJob struct {
	i   int
	buf []byte
}

func newPartWriter(ctx context.Context, a *Archive, id string) *partWriter {
	n := partWorkers()
	size := a.partSize
	if size == 0 {
		size = partSize
	}
	w := &partWriter{ctx: ctx, a: a, id: id, size: size, free: make(chan []byte, n+1), jobs: make(chan partJob)}
	for range n + 1 {
		w.free <- nil // allocated on first use
	}
	w.cur = w.buffer()
	w.wg.Add(n)
	for range n {
		go w.work()
	}
	return w
}

// buffer returns an empty part buffer, waiting for one to come free.
func (w *partWriter) buffer() []byte {
	b := <-w.free
	if b == nil {
		b = make([]byte, 0, w.size)
	}
	return b[:0]
}

func (w *partWriter) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *partWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *partWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if err := w.failed(); err != nil {
			return written, err
		}
		if len(w.cur) == w.size {
			w.send()
		}
		k := copy(w.cur[len(w.cur):w.size], p)
		w.cur = w.cur[:len(w.cur)+k]
		p = p[k:]
		written += k
	}
	return written, nil
}

// send hands the full current part to a worker and starts the next.
func (w *partWriter) send() {
	w.mu.Lock()
	i := len(w.parts)
	w.parts = append(w.parts, Part{})
	w.mu.Unlock()
	w.jobs <- partJob{i: i, buf: w.cur}
	w.cur = w.buffer()
}

func (w *partWriter) work() {
	defer w.wg.Done()
	var obj bytes.Buffer
	for j := range w.jobs {
		if w.failed() == nil {
			p, err := w.store(&obj, j)
			if err != nil {
				w.fail(fmt.Errorf("part %d: %w", j.i, err))
			} else {
				w.mu.Lock()
				w.parts[j.i] = p
				w.mu.Unlock()
			}
		}
		w.free <- j.buf
	}
}

// store compresses, seals and uploads one part. Its object is built in
// memory, so the store learns its size and creates it in one request.
func (w *partWriter) store(obj *bytes.Buffer, j partJob) (Part, error) {
	obj.Reset()
	ow, err := newObjectWriter(obj, w.a.key, 1)
	if err != nil {
		return Part{}, err
	}
	if _, err := ow.Write(j.buf); err != nil {
		return Part{}, err
	}
	if err := ow.Close(); err != nil {
		return Part{}, err
	}
	stored := int64(obj.Len())
	if err := w.a.store.Put(w.ctx, w.a.partKey(w.id, j.i), bytes.NewReader(obj.Bytes()), stored, PutOptions{CreateOnly: true}); err != nil {
		return Part{}, err
	}
	return Part{RawBytes: int64(len(j.buf)), StoredBytes: stored, SHA256: ow.Sum()}, nil
}

// Close stores the last part (even an empty stream has one) and waits for
// the workers. It returns the parts in order.
func (w *partWriter) Close() ([]Part, error) {
	if w.failed() == nil && (len(w.cur) > 0 || len(w.parts) == 0) {
		w.send()
	}
	close(w.jobs)
	w.wg.Wait()
	if err := w.failed(); err != nil {
		return nil, err
	}
	if err := w.ctx.Err(); err != nil {
		return nil, err
	}
	return w.parts, nil
}

// Abort stops the workers after a failure elsewhere, without storing the
// part being filled.
func (w *partWriter) Abort(err error) {
	w.fail(err)
	close(w.jobs)
	w.wg.Wait()
}

// partReader reads a version 2 backup's tar back: workers fetch, decrypt,
// decompress and check parts ahead of the reader, each into a buffer of its
// own, and Read returns them in order. At most partWorkers()+1 parts are in
// memory. Every part is checked whole (its trailer, and its length and
// SHA-256 against the manifest) before the first of its bytes is returned,
// so what Read returns was stored by this backup, in this place.
type partReader struct {
	ctx    context.Context
	cancel context.CancelFunc
	a      *Archive
	id     string
	parts  []Part
	bufLen int // the longest part, plus one byte

	results []chan partResult
	free    chan []byte
	next    int    // the part Read is in
	cur     []byte // what is left of it
	held    []byte // its buffer, returned to free once read
	err     error
	wg      sync.WaitGroup
}

type partResult struct {
	buf []byte
	err error
}

func newPartReader(ctx context.Context, a *Archive, m Manifest) *partReader {
	ctx, cancel := context.WithCancel(ctx)
	n := min(partWorkers(), len(m.Parts))
	r := &partReader{ctx: ctx, cancel: cancel, a: a, id: m.ID, parts: m.Parts,
		results: make([]chan partResult, len(m.Parts)), free: make(chan []byte, n+1)}
	for _, p := range m.Parts {
		r.bufLen = max(r.bufLen, int(p.RawBytes)+1)
	}
	for i := range r.results {
		r.results[i] = make(chan partResult, 1)
	}
	for range n + 1 {
		r.free <- nil
	}
	jobs := make(chan partJob)
	r.wg.Add(n + 1)
	go func() {
		// Hands out parts in order, each with a free buffer: the reader
		// frees one as it finishes a part. Buffers are taken in the order
		// of the parts, so the part the reader waits for never waits for
		// a buffer held by a later one.
		defer r.wg.Done()
		defer close(jobs)
		for i := range r.parts {
			var buf []byte
			select {
			case <-ctx.Done():
				return
			case buf = <-r.free:
			}
			select {
			case <-ctx.Done():
				return
			case jobs <- partJob{i: i, buf: buf}:
			}
		}
	}()
	for range n {
		go func() {
			defer r.wg.Done()
			dec, decErr := newBlockDecoder(a.key, r.bufLen)
			if decErr == nil {
				defer dec.Close()
			}
			for j := range jobs {
				buf, err := j.buf, decErr
				if err == nil {
					buf, err = r.fetch(dec, j.i, buf)
				}
				r.results[j.i] <- partResult{buf: buf, err: err}
			}
		}()
	}
	return r
}

// fetch reads part i into buf and checks it.
func (r *partReader) fetch(dec *blockDecoder, i int, buf []byte) ([]byte, error) {
	p := r.parts[i]
	key := r.a.partKey(r.id, i)
	if buf == nil {
		buf = make([]byte, 0, r.bufLen)
	}
	rc, err := r.a.store.Get(r.ctx, key)
	if err != nil {
		return buf, err
	}
	defer rc.Close()
	out, sum, err := dec.decode(rc, buf)
	switch {
	case err != nil:
		return buf, fmt.Errorf("store %s: %s: %w", r.a.store, key, err)
	case int64(len(out)) != p.RawBytes:
		return buf, fmt.Errorf("store %s: %s: %w: %d bytes stored, the manifest says %d", r.a.store, key, ErrCorrupt, len(out), p.RawBytes)
	case sum != p.SHA256:
		return buf, fmt.Errorf("store %s: %s: %w: its sha256 is %s, the manifest says %s", r.a.store, key, ErrCorrupt, sum, p.SHA256)
	}
	return out, nil
}

func (r *partReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.held != nil {
			r.free <- r.held
			r.held = nil
		}
		if r.next == len(r.parts) {
			r.err = io.EOF
			continue
		}
		res := <-r.results[r.next]
		if res.err != nil {
			r.err = fmt.Errorf("part %d: %w", r.next, res.err)
			r.cancel()
			continue
		}
		r.next++
		r.cur, r.held = res.buf, res.buf
	}
	k := copy(p, r.cur)
	r.cur = r.cur[k:]
	return k, nil
}

// Close stops the workers and waits for them.
func (r *partReader) Close() error {
	r.cancel()
	// The dispatcher, blocked on a free buffer, sees the cancellation;
	// results are buffered, so no worker blocks sending.
	r.wg.Wait()
	return nil
}
