package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

func TestWALPeerAllowed(t *testing.T) {
	const agentUID, pgUID = 0, 101
	for _, c := range []struct {
		name string
		uid  int
		want bool
	}{
		{"root", 0, true},
		{"the postgres OS user", 101, true},
		{"another user", 1000, false},
		{"nobody", 65534, false},
		{"unknown peer", -1, false},
	} {
		if got := walPeerAllowed(c.uid, agentUID, pgUID); got != c.want {
			t.Errorf("walPeerAllowed(%d) (%s) = %v, want %v", c.uid, c.name, got, c.want)
		}
	}
	// An agent that does not run as root serves its own user, which then
	// also runs postgres.
	if !walPeerAllowed(1000, 1000, 1000) {
		t.Errorf("walPeerAllowed(1000, agent 1000, postgres 1000) = false, want true")
	}
}

func TestResolveWAL(t *testing.T) {
	const host, dataDir, key = "iad-1", "/var/lib/pgfleet", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	members := []fleet.MemberSpec{{ID: "demo-1", Cluster: "demo", Host: "iad-1"}, {ID: "demo-2", Cluster: "demo", Host: "iad-2"}}
	backed := store.ClusterState{Spec: fleet.ClusterSpec{Name: "demo", Backup: &fleet.BackupSpec{Store: "s3://b/demo", Encrypted: true}}, Members: members}
	plain := store.ClusterState{Spec: fleet.ClusterSpec{Name: "demo", Backup: &fleet.BackupSpec{Store: "file:///backups"}}, Members: members}
	none := store.ClusterState{Spec: fleet.ClusterSpec{Name: "demo"}, Members: members}
	restored := store.ClusterState{Spec: fleet.ClusterSpec{Name: "demo",
		Restore: &fleet.RestoreSpec{From: "old", Store: "s3://b/old", Encrypted: true}}, Members: members}
	sec := fleet.Secrets{BackupKey: key}
	pgdata := "/var/lib/pgfleet/members/demo-1/pgdata"
	for _, c := range []struct {
		name    string
		c       store.ClusterState
		sec     fleet.Secrets
		req     WALRequest
		push    bool
		want    walTarget
		wantErr string
	}{
		{"push to the own encrypted archive", backed, sec, WALRequest{"demo", "demo-1", ""}, true,
			walTarget{pgdata: pgdata, store: "s3://b/demo", archive: "demo", key: key}, ""},
		{"fetch from the own archive", backed, sec, WALRequest{"demo", "demo-1", ""}, false,
			walTarget{pgdata: pgdata, store: "s3://b/demo", archive: "demo", key: key}, ""},
		{"fetch naming the own cluster as from", backed, sec, WALRequest{"demo", "demo-1", "demo"}, false,
			walTarget{pgdata: pgdata, store: "s3://b/demo", archive: "demo", key: key}, ""},
		{"an unencrypted archive gets no key", plain, sec, WALRequest{"demo", "demo-1", ""}, true,
			walTarget{pgdata: pgdata, store: "file:///backups", archive: "demo"}, ""},
		{"fetch from the archive a restore replays", restored, sec, WALRequest{"demo", "demo-1", "old"}, false,
			walTarget{pgdata: pgdata, store: "s3://b/old", archive: "old", key: key}, ""},
		{"a member of another host", backed, sec, WALRequest{"demo", "demo-2", ""}, true, walTarget{}, "does not run on host iad-1"},
		{"an unknown member", backed, sec, WALRequest{"demo", "demo-9", ""}, false, walTarget{}, "does not run on host iad-1"},
		{"a push to another archive", restored, sec, WALRequest{"demo", "demo-1", "old"}, true, walTarget{}, "own cluster's archive"},
		{"a fetch from a cluster it is not restored from", restored, sec, WALRequest{"demo", "demo-1", "secret"}, false, walTarget{}, "not restored from secret"},
		{"a fetch from another archive without a restore", backed, sec, WALRequest{"demo", "demo-1", "other"}, false, walTarget{}, "not restored from other"},
		{"no backups", none, sec, WALRequest{"demo", "demo-1", ""}, true, walTarget{}, "no backups configured"},
		{"encrypted without a key", backed, fleet.Secrets{}, WALRequest{"demo", "demo-1", ""}, true, walTarget{}, "has no backup key"},
	} {
		got, err := resolveWAL(c.c, c.sec, host, dataDir, c.req, c.push)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("resolveWAL(%s) = %+v, %v; want an error saying %q", c.name, got, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("resolveWAL(%s) = %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
}

func TestWALFilePath(t *testing.T) {
	const pgdata = "/data/members/demo-1/pgdata"
	for _, c := range []struct {
		p, want string
	}{
		{"pg_wal/000000010000000000000001", pgdata + "/pg_wal/000000010000000000000001"},
		{"pg_wal/00000002.history", pgdata + "/pg_wal/00000002.history"},
		{pgdata + "/pg_wal/000000010000000000000001", pgdata + "/pg_wal/000000010000000000000001"},
		{"./pg_wal//000000010000000000000001", pgdata + "/pg_wal/000000010000000000000001"},
		{"", ""},
		{"pg_wal", ""},
		{"global/pg_control", ""},
		{"pg_wal/../global/pg_control", ""},
		{"pg_wal/archive_status/000000010000000000000001.ready", ""},
		{"../../demo-2/pgdata/pg_wal/000000010000000000000001", ""},
		{"/etc/shadow", ""},
		{"/data/members/demo-2/pgdata/pg_wal/000000010000000000000001", ""},
	} {
		got, err := walFilePath(pgdata, c.p)
		if got != c.want || (err == nil) != (c.want != "") {
			t.Errorf("walFilePath(%q) = %q, %v; want %q", c.p, got, err, c.want)
		}
		if err != nil && !errors.Is(err, errRefused) {
			t.Errorf("walFilePath(%q) error %v does not wrap errRefused", c.p, err)
		}
	}
}

// TestOpenWALFile: the agent reads only a regular file of the postgres OS
// user's, never through a link, so that a link in pg_wal cannot make it
// upload a file that user could not read.
func TestOpenWALFile(t *testing.T) {
	dir := t.TempDir()
	me := os.Geteuid()
	file := filepath.Join(dir, "000000010000000000000001")
	if err := os.WriteFile(file, []byte("wal"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "000000010000000000000002")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "000000010000000000000003")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "archive_status")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	// Sparse: a file that claims more than a segment costs no disk.
	huge := filepath.Join(dir, "000000010000000000000004")
	if err := os.WriteFile(huge, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, 16<<20+1); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, path string
		uid        int
		wantErr    string
	}{
		{"a file of the user's", file, me, ""},
		{"a file of another user's", file, me + 1, "not owned by uid"},
		{"a symbolic link", link, me, "symbolic link"},
		{"a FIFO", fifo, me, "not a regular file"},
		{"a directory", sub, me, "not a regular file"},
		{"more than a segment", huge, me, "more than a WAL segment"},
		{"nothing", filepath.Join(dir, "missing"), me, "no such file"},
	} {
		f, err := openWALFile(c.path, c.uid)
		if f != nil {
			f.Close()
		}
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("openWALFile(%s) error = %v, want %q", c.name, err, c.wantErr)
		}
	}
}

