package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The tests here play someone who can write to the store but does not hold
// the archive's key, and someone who hands a restore a tar that reaches out
// of the data directory.

func TestPlantedObjectsFile(t *testing.T) {
	testPlantedObjects(t, openStore(t, fileURL(filepath.Join(t.TempDir(), "store"))))
}

func TestPlantedObjectsS3(t *testing.T) {
	s3 := startS3(t)
	testPlantedObjects(t, openStore(t, s3.url("planted")))
}

// testPlantedObjects puts unencrypted objects into an encrypted archive
// through the store, as pgfleet wal-push and a backup without --key-file
// would, and checks that every reader of the encrypted archive refuses
// them and writes nothing.
func testPlantedObjects(t *testing.T, s Store) {
	ctx := context.Background()
	key := testKey(t)
	enc := testArchive(t, s, key)
	plain := testArchive(t, s, nil) // the same cluster's archive, written without the key
	src := t.TempDir()
	segs := walFiles(t, src, 1, 2)
	if err := enc.PushWAL(ctx, segs[0]); err != nil {
		t.Fatalf("PushWAL(%s): %v", segs[0], err)
	}
	if err := plain.PushWAL(ctx, segs[1]); err != nil {
		t.Fatalf("plant %s: %v", segs[1], err)
	}
	hist := filepath.Join(src, "00000002.history")
	os.WriteFile(hist, []byte("1\t0/3000060\tno recovery target specified\n"), 0o600)
	if err := plain.PushWAL(ctx, hist); err != nil {
		t.Fatalf("plant %s: %v", hist, err)
	}
	fb := fakeBackup{files: map[string][]byte{"PG_VERSION": []byte("15\n"), "base/1/1259": []byte("planted relation")}}
	if _, err := plain.PutBackup(ctx, "planted", bytes.NewReader(fb.tar(t)), BackupInfo{}); err != nil {
		t.Fatalf("plant a backup: %v", err)
	}
	wantText := func(what string, err error, objKey string) {
		t.Helper()
		t.Logf("%s: %v", what, err)
		if !errors.Is(err, ErrNotEncrypted) {
			t.Errorf("%s = %v, want ErrNotEncrypted", what, err)
			return
		}
		mustContain(t, what+" error", err.Error(), objKey+": the archive is encrypted and the object is not: pgfleet did not write it with this archive's key ("+key.ID()+"), so it is refused")
	}

	// WAL: the encrypted segment is fetched, the planted one is refused
	// and nothing reaches the destination directory.
	out := t.TempDir()
	if err := enc.FetchWAL(ctx, seg(1, 1), filepath.Join(out, "ok")); err != nil {
		t.Fatalf("FetchWAL(%s): %v", seg(1, 1), err)
	}
	dest := filepath.Join(out, "RECOVERYXLOG")
	err := enc.FetchWAL(ctx, seg(1, 2), dest)
	wantText(fmt.Sprintf("FetchWAL(planted %s)", seg(1, 2)), err, "demo/wal/00000001/"+seg(1, 2)+".zst")
	if ents, _ := os.ReadDir(out); len(ents) != 1 || ents[0].Name() != "ok" {
		t.Errorf("FetchWAL(planted) left %v in the destination directory, want only the fetched segment", ents)
	}
	// The planted object is not taken for this segment already archived.
	err = enc.PushWAL(ctx, segs[1])
	wantText(fmt.Sprintf("PushWAL(%s) over a planted object", seg(1, 2)), err, "demo/wal/00000001/"+seg(1, 2)+".zst")

	// A base backup: refused before anything is extracted.
	restore := t.TempDir()
	_, err = enc.GetBackup(ctx, "planted", filepath.Join(restore, "data"), nil)
	wantText("GetBackup(planted)", err, "demo/backups/planted/base.tar.000000.zst")
	if ents, _ := os.ReadDir(restore); len(ents) != 0 {
		t.Errorf("GetBackup(planted) left %v", ents)
	}

	// Verify reports both.
	rep, err := enc.Verify(ctx, "")
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.OK() || len(rep.Backups) != 1 {
		t.Fatalf("Verify = %+v, want the planted backup reported", rep)
	}
	mustContain(t, "Verify data error", rep.Backups[0].DataError, "demo/backups/planted/base.tar.000000.zst: the archive is encrypted and the object is not")
	mustContain(t, "Verify problems", strings.Join(rep.Problems, "\n"), "history file 00000002.history: demo/wal/00000002/00000002.history.zst: the archive is encrypted and the object is not")

	// Without a key the same objects are an unencrypted archive, read as
	// before.
	if err := plain.FetchWAL(ctx, seg(1, 2), dest); err != nil {
		t.Errorf("FetchWAL(%s) without a key: %v", seg(1, 2), err)
	}
	if _, err := plain.GetBackup(ctx, "planted", filepath.Join(restore, "data"), nil); err != nil {
		t.Errorf("GetBackup(planted) without a key: %v", err)
	}
}

