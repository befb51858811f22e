package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fakeBackup is a tar shaped like `pg_basebackup -D - -Ft` output: a
// backup_label first, some files, backup_manifest last.
type fakeBackup struct {
	tli        uint32
	start      LSN
	stop       LSN
	files      map[string][]byte
	noLabel    bool
	noManifest bool
}

func (fb fakeBackup) tar(t testing.TB) []byte {
	t.Helper()
	if fb.tli == 0 {
		fb.tli = 1
	}
	if fb.start == 0 {
		fb.start, fb.stop = 0x2000028, 0x2000138
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte, mode int64) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	if !fb.noLabel {
		label := fmt.Sprintf("START WAL LOCATION: %s (file %s)\nCHECKPOINT LOCATION: %s\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-03-10 12:00:00 UTC\nLABEL: test\nSTART TIMELINE: %d\n",
			fb.start, segmentName(fb.tli, lsnSegNo(fb.start, DefaultWALSegmentSize), DefaultWALSegmentSize), fb.start+0x38, fb.tli)
		add("backup_label", []byte(label), 0o600)
	}
	for _, d := range []string{"base", "base/1", "global", "pg_wal"} {
		tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o700, Typeflag: tar.TypeDir, ModTime: time.Now()})
	}
	for name, data := range fb.files {
		add(name, data, 0o600)
	}
	if !fb.noManifest {
		m, _ := json.Marshal(map[string]any{
			"PostgreSQL-Backup-Manifest-Version": 1,
			"Files":                              []any{},
			"WAL-Ranges":                         []any{map[string]any{"Timeline": fb.tli, "Start-LSN": fb.start.String(), "End-LSN": fb.stop.String()}},
			"Manifest-Checksum":                  "0000",
		})
		add("backup_manifest", m, 0o600)
	}
	tw.Close()
	// pg_basebackup pads the stream like tar(1) does.
	buf.Write(make([]byte, 4096))
	return buf.Bytes()
}

func testArchive(t *testing.T, s Store, key *Key) *Archive {
	t.Helper()
	a, err := NewArchive(s, "demo", key)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestBackupRoundTrip(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			var key *Key
			if encrypted {
				key = testKey(t)
			}
			dir := t.TempDir()
			a := testArchive(t, openStore(t, fileURL(dir+"/store")), key)
			a.partSize = 1 << 20 // several parts, the last one short
			ctx := context.Background()
			rel := make([]byte, 3<<20)
			rand.Read(rel)
			fb := fakeBackup{files: map[string][]byte{
				"PG_VERSION":    []byte("15\n"),
				"base/1/1259":   rel,
				"global/marker": []byte("secret marker 0451"),
				"base/5/16384":  []byte("in a directory the tar has no entry for"),
			}}
			data := fb.tar(t)
			m, err := a.PutBackup(ctx, "b1", bytes.NewReader(data), BackupInfo{Member: "demo-2"})
			if err != nil {
				t.Fatalf("PutBackup: %v", err)
			}
			if m.ID != "b1" || m.Cluster != "demo" || m.Member != "demo-2" || m.From != "primary" || m.Timeline != 1 ||
				m.StartLSN != 0x2000028 || m.StopLSN != 0x2000138 || m.StartWAL != "000000010000000000000002" ||
				m.RawBytes != int64(len(data)) || m.StoredBytes == 0 || m.Encrypted() != encrypted || m.StopTime.Before(m.StartTime) {
				t.Errorf("PutBackup manifest = %+v", m)
			}
			if len(m.Parts) != 4 || m.Parts[3].RawBytes >= 1<<20 {
				t.Errorf("PutBackup parts = %+v, want 4 of 1 MiB, the last shorter", m.Parts)
			}
			if _, err := a.PutBackup(ctx, "b1", bytes.NewReader(data), BackupInfo{}); err == nil || !strings.Contains(err.Error(), "exists") {
				t.Errorf("PutBackup(same id) = %v, want an error saying it exists", err)
			}
			list, err := a.ListBackups(ctx)
			if err != nil || len(list) != 1 || !reflect.DeepEqual(list[0], m) {
				t.Errorf("ListBackups = %+v, %v; want [%+v]", list, err, m)
			}

			dest := filepath.Join(dir, "restored")
			got, err := a.GetBackup(ctx, "b1", dest, nil)
			if err != nil || !reflect.DeepEqual(got, m) {
				t.Fatalf("GetBackup = %+v, %v", got, err)
			}
			for name, want := range fb.files {
				b, err := os.ReadFile(filepath.Join(dest, name))
				if err != nil || !bytes.Equal(b, want) {
					t.Errorf("restored %s: %d bytes, %v; want %d bytes", name, len(b), err, len(want))
				}
			}
			if fi, _ := os.Stat(dest); fi.Mode().Perm() != 0o700 {
				t.Errorf("restored directory mode %v, want 0700", fi.Mode().Perm())
			}
			if _, err := os.Stat(filepath.Join(dest, "pg_wal")); err != nil {
				t.Errorf("restored pg_wal: %v", err)
			}
			if _, err := a.GetBackup(ctx, "b1", dest, nil); err == nil {
				t.Error("GetBackup into an existing directory succeeded")
			}
			if _, err := a.GetBackup(ctx, "nope", filepath.Join(dir, "x"), nil); !errors.Is(err, ErrNotFound) {
				t.Errorf("GetBackup(missing) = %v, want ErrNotFound", err)
			}

			if encrypted {
				assertNoMarker(t, dir+"/store", "secret marker 0451")
			}

			if err := a.DeleteBackup(ctx, "b1"); err != nil {
				t.Fatal(err)
			}
			if list, _ := a.ListBackups(ctx); len(list) != 0 {
				t.Errorf("ListBackups after delete = %v", list)
			}
			if objs, _ := a.Store().List(ctx, ""); len(objs) != 0 {
				t.Errorf("objects left after DeleteBackup: %v", objs)
			}
		})
	}
}

