package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Archive is one cluster's backups in a store: its archived WAL and its base
// backups, under keys that start with the cluster's name:
//
//	<cluster>/wal/<timeline>/<WAL file name>.zst     e.g. demo/wal/00000001/000000010000000000000003.zst
//	<cluster>/backups/<id>/base.tar.NNNNNN.zst       the base backup's tar, in parts (parts.go)
//	<cluster>/backups/<id>/base.tar.zst              the same, in one object (manifest version 1)
//	<cluster>/backups/<id>/manifest.json             written last: a backup without one is incomplete
//
// Every .zst object is in the object format (see object.go): zstd, a SHA-256
// trailer, and AES-256-GCM when the Archive has a key; an Archive with a key
// reads only encrypted objects. Manifests are plain JSON so that backups can
// be listed without the key; they hold no data, and the data they describe
// is checked against them when it is read.
type Archive struct {
	store   Store
	cluster string
	key     *Key
	// partSize is the size of a base backup's parts; 0 is partSize.
	partSize int

	// Now is the clock; tests replace it.
	Now func() time.Time
}

var clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// NewArchive returns the archive of cluster in store, encrypting what it
// writes with key unless key is nil. It does no I/O.
func NewArchive(store Store, cluster string, key *Key) (*Archive, error) {
	if !clusterNameRE.MatchString(cluster) || len(cluster) > 128 {
		return nil, fmt.Errorf("cluster name %q cannot name an archive: use letters, digits, '.', '_' and '-'", cluster)
	}
	return &Archive{store: store, cluster: cluster, key: key, Now: time.Now}, nil
}

// OpenArchive opens the store at storeURL (OpenStore) and returns cluster's
// archive in it, with the key in keyFile (LoadKey), or unencrypted when
// keyFile is "". It is what `pgfleet wal-push` and `wal-fetch` do first.
func OpenArchive(ctx context.Context, storeURL, cluster, keyFile string) (*Archive, error) {
	var key *Key
	if keyFile != "" {
		var err error
		if key, err = LoadKey(keyFile); err != nil {
			return nil, err
		}
	}
	store, err := OpenStore(ctx, storeURL)
	if err != nil {
		return nil, err
	}
	return NewArchive(store, cluster, key)
}

// OpenArchiveKey is OpenArchive with the key given as text (hex or
// base64, as a key file holds it) rather than a file; "" means none. The
// agent and the API keep a cluster's key in the state store, not on disk.
func OpenArchiveKey(ctx context.Context, storeURL, cluster, keyText string) (*Archive, error) {
	var key *Key
	if keyText != "" {
		var err error
		if key, err = ParseKey(keyText); err != nil {
			return nil, err
		}
	}
	store, err := OpenStore(ctx, storeURL)
	if err != nil {
		return nil, err
	}
	return NewArchive(store, cluster, key)
}

// Store returns the store the archive is in.
func (a *Archive) Store() Store { return a.store }

// Cluster returns the name of the cluster the archive belongs to.
func (a *Archive) Cluster() string { return a.cluster }

func (a *Archive) walPrefix() string { return a.cluster + "/wal/" }

func (a *Archive) walKey(f walFile) string {
	return a.walPrefix() + f.name[:8] + "/" + f.name + ".zst"
}

// ErrConflict is wrapped into PushWAL's error when the store holds a
// different file under the same name.
var ErrConflict = errors.New("archived with different content")

// PushWAL archives the WAL file at path (a segment, a partial segment, a
// timeline history file or a backup history file: what archive_command's %p
// names). It returns nil only once the object is durable in the store.
//
// Archiving a file that is already archived with the same content succeeds,
// which is what postgres needs when it retries after a crash between the
// upload and recording its success. A different file under the same name is
// never overwritten: that is an error wrapping ErrConflict, and it usually
// means two clusters archive into one place.
func (a *Archive) PushWAL(ctx context.Context, path string) error {
	name := filepath.Base(path)
	if err := a.pushWAL(ctx, path, name); err != nil {
		return fmt.Errorf("archive %s: %w", name, err)
	}
	return nil
}

