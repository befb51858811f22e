package backup

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Manifest describes a complete base backup. It is stored as JSON beside the
// backup's data and written last, so a backup is listed only once all of
// its data is in the store.
type Manifest struct {
	Version int    `json:"version"` // manifestVersion
	ID      string `json:"id"`
	Cluster string `json:"cluster"`
	Member  string `json:"member,omitempty"`      // the member it was taken from
	From    string `json:"backup_from,omitempty"` // "primary" or "standby", from backup_label

	Timeline     uint32 `json:"timeline"`      // timeline the backup started on
	StopTimeline uint32 `json:"stop_timeline"` // timeline it ended on (differs if a promotion happened meanwhile)
	StartLSN     LSN    `json:"start_lsn"`     // replay starts here (START WAL LOCATION)
	StopLSN      LSN    `json:"stop_lsn"`      // the backup is consistent once replay reaches here
	StartWAL     string `json:"start_wal"`     // the segment holding StartLSN: the oldest WAL the backup needs
	// WALSegmentSize is the cluster's WAL segment size, needed to walk
	// segment names.
	WALSegmentSize uint64 `json:"wal_segment_size"`

	StartTime time.Time `json:"start_time"`
	StopTime  time.Time `json:"stop_time"` // when the last byte was stored: recovery to any later time can start from this backup

	RawBytes    int64  `json:"raw_bytes"`    // size of the tar
	StoredBytes int64  `json:"stored_bytes"` // size of the stored object
	SHA256      string `json:"sha256"`       // of the tar
	KeyID       string `json:"key_id,omitempty"`
}

const manifestVersion = 1

// Encrypted reports whether the backup's data is encrypted.
func (m Manifest) Encrypted() bool { return m.KeyID != "" }

// BackupInfo is what PutBackup is told about a backup besides its tar.
type BackupInfo struct {
	Member string // member the backup is taken from
	// StartTime is when pg_basebackup started; zero means when PutBackup
	// was called.
	StartTime time.Time
	// WALSegmentSize is the cluster's (SHOW wal_segment_size); zero means
	// DefaultWALSegmentSize. PutBackup checks it against backup_label.
	WALSegmentSize uint64
	// Wait, if set, is called once the stream has been read and stored,
	// before the manifest is written; an error fails the backup. Pass the
	// producer's exit (pg_basebackup's cmd.Wait), so that a backup whose
	// producer failed after writing its tar is never listed.
	Wait func() error
}

var backupIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// NewBackupID returns an ID for a backup started at t: its UTC time to the
// millisecond, e.g. 20260102T150405.123Z, so IDs sort by time and two
// backups asked for in one second get different ones.
func NewBackupID(t time.Time) string { return t.UTC().Format("20060102T150405.000Z") }

func checkBackupID(id string) error {
	if !backupIDRE.MatchString(id) || len(id) > 128 {
		return fmt.Errorf("backup id %q: use letters, digits, '.', '_' and '-'", id)
	}
	return nil
}

func (a *Archive) backupPrefix() string           { return a.cluster + "/backups/" }
func (a *Archive) backupDataKey(id string) string { return a.backupPrefix() + id + "/base.tar.zst" }
func (a *Archive) manifestKey(id string) string   { return a.backupPrefix() + id + "/manifest.json" }

// PutBackup stores a base backup: r is a tar stream as `pg_basebackup -D -
// -Ft -X none` writes it (one tar, backup_label in it, and backup_manifest
// as its last member, which pg_basebackup adds unless run with
// --no-manifest). The tar is compressed, encrypted and uploaded as it is
// read, never staged on disk. Start and stop LSN and timelines come from
// backup_label and backup_manifest's WAL-Ranges.
//
// The manifest is written last and never overwrites one, so a backup ID is
// used once. On failure, what was uploaded is deleted (best effort; a
// leftover without a manifest is ignored, and ApplyRetention removes it).
// The WAL the backup needs (StartWAL onwards, through StopLSN) comes from
// the archive: the backup is restorable once that WAL is archived.
func (a *Archive) PutBackup(ctx context.Context, id string, r io.Reader, info BackupInfo) (Manifest, error) {
	m, err := a.putBackup(ctx, id, r, info)
	if err != nil {
		return Manifest{}, fmt.Errorf("store backup %s of %s: %w", id, a.cluster, err)
	}
	return m, nil
}

