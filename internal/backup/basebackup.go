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
	"sync"
	"time"

	"golang.org/x/sys/unix"
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

	RawBytes    int64 `json:"raw_bytes"`    // size of the tar
	StoredBytes int64 `json:"stored_bytes"` // size of the stored objects
	// SHA256 is the tar's, for a version 1 backup (one object); a version
	// 2 backup has one per part instead, which a restore checks as the
	// parts come in, in parallel, rather than hash the whole tar in order.
	SHA256 string `json:"sha256,omitempty"`
	KeyID  string `json:"key_id,omitempty"`
	// Parts are the objects a version 2 backup's tar is stored in, in
	// order (parts.go).
	Parts []Part `json:"parts,omitempty"`
}

// manifestVersion is what PutBackup writes: 2, the tar in parts. Version 1
// backups, one object each, are still listed, restored and verified.
const manifestVersion = 2

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

	pw := newPartWriter(ctx, a, id)
	facts, err := func() (tarFacts, error) {
		tee := io.TeeReader(bufio.NewReaderSize(r, 1<<20), pw)
		facts, err := scanTar(tee)
		if err != nil {
			return facts, err
		}
		// What follows the end-of-archive marker (tar pads to a record
		// size) is stored too, so the parts are the stream.
		if _, err := io.Copy(io.Discard, tee); err != nil {
			return facts, fmt.Errorf("read backup: %w", err)
		}
		return facts, nil
	}()
	var parts []Part
	if err != nil {
		pw.Abort(err)
	} else {
		parts, err = pw.Close()
	}
	if err == nil && info.Wait != nil {
		if werr := info.Wait(); werr != nil {
			err = fmt.Errorf("the backup's producer failed: %w", werr)
		}
	}
	if err != nil {
		a.deleteData(id)
		return Manifest{}, err
	}
	stop := a.Now()

	m, err := facts.manifest(segSize)
	if err != nil {
		a.deleteData(id)
		return Manifest{}, err
	}
	m.Version = manifestVersion
	m.ID = id
	m.Cluster = a.cluster
	m.Member = info.Member
	m.WALSegmentSize = segSize
	m.StartTime = start.UTC()
	m.StopTime = stop.UTC()
	m.Parts = parts
	for _, p := range parts {
		m.RawBytes += p.RawBytes
		m.StoredBytes += p.StoredBytes
	}
	if a.key != nil {
		m.KeyID = a.key.ID()
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, err
	}
	if err := a.store.Put(ctx, a.manifestKey(id), bytes.NewReader(b), int64(len(b)), PutOptions{CreateOnly: true}); err != nil {
		if !errors.Is(err, ErrExists) {
			a.deleteData(id)
		}
		return Manifest{}, err
	}
	return m, nil
}