func (a *Archive) pushWAL(ctx context.Context, path, name string) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = a.pushWALFrom(ctx, name, src)
	return err
}

// PushedWAL is what PushWALFrom archived.
type PushedWAL struct {
	SHA256 string // of the content, in hex
	Size   int64
}

// PushWALFrom archives the WAL file name with the content read from src,
// as PushWAL does, and says what content is now archived under name: the
// caller can tell later, by comparing, whether a file is the one archived.
func (a *Archive) PushWALFrom(ctx context.Context, name string, src io.Reader) (PushedWAL, error) {
	p, err := a.pushWALFrom(ctx, name, src)
	if err != nil {
		return PushedWAL{}, fmt.Errorf("archive %s: %w", name, err)
	}
	return p, nil
}

func (a *Archive) pushWALFrom(ctx context.Context, name string, src io.Reader) (PushedWAL, error) {
	f, err := parseWALName(name)
	if err != nil {
		return PushedWAL{}, err
	}
	// A segment is 16 MiB by default and compresses well, so the object is
	// built in memory: its size is then known, and the store can create it
	// with one conditional request. zstd's fastest level: WAL compresses
	// as small with it as with the default, in four fifths of the time,
	// and archive_command waits for it.
	var buf bytes.Buffer
	w, err := newObjectWriterLevel(&buf, a.key, 1, zstd.SpeedFastest)
	if err != nil {
		return PushedWAL{}, err
	}
	if _, err := io.Copy(w, src); err != nil {
		return PushedWAL{}, fmt.Errorf("read %s: %w", name, err)
	}
	if err := w.Close(); err != nil {
		return PushedWAL{}, err
	}
	pushed := PushedWAL{SHA256: w.Sum(), Size: w.Size()}
	key := a.walKey(f)
	err = a.store.Put(ctx, key, bytes.NewReader(buf.Bytes()), int64(buf.Len()), PutOptions{CreateOnly: true})
	switch {
	case err == nil:
		return pushed, nil
	case !errors.Is(err, ErrExists):
		return PushedWAL{}, err
	}
	have, _, err := a.objectSum(ctx, key)
	if err != nil {
		return PushedWAL{}, fmt.Errorf("already archived, and reading the archived copy back to compare failed: %w", err)
	}
	if have != w.Sum() {
		return PushedWAL{}, fmt.Errorf("%w: %s holds a different %s (sha256 %.12s…, this one %.12s…) and it is never overwritten; is another cluster archiving under the name %q?",
			ErrConflict, a.store, name, have, w.Sum(), a.cluster)
	}
	return pushed, nil
}

// objectSum reads an object to its end and returns its plaintext's SHA-256
// (checked against its trailer) and size.
func (a *Archive) objectSum(ctx context.Context, key string) (string, int64, error) {
	rc, err := a.store.Get(ctx, key)
	if err != nil {
		return "", 0, err
	}
	defer rc.Close()
	sum, size, err := copyObject(rc, a.key, io.Discard)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", key, err)
	}
	return sum, size, nil
}

// FetchWAL restores the archived WAL file name (restore_command's %f) to
// dest (%p). It writes a temporary file beside dest and renames it into
// place once the content is complete and its checksum verified, so dest
// never holds a partial or corrupt file. A file that is not archived is an
// error wrapping ErrNotFound; postgres asks for such files as a matter of
// course (the next timeline's history file, the segment after the last one),
// and restore_command must then fail quietly.
//
// With a key, an unencrypted object is refused (ErrNotEncrypted) before a
// byte is written: postgres replays whatever restore_command gives it, so a
// WAL file planted in the store by anyone who can write to it must never
// reach pg_wal.
func (a *Archive) FetchWAL(ctx context.Context, name, dest string) error {
	if err := a.fetchWAL(ctx, name, dest); err != nil {
		return fmt.Errorf("fetch %s: %w", name, err)
	}
	return nil
}