func (a *Archive) putBackup(ctx context.Context, id string, r io.Reader, info BackupInfo) (Manifest, error) {
	if err := checkBackupID(id); err != nil {
		return Manifest{}, err
	}
	segSize := info.WALSegmentSize
	if segSize == 0 {
		segSize = DefaultWALSegmentSize
	}
	if !validSegSize(segSize) {
		return Manifest{}, fmt.Errorf("WAL segment size %d: want a power of two from 1 MiB to 1 GiB", segSize)
	}
	start := info.StartTime
	if start.IsZero() {
		start = a.Now()
	}
	if _, err := a.store.Stat(ctx, a.manifestKey(id)); err == nil {
		return Manifest{}, fmt.Errorf("a backup with that id exists already")
	} else if !errors.Is(err, ErrNotFound) {
		return Manifest{}, err
	}

	dataKey := a.backupDataKey(id)
	pr, pw := io.Pipe()
	stored := &countingWriter{w: pw}
	ow, err := newObjectWriter(stored, a.key, 0)
	if err != nil {
		return Manifest{}, err
	}
	var facts tarFacts
	scanned := make(chan error, 1)
	go func() {
		err := func() error {
			tee := io.TeeReader(bufio.NewReaderSize(r, 1<<20), ow)
			var err error
			if facts, err = scanTar(tee); err != nil {
				return err
			}
			// What follows the end-of-archive marker (tar pads to a
			// record size) is stored too, so the object is the stream.
			if _, err := io.Copy(io.Discard, tee); err != nil {
				return fmt.Errorf("read backup: %w", err)
			}
			return ow.Close()
		}()
		pw.CloseWithError(err)
		scanned <- err
	}()
	putErr := a.store.Put(ctx, dataKey, pr, -1, PutOptions{})
	// Unblocks the writer side if Put gave up early.
	pr.CloseWithError(errUploadEnded)
	scanErr := <-scanned
	if scanErr == nil && putErr == nil && info.Wait != nil {
		if err := info.Wait(); err != nil {
			scanErr = fmt.Errorf("the backup's producer failed: %w", err)
		}
	}
	if scanErr != nil || putErr != nil {
		a.deleteQuietly(dataKey)
		switch {
		case scanErr != nil && !errors.Is(scanErr, errUploadEnded):
			return Manifest{}, scanErr // the cause; Put only saw it
		case putErr != nil:
			return Manifest{}, putErr
		default:
			return Manifest{}, scanErr
		}
	}
	stop := a.Now()

	m, err := facts.manifest(segSize)
	if err != nil {
		a.deleteQuietly(dataKey)
		return Manifest{}, err
	}
	m.Version = manifestVersion
	m.ID = id
	m.Cluster = a.cluster
	m.Member = info.Member
	m.WALSegmentSize = segSize
	m.StartTime = start.UTC()
	m.StopTime = stop.UTC()
	m.RawBytes = ow.Size()
	m.StoredBytes = stored.n
	m.SHA256 = ow.Sum()
	if a.key != nil {
		m.KeyID = a.key.ID()
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, err
	}
	if err := a.store.Put(ctx, a.manifestKey(id), bytes.NewReader(b), int64(len(b)), PutOptions{CreateOnly: true}); err != nil {
		if !errors.Is(err, ErrExists) {
			a.deleteQuietly(dataKey)
		}
		return Manifest{}, err
	}
	return m, nil
}

