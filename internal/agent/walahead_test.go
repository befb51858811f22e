package agent

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
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