func (a *Archive) fetchWAL(ctx context.Context, name, dest string) error {
	return writeFile(dest, true, func(w io.Writer) error { return a.readWAL(ctx, name, w) })
}

// ReadWAL writes the content of the archived WAL file name to dst, and
// returns nil only once all of it was written and checked, as FetchWAL
// checks it. On an error, what was written to dst is not the file and must
// be discarded. It is for a caller that keeps the file where a crash
// removes it anyway (the agent's spool), and so needs no fsync.
func (a *Archive) ReadWAL(ctx context.Context, name string, dst io.Writer) error {
	if err := a.readWAL(ctx, name, dst); err != nil {
		return fmt.Errorf("fetch %s: %w", name, err)
	}
	return nil
}

func (a *Archive) readWAL(ctx context.Context, name string, dst io.Writer) error {
	f, err := parseWALName(name)
	if err != nil {
		return err
	}
	key := a.walKey(f)
	rc, err := a.store.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, _, err = copyObject(rc, a.key, dst)
	if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrWrongKey) || errors.Is(err, ErrNotEncrypted) {
		return fmt.Errorf("store %s: %s: %w", a.store, key, err)
	}
	return err
}

// WriteFileAtomic writes r to a temporary file beside path, fsyncs it and
// renames it to path: a crash or a failing r leaves path as it was.
func WriteFileAtomic(path string, r io.Reader) error {
	return writeFile(path, true, func(w io.Writer) error {
		_, err := io.Copy(w, r)
		return err
	})
}

// WriteFileRenamed is WriteFileAtomic without the fsyncs: a failing r
// leaves path as it was, and path never holds part of r, but a crash may
// lose it. It is for files whose reader makes durable what it keeps
// (restore_command's, which postgres keeps with a durable_rename).
func WriteFileRenamed(path string, r io.Reader) error {
	return writeFile(path, false, func(w io.Writer) error {
		// In large pieces: os.File's ReadFrom would copy a WAL segment
		// from a socket in 32 KiB reads and writes.
		_, err := io.CopyBuffer(struct{ io.Writer }{w}, r, make([]byte, 1<<20))
		return err
	})
}

// writeFile has write fill a temporary file beside path, then renames it
// to path; with sync, the file is fsynced before and its directory after.
func writeFile(path string, sync bool, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".pgfleet-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	err = write(tmp)
	if err == nil && sync {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if !sync {
		return nil
	}
	return syncDir(dir)
}

// ListWAL returns the names of the archived WAL files, by timeline, then
// by name.
func (a *Archive) ListWAL(ctx context.Context) ([]string, error) {
	objs, err := a.store.List(ctx, a.walPrefix())
	if err != nil {
		return nil, err
	}
	var names []string
	for _, o := range objs {
		name, ok := a.walName(o.Key)
		if ok {
			names = append(names, name)
		}
	}
	return names, nil
}

// walName returns the WAL file name an object key holds, or false for a
// key that is not an archived WAL file.
func (a *Archive) walName(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, a.walPrefix())
	if !ok {
		return "", false
	}
	dir, file, ok := strings.Cut(rest, "/")
	name, zst := strings.CutSuffix(file, ".zst")
	if !ok || !zst {
		return "", false
	}
	f, err := parseWALName(name)
	if err != nil || dir != f.name[:8] {
		return "", false
	}
	return name, true
}

// readWALFile returns the content of a small archived WAL file (a history
// file).
func (a *Archive) readWALFile(ctx context.Context, name string) ([]byte, error) {
	f, err := parseWALName(name)
	if err != nil {
		return nil, err
	}
	key := a.walKey(f)
	rc, err := a.store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	or, err := openObject(rc, a.key, 1)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	defer or.Close()
	b, err := io.ReadAll(or)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return b, nil
}