// deleteData removes the data a failed backup left (its parts), with a
// context of its own: the backup's may be what ended it. Best effort: what
// is left without a manifest is ignored, and ApplyRetention removes it.
func (a *Archive) deleteData(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	objs, err := a.store.List(ctx, a.backupPrefix()+id+"/")
	if err != nil {
		return
	}
	for _, o := range objs {
		if o.Key != a.manifestKey(id) {
			a.store.Delete(ctx, o.Key)
		}
	}
}

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
// backup_label and the WAL ranges of backup_manifest. An entry that a
// restore would refuse (tarChecker) fails the backup now, when someone
// can look into it, rather than the restore that needs it.
func scanTar(r io.Reader) (tarFacts, error) {
	var f tarFacts
	var entries tarChecker
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
		name, err := entries.check(h)
		if err != nil {
			return f, fmt.Errorf("read backup tar: %w", err)
		}
		switch name {
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
	if (m.Version != 1 && m.Version != manifestVersion) || m.ID != id || !validSegSize(m.WALSegmentSize) {
		return Manifest{}, fmt.Errorf("backup %s of %s: manifest: %w: version %d, id %q, segment size %d", id, a.cluster, ErrCorrupt, m.Version, m.ID, m.WALSegmentSize)
	}
	if err := m.checkParts(); err != nil {
		return Manifest{}, fmt.Errorf("backup %s of %s: manifest: %w: %v", id, a.cluster, ErrCorrupt, err)
	}
	return m, nil
}

// checkParts refuses a manifest whose parts a restore could not read: a
// version 2 backup has at least one part, none longer than maxPartSize,
// and they add up to the tar.
func (m Manifest) checkParts() error {
	if m.Version == 1 {
		if len(m.Parts) > 0 {
			return errors.New("a version 1 backup has no parts")
		}
		return nil
	}
	if len(m.Parts) == 0 || len(m.Parts) > maxParts {
		return fmt.Errorf("%d parts", len(m.Parts))
	}
	var raw int64
	for i, p := range m.Parts {
		if p.RawBytes < 0 || p.RawBytes > maxPartSize {
			return fmt.Errorf("part %d holds %d bytes, more than a part may (%d)", i, p.RawBytes, maxPartSize)
		}
		raw += p.RawBytes
	}
	if raw != m.RawBytes {
		return fmt.Errorf("the parts hold %d bytes, the tar %d", raw, m.RawBytes)
	}
	return nil
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
//
// A backup that fails its checks leaves neither dest nor the sibling
// directory behind: with a key, a data object that is not encrypted is
// refused before anything is extracted (ErrNotEncrypted); a tar entry that
// would write outside dest, or that no base backup holds, stops the
// extraction (extractTar) and what was extracted is removed.
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
	data, err := a.openBackupData(ctx, m)
	if err != nil {
		return Manifest{}, err
	}
	err = extractTar(ctx, data, tmp, owner)
	if err == nil {
		// The data is checked to its end, past the tar's end-of-archive
		// marker.
		err = data.finish()
	}
	data.Close()
	if err != nil {
		os.RemoveAll(tmp)
		return Manifest{}, err
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

// backupData is a backup's tar as a restore reads it: decoded ahead of the
// extraction, by another goroutine (version 1: one object) or several
// (version 2: its parts), so that decompression, decryption and checksums
// run beside the writing of files rather than in turn with it.
type backupData struct {
	io.Reader
	// finish reads what is left and reports whether all of the data
	// checked against its manifest.
	finish func() error
	close  func()
}

func (d *backupData) Close() { d.close() }

// openBackupData starts reading the data of the backup m describes.
func (a *Archive) openBackupData(ctx context.Context, m Manifest) (*backupData, error) {
	if m.Version != 1 {
		pr := newPartReader(ctx, a, m)
		return &backupData{Reader: pr, close: func() { pr.Close() }, finish: func() error {
			_, err := io.Copy(io.Discard, pr)
			return err
		}}, nil
	}
	dataKey := a.backupDataKey(m.ID)
	rc, err := a.store.Get(ctx, dataKey)
	if err != nil {
		return nil, err
	}
	or, err := openObject(rc, a.key, 0)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("store %s: %s: %w", a.store, dataKey, err)
	}
	// A pipe hands the decoded data over in large pieces: the decoder
	// fills the next while the extraction writes the last.
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(pw, or, make([]byte, 1<<20))
		pw.CloseWithError(err)
		done <- err
	}()
	stop := func() error {
		pr.CloseWithError(errRestoreEnded)
		err := <-done
		or.Close()
		rc.Close()
		return err
	}
	d := &backupData{Reader: pr}
	var stopped bool
	var stopErr error
	d.close = func() {
		if !stopped {
			stopped, stopErr = true, stop()
		}
	}
	d.finish = func() error {
		if _, err := io.Copy(io.Discard, pr); err != nil {
			return err
		}
		d.close()
		if stopErr != nil {
			return stopErr
		}
		if or.Sum() != m.SHA256 {
			return fmt.Errorf("%w: the data's sha256 is %s, the manifest says %s", ErrCorrupt, or.Sum(), m.SHA256)
		}
		return nil
	}
	return d, nil
}

// errRestoreEnded stops the decoding of a backup whose restore ended.
var errRestoreEnded = errors.New("restore ended")

// tarChecker judges a base backup's tar entries, in order. A base backup is
// what pg_basebackup -Ft -D - writes (PutBackup stores its tar as it is):
// relative paths, directories and regular files. It holds no link: it
// skips symbolic links in the data directory, writes pg_wal as a
// directory, and refuses a cluster with tablespaces (pg_tblspc/<oid>
// links), which could only go to stdout as a tar of their own. Anything
// else (an absolute path, a path that climbs out with "..", any link) could
// only make a restore write outside the data directory, so it is refused.
type tarChecker struct{}

// check returns the path of entry h relative to the data directory
// (cleaned, slash-separated; "." for the directory itself), or an error that
// names the entry and says why no base backup holds it. It judges the
// entries alone; what is on disk during a restore is extractTar's to check.
func (c *tarChecker) check(h *tar.Header) (string, error) {
	refuse := func(why string) error {
		return fmt.Errorf("tar entry %q %s", h.Name, why)
	}
	name := path.Clean(h.Name)
	switch {
	case path.IsAbs(name):
		return "", refuse("is an absolute path; a base backup's paths are relative to the data directory")
	case name == ".." || strings.HasPrefix(name, "../"):
		return "", refuse(`climbs out of the data directory with ".."`)
	}
	switch h.Typeflag {
	case tar.TypeDir, tar.TypeReg:
	case tar.TypeSymlink:
		return "", refuse(fmt.Sprintf("is a symbolic link (to %q); a base backup of a pgfleet member holds none (pg_basebackup -D - refuses tablespaces)", h.Linkname))
	case tar.TypeLink:
		return "", refuse(fmt.Sprintf("is a hard link (to %q), which a base backup never holds", h.Linkname))
	default:
		return "", refuse(fmt.Sprintf("has type %q, which a base backup does not contain", h.Typeflag))
	}
	return name, nil
}

// extractTar writes a tar stream's members under dir, which it creates
// (mode 0700: postgres requires it of a data directory). Every file and
// directory is durable when it returns nil: rather than fsync each file as
// it is closed, which has the disk write one file at a time (and flush its
// cache each time) while the next waits, it writes them all and then has
// the kernel write the whole file system back at once (syncTree).
//
// Nothing is written outside dir. Entries are checked by tarChecker; then,
// in case the directory changes under the restore, each directory on an
// entry's path is looked at before anything is written beneath it and one
// that is a symbolic link is refused, not followed; and every write goes
// through an os.Root on dir, which never follows a symbolic link out of it.
// On an error dir is left as it is, partly written: the caller removes it
// (GetBackup extracts into a directory of its own and does so; os.RemoveAll
// removes a tablespace link, not what it points to).
func extractTar(ctx context.Context, r io.Reader, dir string, owner *Owner) error {
	root, err := makeRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	// Opened before anything is written, so that syncfs on it reports a
	// write-back error of any file written after.
	top, err := root.Open(".")
	if err != nil {
		return err
	}
	defer top.Close()
	chown := func(name string) error {
		if owner == nil {
			return nil
		}
		return root.Lchown(name, owner.UID, owner.GID)
	}
	if err := chown("."); err != nil {
		return err
	}
	dirs := []string{"."}
	// mkdirAll makes directory p and its parents as needed, from the top
	// down, so that each component is looked at before anything beneath
	// it is reached through it.
	mkdirAll := func(h *tar.Header, p string, mode fs.FileMode) error {
		if p == "." {
			return nil
		}
		parts := strings.Split(p, "/")
		for i := range parts {
			sub := strings.Join(parts[:i+1], "/")
			fi, err := root.Lstat(sub)
			switch {
			case err == nil && fi.Mode()&fs.ModeSymlink != 0:
				return fmt.Errorf("%w: tar entry %q would be written through the symbolic link %s, which a restore never follows", ErrCorrupt, h.Name, sub)
			case err == nil && !fi.IsDir():
				return fmt.Errorf("%w: tar entry %q: %s is in the tar as a directory and as something else", ErrCorrupt, h.Name, sub)
			case err == nil:
				continue
			case !errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("extract %s: %w", h.Name, err)
			}
			// A member may come before its directory's own entry.
			m := fs.FileMode(0o700)
			if i == len(parts)-1 {
				m = mode
			}
			if err := root.Mkdir(sub, m); err != nil {
				return fmt.Errorf("extract %s: %w", h.Name, err)
			}
			dirs = append(dirs, sub)
			if err := chown(sub); err != nil {
				return fmt.Errorf("extract %s: %w", h.Name, err)
			}
		}
		return nil
	}
	// exists refuses an entry whose path an earlier one took: it never
	// replaces what is there, nor writes through it.
	exists := func(h *tar.Header, name string) error {
		_, err := root.Lstat(name)
		switch {
		case err == nil:
			return fmt.Errorf("%w: tar entry %q is in the tar twice", ErrCorrupt, h.Name)
		case errors.Is(err, fs.ErrNotExist):
			return nil
		default:
			return fmt.Errorf("extract %s: %w", name, err)
		}
	}
	var entries tarChecker
	var files []string
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
		name, err := entries.check(h)
		if err != nil {
			// Not from pg_basebackup: planted, or altered before it was
			// stored.
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if name == "." {
			continue
		}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := mkdirAll(h, name, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := mkdirAll(h, path.Dir(name), 0o700); err != nil {
				return err
			}
			if err := exists(h, name); err != nil {
				return err
			}
			// O_EXCL all the same: nothing is followed if a link appeared
			// meanwhile.
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode|0o600)
			if err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			// Through a plain Writer: os.File's ReadFrom would copy in
			// 32 KiB writes.
			_, err = io.CopyBuffer(struct{ io.Writer }{f}, tr, buf)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = chown(name)
			}
			if err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			files = append(files, name)
		}
	}
	return syncTree(top, root, files, dirs)
}