// deleteQuietly removes what a failed operation left, with a context of its
// own: the operation's may be what ended it.
func (a *Archive) deleteQuietly(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a.store.Delete(ctx, key)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// errUploadEnded stops the reading of a backup whose upload failed.
var errUploadEnded = errors.New("upload ended")

// tarFacts is what PutBackup learns from the tar's members.
type tarFacts struct {
	label       []byte // backup_label
	haveRanges  bool   // backup_manifest was there
	walRanges   []walRange
	labelInTar  bool
	memberCount int
}

// walRange is one entry of backup_manifest's "WAL-Ranges".
type walRange struct {
	Timeline uint32 `json:"Timeline"`
	Start    LSN    `json:"Start-LSN"`
	End      LSN    `json:"End-LSN"`
}

// scanTar reads a tar stream to its end-of-archive marker, keeping
// backup_label and the WAL ranges of backup_manifest.
func scanTar(r io.Reader) (tarFacts, error) {
	var f tarFacts
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return f, fmt.Errorf("read backup tar: %w", err)
		}
		f.memberCount++
		switch strings.TrimPrefix(path.Clean(h.Name), "./") {
		case "backup_label":
			if f.label, err = io.ReadAll(io.LimitReader(tr, 1<<20)); err != nil {
				return f, fmt.Errorf("read backup tar: backup_label: %w", err)
			}
			f.labelInTar = true
		case "backup_manifest":
			var bm struct {
				WALRanges []walRange `json:"WAL-Ranges"`
			}
			if err := json.NewDecoder(tr).Decode(&bm); err != nil {
				return f, fmt.Errorf("read backup tar: backup_manifest: %w", err)
			}
			f.walRanges = bm.WALRanges
			f.haveRanges = true
		}
	}
	return f, nil
}

// manifest fills a Manifest's WAL positions from what the tar held.
func (f tarFacts) manifest(segSize uint64) (Manifest, error) {
	var m Manifest
	if !f.labelInTar {
		if f.memberCount == 0 {
			return m, errors.New("the backup stream is empty or not a tar")
		}
		return m, errors.New("no backup_label in the tar: not a base backup from pg_basebackup (-Ft -D -)")
	}
	lb, err := parseBackupLabel(f.label)
	if err != nil {
		return m, err
	}
	if !f.haveRanges || len(f.walRanges) == 0 {
		return m, errors.New("no backup_manifest with WAL-Ranges in the tar: run pg_basebackup with manifests (the default), to know where the backup ends")
	}
	// Where replay of the backup ends: the last range's end, whatever order
	// pg_basebackup lists them in.
	stop := f.walRanges[0]
	first := f.walRanges[0]
	for _, wr := range f.walRanges {
		if wr.End > stop.End {
			stop = wr
		}
		if wr.Start < first.Start {
			first = wr
		}
	}
	if first.Start != lb.startLSN || first.Timeline != lb.timeline {
		return m, fmt.Errorf("backup_label starts at %s on timeline %d but backup_manifest at %s on timeline %d", lb.startLSN, lb.timeline, first.Start, first.Timeline)
	}
	if want := segmentName(lb.timeline, lsnSegNo(lb.startLSN, segSize), segSize); want != lb.startWAL {
		return m, fmt.Errorf("backup_label puts %s in segment %s, but with %d-byte segments it is in %s: is the WAL segment size right?", lb.startLSN, lb.startWAL, segSize, want)
	}
	m.From = lb.from
	m.Timeline = lb.timeline
	m.StartLSN = lb.startLSN
	m.StartWAL = lb.startWAL
	m.StopLSN = stop.End
	m.StopTimeline = stop.Timeline
	return m, nil
}

// backupLabel is what PutBackup uses of backup_label.
type backupLabel struct {
	startLSN LSN
	startWAL string
	timeline uint32
	from     string
}

var startWALRE = regexp.MustCompile(`^([0-9A-Fa-f]+/[0-9A-Fa-f]+) \(file ([0-9A-F]{24})\)$`)

