package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// writeBatch commits rows of batch n on the cluster's primary and returns
// the server's clock right after the commit.
func writeBatch(t *testing.T, c cli, cluster string, n int, note string) time.Time {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", cluster)))
	if err != nil {
		t.Fatalf("connect to %s: %v", cluster, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "INSERT INTO marks (batch, note) SELECT $1, $2 FROM generate_series(1, 10)", n, note); err != nil {
		t.Fatalf("batch %d: %v", n, err)
	}
	var at time.Time
	if err := conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&at); err != nil {
		t.Fatal(err)
	}
	// The next batch commits strictly later.
	labtest.WaitFor(t, 5*time.Second, "the server clock to move on", func() (bool, string) {
		var now time.Time
		conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now)
		return now.Sub(at) > 50*time.Millisecond, now.String()
	})
	return at
}

// batches returns how many rows of each batch cluster holds.
func batches(t *testing.T, c cli, cluster string) map[int]int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", cluster)))
	if err != nil {
		t.Fatalf("connect to %s: %v", cluster, err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT batch, count(*) FROM marks GROUP BY batch")
	if err != nil {
		t.Fatalf("read %s: %v", cluster, err)
	}
	got := map[int]int{}
	for rows.Next() {
		var b, n int
		rows.Scan(&b, &n)
		got[b] = n
	}
	return got
}

// archived waits until the primary of cluster has archived the WAL segment
// holding its current position, so that a restore can replay up to now.
func archived(t *testing.T, c cli, cluster string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", cluster)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var seg string
	if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 30*time.Second, "segment "+seg+" archived", func() (bool, string) {
		var last *string
		conn.QueryRow(ctx, "SELECT last_archived_wal FROM pg_stat_archiver").Scan(&last)
		return last != nil && *last >= seg, fmt.Sprint(last)
	})
}