// syncTree makes files and directories under root durable with one
// syncfs of its file system, through top, root's directory opened before
// they were written. Since Linux 5.8 syncfs reports a write-back error of
// any file of the file system since top was opened; before, it reports
// none, so every file and directory is then fsynced too (in parallel: each
// fsync flushes the disk's cache, and concurrent flushes are merged). The
// file system's other dirty data is written back with the restore's, which
// a checkpoint of the postgres instances there would do anyway.
func syncTree(top *os.File, root *os.Root, files, dirs []string) error {
	if err := unix.Syncfs(int(top.Fd())); err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	if syncfsReportsErrors() {
		return nil
	}
	names := append(append([]string(nil), files...), dirs...)
	work := make(chan string)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				if err := syncRootFile(root, name); err != nil {
					select {
					case errc <- fmt.Errorf("fsync %s: %w", name, err):
					default:
					}
				}
			}
		}()
	}
	for _, name := range names {
		work <- name
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// syncfsReportsErrors reports whether the running kernel's syncfs returns
// write-back errors (Linux 5.8 and later).
func syncfsReportsErrors() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 5, 8)
}

// kernelAtLeast reports whether a kernel release ("6.1.0-18-amd64")
// is major.minor or later.
func kernelAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if n, _ := fmt.Sscanf(release, "%d.%d", &ma, &mi); n != 2 {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// makeRoot creates directory dir (mode 0700) and opens it as an os.Root.
// Its parent may belong to the postgres OS user, who could swap the new
// directory for a symbolic link between the two steps: both go through a
// Root on the parent, which follows no link out of it, and the directory
// opened must be the one created.
func makeRoot(dir string) (*os.Root, error) {
	parent, err := os.OpenRoot(filepath.Dir(dir))
	if err != nil {
		return nil, err
	}
	defer parent.Close()
	base := filepath.Base(dir)
	if err := parent.Mkdir(base, 0o700); err != nil {
		return nil, err
	}
	made, err := parent.Lstat(base)
	if err != nil {
		return nil, err
	}
	root, err := parent.OpenRoot(base)
	if err != nil {
		return nil, err
	}
	opened, err := root.Stat(".")
	if err == nil && (!made.IsDir() || !os.SameFile(made, opened)) {
		err = fmt.Errorf("%s changed while it was being made: refusing to restore into it", dir)
	}
	if err != nil {
		root.Close()
		return nil, err
	}
	return root, nil
}

// syncRootFile fsyncs file or directory name under root.
func syncRootFile(root *os.Root, name string) error {
	d, err := root.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// DeleteBackup deletes backup id: its manifest first, so that a deletion
// cut short leaves an incomplete backup, which is ignored, rather than a
// listed one without data; then its data, whatever its version.
func (a *Archive) DeleteBackup(ctx context.Context, id string) error {
	if err := checkBackupID(id); err != nil {
		return err
	}
	if err := a.store.Delete(ctx, a.manifestKey(id)); err != nil {
		return fmt.Errorf("delete backup %s of %s: %w", id, a.cluster, err)
	}
	objs, err := a.store.List(ctx, a.backupPrefix()+id+"/")
	if err != nil {
		return fmt.Errorf("delete backup %s of %s: %w", id, a.cluster, err)
	}
	for _, o := range objs {
		if err := a.store.Delete(ctx, o.Key); err != nil {
			return fmt.Errorf("delete backup %s of %s: %w", id, a.cluster, err)
		}
	}
	return nil
}