// tarEntry is one member of a crafted tar.
type tarEntry struct {
	name, link string
	typ        byte
	data       string
}

// craftTar returns a tar of a base backup's usual first members followed by
// entries.
func craftTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	base := []tarEntry{{name: "base/", typ: tar.TypeDir}, {name: "PG_VERSION", typ: tar.TypeReg, data: "15\n"}}
	for _, e := range append(base, entries...) {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o600, Size: int64(len(e.data)), ModTime: time.Now()}
		if e.typ != tar.TypeReg {
			h.Mode, h.Size = 0o700, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar %s: %v", e.name, err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.data))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// storeTar puts tarball into the archive as backup id, in the object format
// with the archive's key and with a manifest that matches it, as if
// PutBackup had stored it: PutBackup itself refuses such tars. It stores
// the tar as one object with a version 1 manifest, as pgfleet did before
// backups came in parts.
func storeTar(t *testing.T, a *Archive, id string, tarball []byte) {
	t.Helper()
	ctx := context.Background()
	var obj bytes.Buffer
	w, err := newObjectWriter(&obj, a.key, 1)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(tarball)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.store.Put(ctx, a.backupDataKey(id), bytes.NewReader(obj.Bytes()), int64(obj.Len()), PutOptions{}); err != nil {
		t.Fatalf("put %s: %v", id, err)
	}
	m := Manifest{Version: 1, ID: id, Cluster: a.cluster, Timeline: 1, StopTimeline: 1,
		StartLSN: 0x2000028, StopLSN: 0x2000138, StartWAL: seg(1, 2), WALSegmentSize: DefaultWALSegmentSize,
		StartTime: time.Now().UTC(), StopTime: time.Now().UTC(), RawBytes: w.Size(), StoredBytes: int64(obj.Len()), SHA256: w.Sum()}
	if a.key != nil {
		m.KeyID = a.key.ID()
	}
	b, _ := json.Marshal(m)
	if err := a.store.Put(ctx, a.manifestKey(id), bytes.NewReader(b), int64(len(b)), PutOptions{}); err != nil {
		t.Fatalf("put manifest of %s: %v", id, err)
	}
}

// TestRestoreRefusesEscapingTar restores tars whose entries reach outside
// the data directory and checks that each is refused with an error naming
// the entry, that nothing is written outside, and that nothing is left of
// the restore. PutBackup refuses the same tars.
func TestRestoreRefusesEscapingTar(t *testing.T) {
	work := t.TempDir()
	a := testArchive(t, openStore(t, fileURL(filepath.Join(work, "store"))), nil)
	restore := filepath.Join(work, "restore") // holds dest and dest.restoring
	outside := filepath.Join(work, "outside") // where the tars point
	for _, d := range []string{restore, outside} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	reg := func(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeReg, data: "planted 7f1c"} }
	cases := []struct {
		name    string
		entries []tarEntry
		want    string
	}{
		{"dot-dot", []tarEntry{reg("../escape")},
			`tar entry "../escape" climbs out of the data directory with ".."`},
		{"dot-dot after a directory", []tarEntry{reg("base/../../../outside/escape")},
			`tar entry "base/../../../outside/escape" climbs out of the data directory with ".."`},
		{"absolute path", []tarEntry{reg(filepath.Join(outside, "abs"))},
			fmt.Sprintf("tar entry %q is an absolute path", filepath.Join(outside, "abs"))},
		{"symlink, then a file through it", []tarEntry{{name: "x", link: outside, typ: tar.TypeSymlink}, reg("x/file")},
			fmt.Sprintf(`tar entry "x" is a symbolic link (to %q); a base backup of a pgfleet member holds none`, outside)},
		{"symlink, then a file through it into a directory that exists", []tarEntry{{name: "x", link: outside, typ: tar.TypeSymlink}, reg("x/sub/file")},
			fmt.Sprintf(`tar entry "x" is a symbolic link (to %q)`, outside)},
		{"relative symlink", []tarEntry{{name: "base/up", link: "../..", typ: tar.TypeSymlink}, reg("base/up/outside/file")},
			`tar entry "base/up" is a symbolic link (to "../.."); a base backup of a pgfleet member holds none`},
		{"tablespace link", []tarEntry{{name: "pg_tblspc/16384", link: outside, typ: tar.TypeSymlink}, reg("pg_tblspc/16384/PG_15_202209061/5/16385")},
			fmt.Sprintf(`tar entry "pg_tblspc/16384" is a symbolic link (to %q)`, outside)},
		{"hard link out", []tarEntry{{name: "hl", link: filepath.Join(outside, "target"), typ: tar.TypeLink}},
			fmt.Sprintf(`tar entry "hl" is a hard link (to %q), which a base backup never holds`, filepath.Join(outside, "target"))},
		{"hard link up", []tarEntry{{name: "hl", link: "../../outside/target", typ: tar.TypeLink}},
			`tar entry "hl" is a hard link (to "../../outside/target")`},
	}
	// A file for the hard links to point to, which must stay as it is, and
	// a directory for links to reach through, which must stay empty.
	target := filepath.Join(outside, "target")
	os.WriteFile(target, []byte("untouched"), 0o600)
	os.Mkdir(filepath.Join(outside, "sub"), 0o700)
	for i, c := range cases {
		id := fmt.Sprintf("b%d", i)
		tarball := craftTar(t, c.entries...)
		storeTar(t, a, id, tarball)
		dest := filepath.Join(restore, "data")
		_, err := a.GetBackup(ctx, id, dest, nil)
		t.Logf("%s: GetBackup: %v", c.name, err)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: GetBackup = %v, want ErrCorrupt", c.name, err)
		} else {
			mustContain(t, c.name+": GetBackup error", err.Error(), c.want)
		}
		if ents, _ := os.ReadDir(restore); len(ents) != 0 {
			t.Errorf("%s: GetBackup left %v in %s", c.name, ents, restore)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 2 {
			t.Errorf("%s: GetBackup wrote %v outside the data directory", c.name, ents)
		}
		if ents, _ := os.ReadDir(filepath.Join(outside, "sub")); len(ents) != 0 {
			t.Errorf("%s: GetBackup wrote %v outside the data directory, in %s", c.name, ents, filepath.Join(outside, "sub"))
		}
		if b, _ := os.ReadFile(target); string(b) != "untouched" {
			t.Errorf("%s: %s now holds %q", c.name, target, b)
		}
		if ents, _ := os.ReadDir(work); len(ents) != 3 {
			t.Errorf("%s: GetBackup wrote %v beside the restore", c.name, ents)
		}

		// PutBackup refuses it too, and stores nothing.
		_, err = a.PutBackup(ctx, "put-"+id, bytes.NewReader(tarball), BackupInfo{})
		if err == nil || !strings.Contains(err.Error(), "read backup tar: "+c.want) {
			t.Errorf("%s: PutBackup = %v, want an error containing %q", c.name, err, "read backup tar: "+c.want)
		}
		if objs, _ := a.Store().List(ctx, a.backupPrefix()+"put-"); len(objs) != 0 {
			t.Errorf("%s: PutBackup left %v", c.name, objs)
		}
	}
}