// TestBackupRestore: a cluster backs up continuously, with encryption, to
// the dev fleet's store; restores to points in time before and after a
// switchover (a timeline switch) and to the latest state hold exactly the
// rows committed before their target; bad targets are refused and change
// nothing; the store never holds the plaintext of a row.
func TestBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dev fleet and restores several clusters")
	}
	hostNames := []string{"iad-1", "iad-2"}
	c, dir, netArg := devFleetCLI(t, hostNames)
	c.ok("dev", "up", "--dir", dir, "--net", netArg, "--regions", "iad:2")
	c.ok("create", "db", "--primary-region", "iad", "--ha", "2", "--backup-encrypt", "--wait")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, strings.TrimSpace(c.ok("url", "db")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE marks (batch int, note text, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	const marker = "pgfleet-plaintext-marker-7f3a"
	// A new cluster gets its first backup at once; wait for it.
	c.ok("backup", "create", "db", "--wait")
	t1 := writeBatch(t, c, "db", 1, marker)
	out := c.ok("backup", "create", "db", "--wait")
	if !strings.Contains(out, "done") {
		t.Fatalf("backup create --wait:\n%s", out)
	}
	var bl api.BackupsView
	if err := json.Unmarshal([]byte(c.ok("backup", "list", "db", "--json")), &bl); err != nil {
		t.Fatal(err)
	}
	if len(bl.Backups) < 2 {
		t.Fatalf("backup list: %d backups after two backup create --wait, want 2", len(bl.Backups))
	}
	if m := bl.Backups[len(bl.Backups)-1]; m.Member != "db-2" {
		t.Errorf("backup %s taken on %s, want the streaming standby db-2", m.ID, m.Member)
	}
	t2 := writeBatch(t, c, "db", 2, "")
	c.ok("switchover", "db")
	t3 := writeBatch(t, c, "db", 3, "")
	writeBatch(t, c, "db", 4, "")
	archived(t, c, "db")

	restores := []struct {
		name string
		args []string
		want map[int]int
	}{
		{"r1", []string{"--time", t1.UTC().Format(time.RFC3339Nano)}, map[int]int{1: 10}},
		{"r2", []string{"--time", t2.UTC().Format(time.RFC3339Nano)}, map[int]int{1: 10, 2: 10}},
		{"r3", []string{"--time", t3.UTC().Format(time.RFC3339Nano)}, map[int]int{1: 10, 2: 10, 3: 10}},
		{"r4", []string{"--latest"}, map[int]int{1: 10, 2: 10, 3: 10, 4: 10}},
	}
	for _, r := range restores {
		t.Run("restore "+r.name, func(t *testing.T) {
			c := c
			c.t = t
			args := append([]string{"restore", "db", "--into", r.name, "--ha", "1", "--wait"}, r.args...)
			c.ok(args...)
			got := batches(t, c, r.name)
			if fmt.Sprint(got) != fmt.Sprint(r.want) {
				t.Errorf("restore %v holds batches %v, want %v", r.args, got, r.want)
			}
			if r.name == "r4" {
				// The restored cluster archives its own WAL: a backup of it
				// completes only once its WAL is archived, and verifies.
				c.ok("backup", "create", r.name, "--wait")
				c.ok("backup", "verify", r.name)
			}
			// A store slowed down by the suite's load may ask to retry.
			labtest.WaitFor(t, 30*time.Second, "destroy "+r.name, func() (bool, string) {
				_, errs, code := c.run("destroy", r.name, "--yes")
				return code == 0, errs
			})
		})
	}

	t.Run("bad input changes nothing", func(t *testing.T) {
		c := c
		c.t = t
		c.fails(1, "no backup", "restore", "db", "--into", "early", "--time", t1.Add(-time.Hour).UTC().Format(time.RFC3339))
		c.fails(1, "future", "restore", "db", "--into", "later", "--time", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
		c.fails(1, "already exists", "restore", "db", "--into", "db", "--latest")
		c.fails(1, "cluster nosuch does not exist", "restore", "nosuch", "--into", "x", "--latest", "--primary-region", "iad")
		c.fails(2, "exactly one of", "restore", "db", "--into", "x", "--latest", "--lsn", "0/1000000")
		c.fails(2, "--into NEW is required", "restore", "db", "--latest")
		for _, name := range []string{"early", "later", "x"} {
			if _, _, code := c.run("status", name); code == 0 {
				t.Errorf("a refused restore left cluster %s behind", name)
			}
		}
	})

	t.Run("schedule", func(t *testing.T) {
		c := c
		c.t = t
		c.fails(2, "a minute or more", "backup", "schedule", "db", "--every", "30s")
		c.ok("backup", "schedule", "db", "--every", "6h")
		if out := c.ok("events", "db"); !strings.Contains(out, "base backups every 6h0m0s") {
			t.Errorf("events lack the schedule change:\n%s", out)
		}
	})

	t.Run("verify", func(t *testing.T) {
		c := c
		c.t = t
		out := c.ok("backup", "verify", "db")
		if !strings.Contains(out, "intact") {
			t.Errorf("backup verify db:\n%s", out)
		}
	})

	t.Run("store holds no plaintext", func(t *testing.T) {
		n := 0
		filepath.WalkDir(filepath.Join(dir, "backups"), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			n++
			b, err := os.ReadFile(path)
			if err == nil && strings.Contains(string(b), marker) {
				t.Errorf("%s holds the plaintext marker", path)
			}
			return nil
		})
		if n < 3 {
			t.Errorf("the store holds %d objects, want a backup and WAL", n)
		}
	})

	// A destroyed cluster says so, and is restored in the shape it had
	// without being told the shape again.
	t.Run("restore of a destroyed cluster", func(t *testing.T) {
		c := c
		c.t = t
		labtest.WaitFor(t, 30*time.Second, "destroy db", func() (bool, string) {
			_, errs, code := c.run("destroy", "db", "--yes")
			return code == 0, errs
		})
		// Its history is kept with its backups, its destruction last.
		if out := c.ok("events", "db"); !strings.Contains(out, "created") || !strings.Contains(out, "cluster db destroyed; its backups are kept") {
			t.Errorf("events of the destroyed cluster:\n%s\nwant its history, its destruction last", out)
		}
		c.fails(1, "backup list db", "status", "db")
		c.ok("restore", "db", "--into", "again", "--latest", "--wait")
		v := status(t, c, "again")
		if v.PrimaryRegion != "iad" || v.HA != 2 || len(v.Members) != 2 {
			t.Errorf("the restored cluster has primary region %s, ha %d, %d members; want db's iad, 2, 2", v.PrimaryRegion, v.HA, len(v.Members))
		}
		if got := batches(t, c, "again"); fmt.Sprint(got) != fmt.Sprint(map[int]int{1: 10, 2: 10, 3: 10, 4: 10}) {
			t.Errorf("the restored cluster holds batches %v, want all four", got)
		}
	})
}