// assertNoMarker fails if any file under dir contains marker.
func assertNoMarker(t *testing.T, dir, marker string) {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(b, []byte(marker)) {
			t.Errorf("%s contains the plaintext marker %q", p, marker)
		}
		return nil
	})
	if n == 0 {
		t.Errorf("no files under %s to check", dir)
	}
}

func TestPutBackupRefusesBadStreams(t *testing.T) {
	a := testArchive(t, openStore(t, fileURL(t.TempDir())), nil)
	ctx := context.Background()
	good := fakeBackup{files: map[string][]byte{"PG_VERSION": []byte("15\n")}}.tar(t)
	failing := func(after int) io.Reader {
		pr, pw := io.Pipe()
		go func() {
			pw.Write(good[:after])
			pw.CloseWithError(errors.New("pg_basebackup: connection lost"))
		}()
		return pr
	}
	cases := []struct {
		name string
		r    io.Reader
		info BackupInfo
		want string
	}{
		{"not a tar", strings.NewReader(strings.Repeat("hello ", 1000)), BackupInfo{}, "read backup tar"},
		{"empty", strings.NewReader(""), BackupInfo{}, "empty or not a tar"},
		{"no backup_label", bytes.NewReader(fakeBackup{noLabel: true}.tar(t)), BackupInfo{}, "no backup_label"},
		{"no backup_manifest", bytes.NewReader(fakeBackup{noManifest: true}.tar(t)), BackupInfo{}, "no backup_manifest"},
		{"producer fails midway", failing(len(good) / 2), BackupInfo{}, "connection lost"},
		{"producer fails after the tar", failing(len(good)), BackupInfo{}, "connection lost"},
		{"producer exits non-zero", bytes.NewReader(good), BackupInfo{Wait: func() error { return errors.New("exit status 1") }}, "exit status 1"},
		{"wrong segment size", bytes.NewReader(good), BackupInfo{WALSegmentSize: 64 << 20}, "segment size"},
	}
	for _, c := range cases {
		_, err := a.PutBackup(ctx, "bad", c.r, c.info)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: PutBackup = %v, want an error containing %q", c.name, err, c.want)
		}
		if objs, _ := a.Store().List(ctx, ""); len(objs) != 0 {
			t.Errorf("%s: PutBackup left %v", c.name, objs)
		}
	}
	if _, err := a.PutBackup(ctx, "../x", bytes.NewReader(good), BackupInfo{}); err == nil {
		t.Error("PutBackup(../x) succeeded")
	}
}