// fakeClusters is the state store as the WAL server reads it; down makes it
// fail as a store without quorum does.
type fakeClusters struct {
	c    store.ClusterState
	sec  fleet.Secrets
	down atomic.Bool
}

func (f *fakeClusters) Cluster(ctx context.Context, name string) (store.ClusterState, error) {
	if f.down.Load() {
		return store.ClusterState{}, store.ErrNoQuorum
	}
	if name != f.c.Spec.Name {
		return store.ClusterState{}, store.ErrNotFound
	}
	return f.c, nil
}

func (f *fakeClusters) Secrets(ctx context.Context, name string) (fleet.Secrets, error) {
	if f.down.Load() {
		return fleet.Secrets{}, store.ErrNoQuorum
	}
	return f.sec, nil
}

// TestWALSocket: push and fetch through the socket, over the protocol
// wal-push and wal-fetch speak, into a real encrypted file store; a missing
// file is ErrNotArchived and nothing else is; links and paths outside pg_wal
// are refused; WAL still goes where the store last said while it is down.
func TestWALSocket(t *testing.T) {
	dataDir := t.TempDir()
	storeDir := t.TempDir()
	k := make([]byte, backup.KeySize)
	rand.Read(k)
	key := hex.EncodeToString(k)
	clusters := &fakeClusters{
		c: store.ClusterState{
			Spec:    fleet.ClusterSpec{Name: "demo", Backup: &fleet.BackupSpec{Store: "file://" + storeDir, Encrypted: true}},
			Members: []fleet.MemberSpec{{ID: "demo-1", Cluster: "demo", Host: "iad-1"}, {ID: "demo-2", Cluster: "demo", Host: "iad-2"}},
		},
		sec: fleet.Secrets{BackupKey: key},
	}
	me := postgres.OSUser{Name: "me", UID: os.Geteuid(), GID: os.Getegid()}
	w := newWALServer(clusters, "iad-1", dataDir, me, slog.New(slog.DiscardHandler))
	if err := w.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })

	for _, c := range []struct {
		path string
		mode os.FileMode
	}{{filepath.Dir(w.socket), os.ModeDir | 0o710}, {w.socket, os.ModeSocket | 0o660}, {w.spool, os.ModeDir | 0o700}} {
		if fi, err := os.Stat(c.path); err != nil || fi.Mode() != c.mode {
			t.Errorf("stat %s: %v, %v; want mode %v", c.path, fi.Mode(), err, c.mode)
		}
	}

	pgwal := filepath.Join(dataDir, "members", "demo-1", "pgdata", "pg_wal")
	if err := os.MkdirAll(pgwal, 0o700); err != nil {
		t.Fatal(err)
	}
	seg := make([]byte, 1<<20)
	rand.Read(seg)
	const name = "000000010000000000000001"
	if err := os.WriteFile(filepath.Join(pgwal, name), seg, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := NewWALClient(w.socket)
	req := WALRequest{Cluster: "demo", Member: "demo-1"}
	if err := cl.Push(ctx, req, "pg_wal/"+name); err != nil {
		t.Fatalf("Push(%s) = %v", name, err)
	}
	// Pushed with the cluster's key: an archive without it refuses the object.
	noKey, err := backup.OpenArchiveKey(ctx, "file://"+storeDir, "demo", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := noKey.FetchWAL(ctx, name, filepath.Join(t.TempDir(), name)); !errors.Is(err, backup.ErrWrongKey) {
		t.Errorf("FetchWAL(%s) without the key = %v, want ErrWrongKey: the agent must encrypt with the cluster's key", name, err)
	}

	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	if err := cl.Fetch(ctx, req, name, dest); err != nil {
		t.Fatalf("Fetch(%s) = %v", name, err)
	}
	if got, err := os.ReadFile(dest); err != nil || !bytes.Equal(got, seg) {
		t.Errorf("Fetch(%s) wrote %d bytes (%v), want the %d pushed", name, len(got), err, len(seg))
	}
	if err := cl.Fetch(ctx, req, "00000002.history", dest); !errors.Is(err, ErrNotArchived) {
		t.Errorf("Fetch(00000002.history) = %v, want ErrNotArchived", err)
	}

	// Refusals: each a plain error, never ErrNotArchived, which would tell
	// postgres the archive simply ends.
	link := filepath.Join(pgwal, "000000010000000000000002")
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("not for postgres"), 0o600)
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"push of a link", cl.Push(ctx, req, "pg_wal/000000010000000000000002"), "symbolic link"},
		{"push outside pg_wal", cl.Push(ctx, req, "global/pg_control"), "not a file in the member's pg_wal"},
		{"push of another host's member", cl.Push(ctx, WALRequest{Cluster: "demo", Member: "demo-2"}, "pg_wal/"+name), "does not run on host iad-1"},
		{"push of an unknown cluster", cl.Push(ctx, WALRequest{Cluster: "other", Member: "other-1"}, "pg_wal/"+name), "no cluster other"},
		{"fetch from another archive", cl.Fetch(ctx, WALRequest{Cluster: "demo", Member: "demo-1", From: "other"}, name, dest), "not restored from other"},
		{"fetch of a path", cl.Fetch(ctx, req, "../"+name, dest), "is not a WAL file name"},
		{"no agent", NewWALClient(filepath.Join(dataDir, "no.sock")).Push(ctx, req, "pg_wal/"+name), "is it running?"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) || errors.Is(c.err, ErrNotArchived) {
			t.Errorf("%s: error %v, want one saying %q", c.name, c.err, c.want)
		}
	}

	// The state store down: the archive it last named still takes WAL.
	clusters.down.Store(true)
	const next = "000000010000000000000003"
	if err := os.WriteFile(filepath.Join(pgwal, next), seg[:1000], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cl.Push(ctx, req, "pg_wal/"+next); err != nil {
		t.Errorf("Push(%s) with the state store down = %v, want it archived as before", next, err)
	}
	if err := cl.Push(ctx, WALRequest{Cluster: "demo", Member: "demo-3"}, "pg_wal/"+next); err == nil || !strings.Contains(err.Error(), "quorum") {
		t.Errorf("Push for a member never seen, with the state store down = %v, want the store's error", err)
	}
	clusters.down.Store(false)

	if entries, _ := os.ReadDir(w.spool); len(entries) != 0 {
		t.Errorf("spool holds %d entries after the requests, want none", len(entries))
	}
}
