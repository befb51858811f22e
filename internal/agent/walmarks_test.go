package agent

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
)

// pgCommand is cmd as postgres hands it to the shell for the WAL file
// name: %p is its path relative to the data directory, %f its name.
func pgCommand(cmd, name string) string {
	return strings.NewReplacer("%p", "pg_wal/"+name, "%f", name, "%%", "%").Replace(cmd)
}

// TestArchivedMarks: once a file pushed ahead is durable, archive_command
// answers for it with the shell's test alone, without starting wal-push
// (here /bin/false, which would fail), and the archive holds exactly the
// file; a file without a mark goes to wal-push; a mark goes once its file
// is archived, and a term that ends takes its marks with it, also those
// of pushes that finish after.
func TestArchivedMarks(t *testing.T) {
	dataDir := t.TempDir()
	storeDir := t.TempDir()
	w := startWALServer(t, "demo", dataDir, storeDir)
	t.Cleanup(func() { w.Close() })
	pgdata := filepath.Join(dataDir, "members", "demo-1", "pgdata")
	pgwal := filepath.Join(pgdata, "pg_wal")
	if err := os.MkdirAll(filepath.Join(pgwal, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	names := backup.NextSegments("000000010000000000000000", backup.DefaultWALSegmentSize, 5)
	content := map[string][]byte{}
	ready := func(name string) {
		b := make([]byte, 128<<10)
		rand.Read(b)
		content[name] = b
		if err := os.WriteFile(filepath.Join(pgwal, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pgwal, "archive_status", name+".ready"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range names[:4] {
		ready(name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := NewWALClient(w.socket)
	req := WALRequest{Cluster: "demo", Member: "demo-1"}
	done := func(name string) {
		st := filepath.Join(pgwal, "archive_status", name)
		if err := os.Rename(st+".ready", st+".done"); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Push(ctx, req, "pg_wal/"+names[0]); err != nil {
		t.Fatalf("Push(%s) = %v", names[0], err)
	}
	done(names[0])

	marks := archivedMarksDir(w.socket, "demo-1")
	cmd := backup.AgentArchiveCommand("/bin/false", w.socket, "demo", "demo-1", marks)
	archive := func(name string) error {
		c := exec.Command("/bin/sh", "-c", pgCommand(cmd, name))
		c.Dir = pgdata
		return c.Run()
	}
	for _, name := range names[1:4] {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := os.Stat(filepath.Join(marks, name)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				ents, _ := os.ReadDir(marks)
				t.Fatalf("no mark for %s, pushed ahead, after 30 s; marks: %v", name, ents)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := archive(name); err != nil {
			t.Errorf("archive_command for %s, marked: %v (it must not start wal-push)", name, err)
		}
		a, err := backup.OpenArchiveKey(ctx, "file://"+storeDir, "demo", "")
		if err != nil {
			t.Fatal(err)
		}
		dest := filepath.Join(t.TempDir(), name)
		if err := a.FetchWAL(ctx, name, dest); err != nil {
			t.Fatalf("%s marked archived, but: %v", name, err)
		}
		if got, _ := os.ReadFile(dest); string(got) != string(content[name]) {
			t.Errorf("archived %s differs from the file", name)
		}
		done(name)
	}
	for _, d := range []string{filepath.Dir(marks), marks} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o710 {
			t.Errorf("%s: %v, mode %v, want 0710 (postgres may test, never make a mark)", d, err, fi.Mode().Perm())
		}
	}

	// A file without a mark goes to wal-push.
	ready(names[4])
	if err := archive(names[4]); err == nil {
		t.Errorf("archive_command for %s, not marked, succeeded without wal-push", names[4])
	}
	// The next push forgets the marks of files archived since.
	if err := cl.Push(ctx, req, "pg_wal/"+names[4]); err != nil {
		t.Fatalf("Push(%s) = %v", names[4], err)
	}
	if ents, _ := os.ReadDir(marks); len(ents) != 0 {
		t.Errorf("marks of archived files left: %v", ents)
	}

	// A term ends: its marks go, and a push under way leaves none.
	term := w.marks.current("demo-1")
	if err := w.marks.mark("demo-1", term, names[4]); err != nil {
		t.Fatal(err)
	}
	if err := w.marks.clear("demo-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(marks, names[4])); !os.IsNotExist(err) {
		t.Errorf("a mark outlived its term: %v", err)
	}
	if err := w.marks.mark("demo-1", term, names[4]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(marks, names[4])); !os.IsNotExist(err) {
		t.Errorf("a push of an ended term left a mark: %v", err)
	}
}