// TestRestoreVersion1 restores and verifies a backup stored as one object,
// as pgfleet stored them before they came in parts, and checks that a
// change to that object is found.
func TestRestoreVersion1(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			var key *Key
			if encrypted {
				key = testKey(t)
			}
			dir := t.TempDir()
			a := testArchive(t, openStore(t, fileURL(dir+"/store")), key)
			ctx := context.Background()
			rel := make([]byte, 2<<20)
			rand.Read(rel)
			fb := fakeBackup{files: map[string][]byte{"PG_VERSION": []byte("15\n"), "base/1/1259": rel}}
			storeTar(t, a, "old", fb.tar(t))
			if rep, err := a.Verify(ctx, "old"); err != nil || len(rep.Backups) != 1 || rep.Backups[0].DataError != "" {
				t.Fatalf("Verify(old) = %+v, %v", rep, err)
			}
			dest := filepath.Join(dir, "restored")
			if m, err := a.GetBackup(ctx, "old", dest, nil); err != nil || m.Version != 1 {
				t.Fatalf("GetBackup(old) = %+v, %v", m, err)
			}
			for name, want := range fb.files {
				if b, err := os.ReadFile(filepath.Join(dest, name)); err != nil || !bytes.Equal(b, want) {
					t.Errorf("restored %s: %d bytes, %v; want %d bytes", name, len(b), err, len(want))
				}
			}
			p := filepath.Join(dir, "store", filepath.FromSlash(a.backupDataKey("old")))
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 1
			os.WriteFile(p, b, 0o600)
			if _, err := a.GetBackup(ctx, "old", filepath.Join(dir, "again"), nil); !errors.Is(err, ErrCorrupt) {
				t.Errorf("GetBackup(old, altered) = %v, want ErrCorrupt", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "again.restoring")); err == nil {
				t.Error("GetBackup(old, altered) left its directory behind")
			}
			if err := a.DeleteBackup(ctx, "old"); err != nil {
				t.Fatal(err)
			}
			if objs, _ := a.Store().List(ctx, ""); len(objs) != 0 {
				t.Errorf("objects left after DeleteBackup: %v", objs)
			}
		})
	}
}

func TestGetBackupCorrupt(t *testing.T) {
	dir := t.TempDir()
	a := testArchive(t, openStore(t, fileURL(dir+"/store")), nil)
	ctx := context.Background()
	rel := make([]byte, 1<<20)
	rand.Read(rel)
	if _, err := a.PutBackup(ctx, "b1", bytes.NewReader(fakeBackup{files: map[string][]byte{"base/1/1": rel}}.tar(t)), BackupInfo{}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "store", filepath.FromSlash(a.partKey("b1", 0)))
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 1
	os.WriteFile(p, b, 0o600)
	dest := filepath.Join(dir, "restored")
	if _, err := a.GetBackup(ctx, "b1", dest, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("GetBackup(corrupt) = %v, want ErrCorrupt", err)
	}
	for _, p := range []string{dest, dest + ".restoring"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("GetBackup(corrupt) left %s", p)
		}
	}
	rep, err := a.Verify(ctx, "b1")
	if err != nil || rep.OK() || !strings.Contains(rep.Backups[0].DataError, "corrupt") {
		t.Errorf("Verify(corrupt) = %+v, %v; want a data error", rep, err)
	}
}