// parseBackupLabel reads the lines of backup_label:
//
//	START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
//	CHECKPOINT LOCATION: 0/2000060
//	BACKUP METHOD: streamed
//	BACKUP FROM: primary
//	START TIME: 2024-05-01 12:00:00 UTC
//	LABEL: pg_basebackup base backup
//	START TIMELINE: 1
func parseBackupLabel(b []byte) (backupLabel, error) {
	var lb backupLabel
	var haveWAL, haveTLI bool
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimRight(line, "\r"), ": ")
		if !ok {
			continue
		}
		switch k {
		case "START WAL LOCATION":
			mm := startWALRE.FindStringSubmatch(v)
			if mm == nil {
				return lb, fmt.Errorf("backup_label: START WAL LOCATION %q", v)
			}
			lsn, err := ParseLSN(mm[1])
			if err != nil {
				return lb, fmt.Errorf("backup_label: %w", err)
			}
			lb.startLSN, lb.startWAL, haveWAL = lsn, mm[2], true
		case "START TIMELINE":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				return lb, fmt.Errorf("backup_label: START TIMELINE %q", v)
			}
			lb.timeline, haveTLI = uint32(n), true
		case "BACKUP FROM":
			lb.from = v
		}
	}
	if !haveWAL || !haveTLI {
		return lb, errors.New("backup_label lacks START WAL LOCATION or START TIMELINE")
	}
	if f, err := parseWALName(lb.startWAL); err != nil || f.tli != lb.timeline {
		return lb, fmt.Errorf("backup_label: segment %s is not on START TIMELINE %d", lb.startWAL, lb.timeline)
	}
	return lb, nil
}

// ListBackups returns the manifests of the complete backups, oldest first.
func (a *Archive) ListBackups(ctx context.Context) ([]Manifest, error) {
	objs, err := a.store.List(ctx, a.backupPrefix())
	if err != nil {
		return nil, fmt.Errorf("list backups of %s: %w", a.cluster, err)
	}
	var out []Manifest
	for _, o := range objs {
		id, ok := a.manifestID(o.Key)
		if !ok {
			continue
		}
		m, err := a.Manifest(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	sortManifests(out)
	return out, nil
}

// sortManifests orders backups oldest first: by start, then ID.
func sortManifests(ms []Manifest) {
	sort.SliceStable(ms, func(i, j int) bool {
		if !ms[i].StartTime.Equal(ms[j].StartTime) {
			return ms[i].StartTime.Before(ms[j].StartTime)
		}
		return ms[i].ID < ms[j].ID
	})
}

// manifestID returns the backup ID of a manifest's key.
func (a *Archive) manifestID(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, a.backupPrefix())
	if !ok {
		return "", false
	}
	id, ok := strings.CutSuffix(rest, "/manifest.json")
	return id, ok && checkBackupID(id) == nil
}

// Manifest returns the manifest of backup id; ErrNotFound if there is no
// complete backup of that ID.
func (a *Archive) Manifest(ctx context.Context, id string) (Manifest, error) {
	if err := checkBackupID(id); err != nil {
		return Manifest{}, err
	}
	rc, err := a.store.Get(ctx, a.manifestKey(id))
	if errors.Is(err, ErrNotFound) {
		return Manifest{}, fmt.Errorf("backup %s of %s: %w", id, a.cluster, ErrNotFound)
	}
	if err != nil {
		return Manifest{}, err
	}
	defer rc.Close()
	var m Manifest
	dec := json.NewDecoder(io.LimitReader(rc, 1<<20))
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("backup %s of %s: manifest: %w: %v", id, a.cluster, ErrCorrupt, err)
	}
	if m.Version != manifestVersion || m.ID != id || !validSegSize(m.WALSegmentSize) {
		return Manifest{}, fmt.Errorf("backup %s of %s: manifest: %w: version %d, id %q, segment size %d", id, a.cluster, ErrCorrupt, m.Version, m.ID, m.WALSegmentSize)
	}
	return m, nil
}

// Owner is who restored files belong to.
type Owner struct{ UID, GID int }

// GetBackup restores backup id into the directory dest, which must not
// exist: it is built in a sibling directory (dest + ".restoring"), every
// file and directory fsynced, and renamed to dest only once the whole tar is
// extracted and its checksum verified. With owner, what it creates belongs
// to owner (for a postgres that runs as another user than the caller).
//
// dest is then a data directory without WAL: start it with recovery.signal
// and a restore_command that fetches from this archive (RecoverySettings).
func (a *Archive) GetBackup(ctx context.Context, id, dest string, owner *Owner) (Manifest, error) {
	m, err := a.getBackup(ctx, id, dest, owner)
	if err != nil {
		return Manifest{}, fmt.Errorf("restore backup %s of %s into %s: %w", id, a.cluster, dest, err)
	}
	return m, nil
}

