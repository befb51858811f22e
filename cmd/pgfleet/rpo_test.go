package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// rpoBound is what a lost primary's host may take with it of the
// acknowledged commits, in async mode, with its WAL streamed to the store:
// the stream's upload interval (backup.DefaultStreamEvery, 500 ms) plus an
// upload, with room for this shared machine's load.
const rpoBound = 2 * time.Second

// TestRPOHostLost: a cluster whose only member writes continuously loses
// its whole host (agent and postgres killed at once, nothing archived on
// the way out); a restore with --latest into another region holds every
// commit acknowledged until within rpoBound of the loss, from WAL the
// archive never got (the primary's stream put it in the store), and
// backup verify finds no gap; a point-in-time restore to just before the
// loss holds exactly the commits before it.
func TestRPOHostLost(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-host dev fleet and restores twice")
	}
	c, dir, netArg := devFleetCLI(t, []string{"iad-1", "ams-1", "ams-2"})
	c.ok("dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad:1,ams:2")
	var hosts []api.HostView
	if err := json.Unmarshal([]byte(c.ok("hosts", "--json")), &hosts); err != nil {
		t.Fatal(err)
	}
	var survivors []string
	for _, h := range hosts {
		if h.Name != "iad-1" {
			survivors = append(survivors, h.APIAddr)
		}
	}
	c.ok("create", "db", "--primary-region", "iad", "--ha", "1", "--wait")
	c.ok("backup", "create", "db", "--wait")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "db", "--direct")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE ticks (n int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}

	// The writer commits a row every 10 ms and records what the server
	// acknowledged, with the row's time by the server's clock.
	var (
		mu    sync.Mutex
		acked = map[int]time.Time{}
		last  int
	)
	wctx, stopWriter := context.WithCancel(ctx)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for n := 1; wctx.Err() == nil; n++ {
			var at time.Time
			if err := conn.QueryRow(wctx, "INSERT INTO ticks (n) VALUES ($1) RETURNING at", n).Scan(&at); err != nil {
				return
			}
			mu.Lock()
			acked[n], last = at, n
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	// The fault comes 2.5 s after archive_timeout last cut a segment, so
	// that the archive lacks the last 2.5 s of commits and only the
	// stream has them.
	watch, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "db", "--direct")))
	if err != nil {
		t.Fatal(err)
	}
	archivedWAL := func() string {
		var last *string
		if err := watch.QueryRow(ctx, "SELECT last_archived_wal FROM pg_stat_archiver").Scan(&last); err != nil || last == nil {
			return fmt.Sprint(err)
		}
		return *last
	}
	before := archivedWAL()
	labtest.WaitFor(t, 20*time.Second, "archive_timeout to cut a segment while the writer writes", func() (bool, string) {
		now := archivedWAL()
		return now != before, "last archived " + now
	})
	watch.Close(ctx)
	time.Sleep(2500 * time.Millisecond) // the fault injected: writes the archive never gets
	loseHost(t, dir, "iad-1", "db-1")
	stopWriter()
	<-writerDone
	mu.Lock()
	lastN, lastAt := last, acked[last]
	mu.Unlock()
	if lastN < 50 {
		t.Fatalf("only %d commits acknowledged before the host was lost", lastN)
	}

	c.apis = strings.Join(survivors, ",")
	via := []string{"--api", c.apis}
	restoreRetrying(t, c, append([]string{"restore", "db", "--into", "after", "--latest", "--primary-region", "ams", "--ha", "1", "--wait"}, via...)...)
	rows := ticks(t, c, "after", via)
	n := len(rows)
	if n == 0 {
		t.Fatal("the restored cluster holds no row")
	}
	for i := 1; i <= n; i++ {
		if _, ok := rows[i]; !ok {
			t.Fatalf("the restored cluster holds %d rows but not row %d: not a prefix of the commits", n, i)
		}
	}
	lost := lastAt.Sub(rows[n])
	t.Logf("host lost after %d acknowledged commits; the restore holds %d, the last committed %s before the last acknowledged one", lastN, n, lost.Round(time.Millisecond))
	if n < lastN && lost > rpoBound {
		t.Errorf("the restore lost the acknowledged commits of the last %s (rows %d to %d), want at most %s", lost.Round(time.Millisecond), n+1, lastN, rpoBound)
	}
	if !strings.Contains(agentLogs(t, dir, "ams-1", "ams-2"), "restored a segment from streamed WAL") {
		var objs []string
		filepath.WalkDir(filepath.Join(dir, "backups", "db"), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				objs = append(objs, strings.TrimPrefix(p, dir))
			}
			return nil
		})
		t.Errorf("no agent restored a segment from streamed WAL: the archive alone held the restored commits; the store holds:\n%s", strings.Join(objs, "\n"))
	}
	c.ok(append([]string{"backup", "verify", "db"}, via...)...)

	// A time within the last streamed segment: exactly the commits before it.
	target := lastAt.Add(-time.Second)
	restoreRetrying(t, c, append([]string{"restore", "db", "--into", "before", "--time", target.UTC().Format(time.RFC3339Nano), "--primary-region", "ams", "--ha", "1", "--wait"}, via...)...)
	got := ticks(t, c, "before", via)
	want := 0
	for _, at := range acked {
		if at.Before(target) {
			want++
		}
	}
	for i := 1; i <= want; i++ {
		if _, ok := got[i]; !ok {
			t.Fatalf("the restore to %s lacks row %d, committed before it", target.Format(time.RFC3339Nano), i)
		}
	}
	if len(got) != want {
		t.Errorf("the restore to %s holds %d rows, want the %d committed before it", target.Format(time.RFC3339Nano), len(got), want)
	}
}

// restoreRetrying runs a restore, again while the store, which just lost a
// voter, answers that it has no quorum (the restore then changed nothing,
// and says to retry).
func restoreRetrying(t *testing.T, c cli, args ...string) {
	t.Helper()
	labtest.WaitFor(t, time.Minute, "pgfleet "+strings.Join(args, " "), func() (bool, string) {
		out, errs, code := c.run(args...)
		if code != 0 && !strings.Contains(errs, "no quorum") {
			t.Fatalf("pgfleet %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
		}
		return code == 0, errs
	})
}

// ticks returns the rows of cluster's ticks table, by n.
func ticks(t *testing.T, c cli, cluster string, via []string) map[int]time.Time {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok(append([]string{"url", cluster}, via...)...)))
	if err != nil {
		t.Fatalf("connect to %s: %v", cluster, err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT n, at FROM ticks")
	if err != nil {
		t.Fatalf("read %s: %v", cluster, err)
	}
	got := map[int]time.Time{}
	for rows.Next() {
		var n int
		var at time.Time
		if err := rows.Scan(&n, &at); err != nil {
			t.Fatal(err)
		}
		got[n] = at
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// agentLogs returns what the agents of hosts logged.
func agentLogs(t *testing.T, dir string, hosts ...string) string {
	t.Helper()
	var b strings.Builder
	for _, h := range hosts {
		out, err := os.ReadFile(filepath.Join(dir, h+".log"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s\n", out)
	}
	return b.String()
}