// walFiles makes n fake segments of timeline 1 starting at segment first,
// each with distinct content.
func walFiles(t *testing.T, dir string, first, n uint64) []string {
	t.Helper()
	var paths []string
	for i := first; i < first+n; i++ {
		p := filepath.Join(dir, seg(1, i))
		data := bytes.Repeat([]byte(fmt.Sprintf("segment %d marker ", i)), 1000)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func TestArchiveWALFile(t *testing.T) {
	testArchiveWAL(t, openStore(t, fileURL(t.TempDir())), testKey(t))
}

func TestArchiveWALS3(t *testing.T) {
	s3 := startS3(t)
	testArchiveWAL(t, openStore(t, s3.url("wal-test")), testKey(t))
}

// testArchiveWAL checks PushWAL and FetchWAL on fake files; the postgres
// tests do it on real segments.
func testArchiveWAL(t *testing.T, s Store, key *Key) {
	ctx := context.Background()
	a := testArchive(t, s, key)
	dir := t.TempDir()
	paths := walFiles(t, dir, 1, 3)
	hist := filepath.Join(dir, "00000002.history")
	os.WriteFile(hist, []byte("1\t0/3000060\tno recovery target specified\n"), 0o600)
	for _, p := range append(paths, hist) {
		if err := a.PushWAL(ctx, p); err != nil {
			t.Fatalf("PushWAL(%s): %v", p, err)
		}
		if err := a.PushWAL(ctx, p); err != nil {
			t.Errorf("PushWAL(%s) again: %v, want success: the same file is archived", p, err)
		}
	}
	names, err := a.ListWAL(ctx)
	if want := "000000010000000000000001 000000010000000000000002 000000010000000000000003 00000002.history"; err != nil || strings.Join(names, " ") != want {
		t.Errorf("ListWAL = %v, %v; want %s", names, err, want)
	}

	// Another file under an archived name is refused, and the archived one
	// stays.
	other := filepath.Join(t.TempDir(), seg(1, 2))
	os.WriteFile(other, []byte("something else entirely"), 0o600)
	err = a.PushWAL(ctx, other)
	if !errors.Is(err, ErrConflict) {
		t.Errorf("PushWAL(different content) = %v, want ErrConflict", err)
	}
	mustContain(t, "conflict error", fmt.Sprint(err), seg(1, 2), "different", "never overwritten")

	out := t.TempDir()
	for _, p := range append(paths, hist) {
		name := filepath.Base(p)
		dest := filepath.Join(out, "RECOVERYXLOG")
		if err := a.FetchWAL(ctx, name, dest); err != nil {
			t.Fatalf("FetchWAL(%s): %v", name, err)
		}
		want, _ := os.ReadFile(p)
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, want) {
			t.Errorf("FetchWAL(%s) wrote %d bytes, want the %d archived", name, len(got), len(want))
		}
	}
	dest := filepath.Join(out, "missing")
	if err := a.FetchWAL(ctx, "00000003.history", dest); !errors.Is(err, ErrNotFound) {
		t.Errorf("FetchWAL(missing) = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Error("FetchWAL(missing) created its destination")
	}
	for _, bad := range []string{"../../etc/passwd", "RECOVERYXLOG", ""} {
		if err := a.FetchWAL(ctx, bad, dest); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("FetchWAL(%q) = %v, want an error other than not found", bad, err)
		}
	}
	if key != nil {
		b := testArchive(t, s, testKey(t))
		if err := b.FetchWAL(ctx, seg(1, 1), dest); !errors.Is(err, ErrWrongKey) {
			t.Errorf("FetchWAL with another key = %v, want ErrWrongKey", err)
		}
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("FetchWAL left %d files in the destination directory, want 1", len(ents))
	}
}

func TestArchiveNames(t *testing.T) {
	s := openStore(t, fileURL(t.TempDir()))
	for _, bad := range []string{"", "a/b", "..", ".hidden", "x y"} {
		if _, err := NewArchive(s, bad, nil); err == nil {
			t.Errorf("NewArchive(%q) succeeded", bad)
		}
	}
	a := testArchive(t, s, nil)
	f, _ := parseWALName("000000020000000000000003")
	if k := a.walKey(f); k != "demo/wal/00000002/000000020000000000000003.zst" {
		t.Errorf("walKey = %s", k)
	}
	if n, ok := a.walName("demo/wal/00000002/000000020000000000000003.zst"); !ok || n != "000000020000000000000003" {
		t.Errorf("walName = %s, %v", n, ok)
	}
	for _, k := range []string{"demo/wal/00000001/000000020000000000000003.zst", "demo/wal/00000002/000000020000000000000003", "other/wal/00000002/000000020000000000000003.zst"} {
		if _, ok := a.walName(k); ok {
			t.Errorf("walName(%s) accepted", k)
		}
	}
}

func TestApplyRetentionAndVerify(t *testing.T) {
	dir := t.TempDir()
	a := testArchive(t, openStore(t, fileURL(dir)), nil)
	ctx := context.Background()
	now := testNow
	// Backups 20, 10 and 2 days old, starting in segments 2, 5 and 8.
	for i, b := range []struct {
		ago time.Duration
		seg uint64
	}{{20 * day, 2}, {10 * day, 5}, {2 * day, 8}} {
		a.Now = func() time.Time { return now.Add(-b.ago) }
		start := LSN(b.seg<<24 + 0x28)
		fb := fakeBackup{start: start, stop: start + 0x100, files: map[string][]byte{"PG_VERSION": []byte("15\n")}}
		if _, err := a.PutBackup(ctx, fmt.Sprintf("b%d", i+1), bytes.NewReader(fb.tar(t)), BackupInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range walFiles(t, t.TempDir(), 1, 10) {
		if err := a.PushWAL(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := a.Verify(ctx, "")
	if err != nil || !rep.OK() || len(rep.Backups) != 3 {
		t.Fatalf("Verify = %+v, %v; want 3 good backups", rep, err)
	}
	if w := rep.Backups[0].WAL; w.From != seg(1, 2) || w.To != seg(1, 10) {
		t.Errorf("Verify b1 WAL = %+v", w)
	}

	// Data of a backup that never got its manifest, a day and a half old.
	orphan := a.backupDataKey("b0")
	a.Store().Put(ctx, orphan, strings.NewReader("x"), 1, PutOptions{})
	old := now.Add(-36 * time.Hour)
	os.Chtimes(filepath.Join(dir, filepath.FromSlash(orphan)), old, old)

	plan, err := a.ApplyRetention(ctx, Policy{}, now)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(plan.DeleteBackups, " ") != "b1" || plan.KeepWALFrom != seg(1, 5) {
		t.Errorf("ApplyRetention = %+v", plan)
	}
	list, _ := a.ListBackups(ctx)
	if len(list) != 2 || list[0].ID != "b2" {
		t.Errorf("backups after retention: %v", list)
	}
	names, _ := a.ListWAL(ctx)
	if len(names) != 6 || names[0] != seg(1, 5) {
		t.Errorf("WAL after retention: %v", names)
	}
	if _, err := a.Store().Stat(ctx, orphan); !errors.Is(err, ErrNotFound) {
		t.Errorf("orphan backup data survived retention: %v", err)
	}

	// A lost segment is a gap.
	f, _ := parseWALName(seg(1, 7))
	a.Store().Delete(ctx, a.walKey(f))
	rep, err = a.Verify(ctx, "")
	if err != nil || rep.OK() {
		t.Fatalf("Verify after losing a segment = %+v, %v", rep, err)
	}
	if g := rep.Backups[0].WAL.Gaps; len(g) != 1 || g[0].First != seg(1, 7) {
		t.Errorf("Verify b2 gaps = %+v, want %s", g, seg(1, 7))
	}
	if !rep.Backups[1].OK() {
		t.Errorf("Verify b3 (after the gap) = %+v, want OK", rep.Backups[1])
	}
	mustContain(t, "summary", strings.Join(rep.Summary(), "\n"), "backup b2: WAL segment 000000010000000000000007 is missing")
	if _, err := a.Verify(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Verify(missing) = %v, want ErrNotFound", err)
	}
}

// TestGetBackupPartsOutOfPlace: parts that are each intact but not where
// the manifest puts them (swapped, or one missing) fail the restore, which
// leaves nothing behind, and Verify reports them.
func TestGetBackupPartsOutOfPlace(t *testing.T) {
	dir := t.TempDir()
	a := testArchive(t, openStore(t, fileURL(dir+"/store")), testKey(t))
	a.partSize = 1 << 20
	ctx := context.Background()
	rel := make([]byte, 3<<20)
	rand.Read(rel)
	for _, id := range []string{"swapped", "missing"} {
		if _, err := a.PutBackup(ctx, id, bytes.NewReader(fakeBackup{files: map[string][]byte{"base/1/1": rel}}.tar(t)), BackupInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	part := func(id string, i int) string {
		return filepath.Join(dir, "store", filepath.FromSlash(a.partKey(id, i)))
	}
	p0, _ := os.ReadFile(part("swapped", 0))
	p1, _ := os.ReadFile(part("swapped", 1))
	os.WriteFile(part("swapped", 0), p1, 0o600)
	os.WriteFile(part("swapped", 1), p0, 0o600)
	os.Remove(part("missing", 2))
	for _, c := range []struct {
		id   string
		want error
	}{{"swapped", ErrCorrupt}, {"missing", ErrNotFound}} {
		dest := filepath.Join(dir, c.id)
		if _, err := a.GetBackup(ctx, c.id, dest, nil); !errors.Is(err, c.want) {
			t.Errorf("GetBackup(%s) = %v, want %v", c.id, err, c.want)
		}
		for _, p := range []string{dest, dest + ".restoring"} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("GetBackup(%s) left %s", c.id, p)
			}
		}
		rep, err := a.Verify(ctx, c.id)
		if err != nil || len(rep.Backups) != 1 || rep.Backups[0].DataError == "" {
			t.Errorf("Verify(%s) = %+v, %v; want its data reported", c.id, rep, err)
		}
	}
}

func TestKernelAtLeast(t *testing.T) {
	for _, c := range []struct {
		release string
		want    bool
	}{
		{"5.8.0", true},
		{"5.10.0-28-amd64", true},
		{"6.1.0-18-cloud-amd64", true},
		{"5.7.19", false},
		{"4.19.0-26-amd64", false},
		{"", false},
		{"x.y", false},
	} {
		if got := kernelAtLeast(c.release, 5, 8); got != c.want {
			t.Errorf("kernelAtLeast(%q, 5, 8) = %v, want %v", c.release, got, c.want)
		}
	}
}
