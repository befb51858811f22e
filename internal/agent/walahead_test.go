package agent

import (
	"context"
	"crypto/rand"
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
	clusters := &fakeClusters{c: store.ClusterState{
		Spec:    fleet.ClusterSpec{Name: "demo", Backup: &fleet.BackupSpec{Store: "file://" + storeDir}},
		Members: []fleet.MemberSpec{{ID: "demo-1", Cluster: "demo", Host: "iad-1"}},
	}}
	me := postgres.OSUser{Name: "me", UID: os.Geteuid(), GID: os.Getegid()}
	w := newWALServer(clusters, "iad-1", dataDir, me, slog.New(slog.DiscardHandler))
	if err := w.start(); err != nil {
		t.Fatal(err)
	}
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
// marked ready, then one `pgfleet wal-push --socket` process per segment,
// oldest first, each marked done once it succeeds, with the pgfleet binary
// $PGFLEET_BENCH_BIN. It reports the time per segment (ms/segment), process
// start included. bench/backup/run.sh runs it beside pgBackRest.
func BenchmarkWALPushThroughAgent(b *testing.B) {
	src, bin := os.Getenv("PGFLEET_BENCH_WAL_DIR"), os.Getenv("PGFLEET_BENCH_BIN")
	if src == "" || bin == "" {
		b.Skip("set PGFLEET_BENCH_WAL_DIR (WAL segments) and PGFLEET_BENCH_BIN (the pgfleet binary)")
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		b.Fatal(err)
	}
	var segs []string
	for _, e := range ents {
		segs = append(segs, e.Name())
	}
	me := postgres.OSUser{Name: "me", UID: os.Geteuid(), GID: os.Getegid()}
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dataDir, storeDir := b.TempDir(), b.TempDir()
		clusters := &fakeClusters{c: store.ClusterState{
			Spec:    fleet.ClusterSpec{Name: "bench", Backup: &fleet.BackupSpec{Store: "file://" + storeDir}},
			Members: []fleet.MemberSpec{{ID: "bench-1", Cluster: "bench", Host: "h"}},
		}}
		w := newWALServer(clusters, "h", dataDir, me, slog.New(slog.DiscardHandler))
		if err := w.start(); err != nil {
			b.Fatal(err)
		}
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
		b.StartTimer()
		start := time.Now()
		for _, name := range segs {
			out, err := exec.Command(bin, "wal-push", "--socket", w.socket, "--cluster", "bench", "--member", "bench-1", "pg_wal/"+name).CombinedOutput()
			if err != nil {
				b.Fatalf("wal-push %s: %v: %s", name, err, out)
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