// TestRestoreTablespaceLink checks that even the link a tablespace would
// make, pg_tblspc/<oid> to an absolute location, is refused: pgfleet's base
// backups never hold one (pg_basebackup -D - refuses tablespaces), and the
// location is not written to.
func TestRestoreTablespaceLink(t *testing.T) {
	work := t.TempDir()
	a := testArchive(t, openStore(t, fileURL(filepath.Join(work, "store"))), nil)
	location := filepath.Join(work, "tablespace")
	if err := os.Mkdir(location, 0o700); err != nil {
		t.Fatal(err)
	}
	storeTar(t, a, "ts", craftTar(t,
		tarEntry{name: "pg_tblspc/", typ: tar.TypeDir},
		tarEntry{name: "pg_tblspc/16384", link: location, typ: tar.TypeSymlink},
		tarEntry{name: "./pg_wal/archive_status", typ: tar.TypeDir}, // as pg_basebackup names it
		tarEntry{name: "global/pg_control", typ: tar.TypeReg, data: "control"},
	))
	dest := filepath.Join(work, "data")
	_, err := a.GetBackup(context.Background(), "ts", dest, nil)
	if err == nil || !strings.Contains(err.Error(), `tar entry "pg_tblspc/16384" is a symbolic link`) {
		t.Fatalf("GetBackup of a backup with a tablespace link = %v, want it refused", err)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Errorf("a refused restore left %s (%v)", dest, err)
	}
	if ents, _ := os.ReadDir(location); len(ents) != 0 {
		t.Errorf("GetBackup wrote %v into the tablespace's location", ents)
	}
}