func (a *Archive) getBackup(ctx context.Context, id, dest string, owner *Owner) (Manifest, error) {
	m, err := a.Manifest(ctx, id)
	if err != nil {
		return Manifest{}, err
	}
	if _, err := os.Lstat(dest); err == nil {
		return Manifest{}, errors.New("it exists already")
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Manifest{}, err
	}
	tmp := filepath.Clean(dest) + ".restoring"
	if err := os.RemoveAll(tmp); err != nil {
		return Manifest{}, err
	}
	rc, err := a.store.Get(ctx, a.backupDataKey(id))
	if err != nil {
		return Manifest{}, err
	}
	defer rc.Close()
	or, err := openObject(rc, a.key, 0)
	if err != nil {
		return Manifest{}, err
	}
	defer or.Close()
	if err := extractTar(ctx, or, tmp, owner); err != nil {
		os.RemoveAll(tmp)
		return Manifest{}, err
	}
	// The trailer is checked at the end of the object, after what follows
	// the tar's end-of-archive marker.
	if _, err := io.Copy(io.Discard, or); err != nil {
		os.RemoveAll(tmp)
		return Manifest{}, err
	}
	if or.Sum() != m.SHA256 {
		os.RemoveAll(tmp)
		return Manifest{}, fmt.Errorf("%w: the data's sha256 is %s, the manifest says %s", ErrCorrupt, or.Sum(), m.SHA256)
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.RemoveAll(tmp)
		return Manifest{}, err
	}
	if err := syncDir(filepath.Dir(dest)); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// extractTar writes a tar stream's members under dir, which it creates
// (mode 0700: postgres requires it of a data directory). Members that would
// land outside dir are refused. Every file is fsynced as it is closed, and
// every directory at the end.
func extractTar(ctx context.Context, r io.Reader, dir string, owner *Owner) error {
	chown := func(p string) error {
		if owner == nil {
			return nil
		}
		return os.Lchown(p, owner.UID, owner.GID)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	if err := chown(dir); err != nil {
		return err
	}
	dirs := []string{dir}
	var mkdir func(p string, mode fs.FileMode) error
	mkdir = func(p string, mode fs.FileMode) error {
		fi, err := os.Lstat(p)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%w: %s is in the tar as a directory and as something else", ErrCorrupt, p)
			}
			return nil
		}
		// A member may come before its directory's own entry.
		if err := mkdir(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err := os.Mkdir(p, mode); err != nil {
			return err
		}
		dirs = append(dirs, p)
		return chown(p)
	}
	buf := make([]byte, 1<<20)
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read backup tar: %w", err)
		}
		name := path.Clean(h.Name)
		if name == "." {
			continue
		}
		if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("%w: tar member %q is outside the data directory", ErrCorrupt, h.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := mkdir(target, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := mkdir(filepath.Dir(target), 0o700); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode|0o600)
			if err != nil {
				return err
			}
			_, err = io.CopyBuffer(f, tr, buf)
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = chown(target)
			}
			if err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
		case tar.TypeSymlink:
			// pg_tblspc/<oid> links to a tablespace outside the data
			// directory; pg_basebackup -D - refuses clusters with
			// tablespaces, so this is only for completeness.
			if err := mkdir(filepath.Dir(target), 0o700); err != nil {
				return err
			}
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
			if err := chown(target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: tar member %q has type %q, which a base backup does not contain", ErrCorrupt, h.Name, h.Typeflag)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syncDir(dirs[i]); err != nil {
			return err
		}
	}
	return nil
}

// DeleteBackup deletes backup id: its manifest first, so that a deletion
// cut short leaves an incomplete backup, which is ignored, rather than a
// listed one without data.
func (a *Archive) DeleteBackup(ctx context.Context, id string) error {
	if err := checkBackupID(id); err != nil {
		return err
	}
	if err := a.store.Delete(ctx, a.manifestKey(id)); err != nil {
		return fmt.Errorf("delete backup %s of %s: %w", id, a.cluster, err)
	}
	if err := a.store.Delete(ctx, a.backupDataKey(id)); err != nil {
		return fmt.Errorf("delete backup %s of %s: %w", id, a.cluster, err)
	}
	return nil
}
