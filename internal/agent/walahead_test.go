package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// TestWALPushAhead: a push archives the files postgres marked ready after
// it in the background; a later push of one of them answers from that,
// but only if the file still has the content that was archived: a file
// that changed is pushed again and refused as a conflict, never reported
// archived.
func TestWALPushAhead(t *testing.T) {
	dataDir := t.TempDir()
	storeDir := t.TempDir()
	w := startWALServer(t, "demo", dataDir, storeDir)
	t.Cleanup(func() { w.Close() })
	pgwal := filepath.Join(dataDir, "members", "demo-1", "pgdata", "pg_wal")
	if err := os.MkdirAll(filepath.Join(pgwal, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	names := []string{"000000010000000000000001", "000000010000000000000002", "000000010000000000000003", "000000010000000000000004"}
	content := map[string][]byte{}
	for _, name := range names {
		b := make([]byte, 256<<10)
		rand.Read(b)
		content[name] = b
		if err := os.WriteFile(filepath.Join(pgwal, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pgwal, "archive_status", name+".ready"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := backup.OpenArchiveKey(ctx, "file://"+storeDir, "demo", "")
	if err != nil {
		t.Fatal(err)
	}
	archived := func() []string {
		got, err := a.ListWAL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	cl := NewWALClient(w.socket)
	req := WALRequest{Cluster: "demo", Member: "demo-1"}
	// push is archive_command as postgres runs it: once it succeeds, the
	// file is no longer ready but done.
	push := func(name string) error {
		err := cl.Push(ctx, req, "pg_wal/"+name)
		if err == nil {
			st := filepath.Join(pgwal, "archive_status", name)
			if err := os.Rename(st+".ready", st+".done"); err != nil {
				t.Fatal(err)
			}
		}
		return err
	}
	if err := push(names[0]); err != nil {
		t.Fatalf("Push(%s) = %v", names[0], err)
	}
	// The others were ready too: they reach the store without being asked.
	for deadline := time.Now().Add(30 * time.Second); len(archived()) < len(names); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("archived %v, want all of %v pushed ahead", archived(), names)
		}
	}
	for _, name := range names[1:3] {
		if err := push(name); err != nil {
			t.Errorf("Push(%s), pushed ahead = %v", name, err)
		}
		dest := filepath.Join(t.TempDir(), name)
		if err := a.FetchWAL(ctx, name, dest); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(dest); string(got) != string(content[name]) {
			t.Errorf("archived %s differs from the file", name)
		}
	}

	// The last one changes after it was pushed ahead: not archived as it is.
	changed := make([]byte, 256<<10)
	rand.Read(changed)
	if err := os.WriteFile(filepath.Join(pgwal, names[3]), changed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := push(names[3]); err == nil || !strings.Contains(err.Error(), "different") {
		t.Errorf("Push(%s) after it changed = %v, want a conflict", names[3], err)
	}
	if got := w.ahead.pushes; len(got) != 0 {
		t.Errorf("pushes ahead left after every file was asked for: %v", got)
	}
}

// BenchmarkWALPushThroughAgent archives the WAL segments in
// $PGFLEET_BENCH_WAL_DIR as postgres' archiver does with a backlog: all
// marked ready, then a member's archive_command (a shell testing for the
// agent's mark, else `pgfleet wal-push --socket`) once per segment,
// oldest first, each marked done once it succeeds, with the pgfleet binary
// $PGFLEET_BENCH_BIN. It reports the time per segment (ms/segment), process
// start included. bench/backup/run.sh runs it beside pgBackRest.
func BenchmarkWALPushThroughAgent(b *testing.B) {
	src, bin, segs := benchSegments(b)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dataDir := b.TempDir()
		w := startWALServer(b, "bench", dataDir, b.TempDir())
		pgwal := filepath.Join(dataDir, "members", "bench-1", "pgdata", "pg_wal")
		if err := os.MkdirAll(filepath.Join(pgwal, "archive_status"), 0o700); err != nil {
			b.Fatal(err)
		}
		for _, name := range segs {
			data, err := os.ReadFile(filepath.Join(src, name))
			if err == nil {
				err = os.WriteFile(filepath.Join(pgwal, name), data, 0o600)
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(pgwal, "archive_status", name+".ready"), nil, 0o600)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		cmd := backup.AgentArchiveCommand(bin, w.socket, "bench", "bench-1", archivedMarksDir(w.socket, "bench-1"))
		b.StartTimer()
		start := time.Now()
		for _, name := range segs {
			c := exec.Command("/bin/sh", "-c", pgCommand(cmd, name))
			c.Dir = filepath.Dir(pgwal)
			out, err := c.CombinedOutput()
			if err != nil {
				b.Fatalf("archive_command for %s: %v: %s", name, err, out)
			}
			st := filepath.Join(pgwal, "archive_status", name)
			if err := os.Rename(st+".ready", st+".done"); err != nil {
				b.Fatal(err)
			}
		}
		total += time.Since(start)
		b.StopTimer()
		w.Close()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N*len(segs)), "ms/segment")
	b.ReportMetric(float64(len(segs)), "segments")
}

// TestWALFetchAhead: a fetch also fetches the segments after it into the
// spool, and later fetches are answered from there with the archived
// content; a segment that fails its check is never put in the spool, and
// its fetch fails as before; nothing is left in the spool once recovery
// has asked for everything.
func TestWALFetchAhead(t *testing.T) {
	dataDir := t.TempDir()
	storeDir := t.TempDir()
	w := startWALServer(t, "demo", dataDir, storeDir)
	t.Cleanup(func() { w.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := backup.OpenArchiveKey(ctx, "file://"+storeDir, "demo", "")
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	names := backup.NextSegments("000000010000000000000000", backup.DefaultWALSegmentSize, 5)
	content := map[string][]byte{}
	for _, name := range names {
		b := make([]byte, 128<<10)
		rand.Read(b)
		content[name] = b
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := a.PushWAL(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// The fourth is damaged in the store.
	obj := filepath.Join(storeDir, "demo", "wal", "00000001", names[3]+".zst")
	b, _ := os.ReadFile(obj)
	b[len(b)/2] ^= 1
	os.WriteFile(obj, b, 0o600)

	spooled := func() []string {
		ents, _ := os.ReadDir(w.spool)
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	idle := func() bool {
		w.ahead.mu.Lock()
		defer w.ahead.mu.Unlock()
		for _, f := range w.ahead.fetches {
			select {
			case <-f.done:
			default:
				return false
			}
		}
		return true
	}
	waitIdle := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !idle(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: fetches ahead still under way; spool %v", what, spooled())
			}
		}
	}

	cl := NewWALClient(w.socket)
	req := WALRequest{Cluster: "demo", Member: "demo-1"}
	fetch := func(name string) ([]byte, error) {
		dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		if err := cl.Fetch(ctx, req, name, dest); err != nil {
			return nil, err
		}
		return os.ReadFile(dest)
	}
	if got, err := fetch(names[0]); err != nil || string(got) != string(content[names[0]]) {
		t.Fatalf("Fetch(%s) = %d bytes, %v", names[0], len(got), err)
	}
	waitIdle("after the first fetch")
	if got := spooled(); len(got) != 3 {
		t.Errorf("spool after fetching %s = %v, want the 2nd, 3rd and 5th segments (the 4th fails its check)", names[0], got)
	}
	for _, i := range []int{1, 2} {
		if got, err := fetch(names[i]); err != nil || string(got) != string(content[names[i]]) {
			t.Errorf("Fetch(%s), fetched ahead = %d bytes, %v; want the archived %d", names[i], len(got), err, len(content[names[i]]))
		}
	}
	if _, err := fetch(names[3]); err == nil || errors.Is(err, ErrNotArchived) || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("Fetch(%s), damaged = %v, want it refused as corrupt", names[3], err)
	}
	if got, err := fetch(names[4]); err != nil || string(got) != string(content[names[4]]) {
		t.Errorf("Fetch(%s) = %d bytes, %v", names[4], len(got), err)
	}
	if _, err := fetch(backup.NextSegments(names[4], backup.DefaultWALSegmentSize, 1)[0]); !errors.Is(err, ErrNotArchived) {
		t.Errorf("Fetch(after the last) = %v, want ErrNotArchived", err)
	}
	waitIdle("at the end")
	if got := spooled(); len(got) != 0 {
		t.Errorf("spool at the end = %v, want it empty", got)
	}
}

// BenchmarkWALFetchThroughAgent restores the WAL segments in
// $PGFLEET_BENCH_WAL_DIR, archived first, as a recovery does: one `pgfleet
// wal-fetch --socket` process per segment, in order, with the pgfleet binary
// $PGFLEET_BENCH_BIN. It reports the time per segment (ms/segment).
func BenchmarkWALFetchThroughAgent(b *testing.B) {
	src, bin, segs := benchSegments(b)
	ctx := context.Background()
	storeDir := b.TempDir()
	a, err := backup.OpenArchiveKey(ctx, "file://"+storeDir, "bench", "")
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range segs {
		if err := a.PushWAL(ctx, filepath.Join(src, name)); err != nil {
			b.Fatal(err)
		}
	}
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dest := b.TempDir()
		w := startWALServer(b, "bench", b.TempDir(), storeDir)
		b.StartTimer()
		start := time.Now()
		for _, name := range segs {
			out, err := exec.Command(bin, "wal-fetch", "--socket", w.socket, "--cluster", "bench", "--member", "bench-1", name, filepath.Join(dest, "RECOVERYXLOG")).CombinedOutput()
			if err != nil {
				b.Fatalf("wal-fetch %s: %v: %s", name, err, out)
			}
		}
		total += time.Since(start)
		b.StopTimer()
		w.Close()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N*len(segs)), "ms/segment")
	b.ReportMetric(float64(len(segs)), "segments")
}

// benchSegments returns the WAL segments and the pgfleet binary the WAL
// benchmarks are given, or skips the benchmark.
func benchSegments(b *testing.B) (src, bin string, segs []string) {
	src, bin = os.Getenv("PGFLEET_BENCH_WAL_DIR"), os.Getenv("PGFLEET_BENCH_BIN")
	if src == "" || bin == "" {
		b.Skip("set PGFLEET_BENCH_WAL_DIR (WAL segments) and PGFLEET_BENCH_BIN (the pgfleet binary)")
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range ents {
		segs = append(segs, e.Name())
	}
	return src, bin, segs
}

// startWALServer serves the WAL socket of host h in dataDir for member
// <cluster>-1 of cluster, whose archive is the file store storeDir.
func startWALServer(tb testing.TB, cluster, dataDir, storeDir string) *walServer {
	tb.Helper()
	clusters := &fakeClusters{c: store.ClusterState{
		Spec:    fleet.ClusterSpec{Name: cluster, Backup: &fleet.BackupSpec{Store: "file://" + storeDir}},
		Members: []fleet.MemberSpec{{ID: cluster + "-1", Cluster: cluster, Host: "h"}},
	}}
	me := postgres.OSUser{Name: "me", UID: os.Geteuid(), GID: os.Getegid()}
	w := newWALServer(clusters, "h", dataDir, me, slog.New(slog.DiscardHandler))
	if err := w.start(); err != nil {
		tb.Fatal(err)
	}
	return w
}