// plantingReader passes r on and calls plant once at byte at, before
// passing that byte: something changing the directory mid-restore.
type plantingReader struct {
	r       io.Reader
	n, at   int
	plant   func()
	planted bool
}

func (p *plantingReader) Read(b []byte) (int, error) {
	if !p.planted && p.n >= p.at {
		p.plant()
		p.planted = true
	}
	if !p.planted && len(b) > p.at-p.n {
		b = b[:p.at-p.n]
	}
	n, err := p.r.Read(b)
	p.n += n
	return n, err
}

// TestExtractTarRefusesLinkPlantedMeanwhile checks the restore's second
// line: entries that pass the tar's own checks, under a directory in which
// a symbolic link out appears during the restore, are refused, not written
// through it.
func TestExtractTarRefusesLinkPlantedMeanwhile(t *testing.T) {
	cases := []struct {
		name  string
		link  string // planted under the data directory, pointing outside
		entry string // the entry that comes after
		want  string
	}{
		{"a directory replaced by a link", "base/evil", "base/evil/file",
			`tar entry "base/evil/file" would be written through the symbolic link base/evil, which a restore never follows`},
		{"a link where a file goes", "base/file", "base/file",
			`tar entry "base/file" is in the tar twice`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			work := t.TempDir()
			dir, outside := filepath.Join(work, "data"), filepath.Join(work, "outside")
			os.Mkdir(outside, 0o700)
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			tw.WriteHeader(&tar.Header{Name: "base/", Typeflag: tar.TypeDir, Mode: 0o700})
			tw.Flush()
			at := buf.Len()
			tw.WriteHeader(&tar.Header{Name: c.entry, Typeflag: tar.TypeReg, Mode: 0o600, Size: 5})
			tw.Write([]byte("12345"))
			tw.Close()
			r := &plantingReader{r: &buf, at: at, plant: func() {
				if err := os.Symlink(filepath.Join(outside, filepath.Base(c.link)), filepath.Join(dir, filepath.FromSlash(c.link))); err != nil {
					t.Fatalf("plant a link: %v", err)
				}
			}}
			err := extractTar(context.Background(), r, dir, nil)
			if !r.planted {
				t.Fatal("test is void: the link was never planted")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("extractTar = %v, want ErrCorrupt and %q", err, c.want)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("extractTar wrote %v outside the data directory", ents)
			}
		})
	}
}
