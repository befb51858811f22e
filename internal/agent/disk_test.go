package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestDiskGuard gives every host a small filesystem of its own for its
// members (tmpfs) and fills the standby's with a file, the way a log or a
// forgotten dump would: the cluster stops taking writes, an existing
// session included, and says which member is short and by how much; with
// the guard turned off writes go on, and once the file is gone they resume
// by themselves. The standby never stops streaming meanwhile.
func TestDiskGuard(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two agents and two postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2")
	for _, h := range f.Plan.Hosts {
		mountSmallDisk(t, f, filepath.Join(f.DataDir(h.Name), "members"), "512m")
	}
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "db", PrimaryRegion: "iad", HA: ptr(2)}); err != nil {
		t.Fatal(err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 2*time.Minute, "cluster db ready, every member's disk measured", func() (bool, string) {
		var err error
		if v, err = c.Cluster(ctx, "db"); err != nil {
			return false, err.Error()
		}
		for _, m := range v.Members {
			if m.DiskSize == 0 {
				return false, m.ID + " has published no disk size"
			}
		}
		return clusterReady(v)
	})
	if v.DiskGuard != fleet.DefaultDiskGuard {
		t.Errorf("disk guard = %d %%, want the default %d %%", v.DiskGuard, fleet.DefaultDiskGuard)
	}
	var standby api.MemberView
	for _, m := range v.Members {
		if m.ID != v.Primary {
			standby = m
		}
	}
	u, err := c.URL(ctx, "db", "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, u.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	insert := func() error {
		ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := conn.Exec(ictx, "INSERT INTO t VALUES (1)")
		return err
	}

	// Fill the standby's disk to 5 % free: 25 MB, room for the next WAL
	// segment its walreceiver makes (16 MB).
	dir := filepath.Join(f.DataDir(standby.Host), "members")
	ballast := filepath.Join(dir, "ballast")
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	size, free := int64(fs.Blocks)*int64(fs.Bsize), int64(fs.Bavail)*int64(fs.Bsize)
	t.Logf("%s: %d of %d bytes free; filling to 5 %%", dir, free, size)
	fill(t, ballast, free-size*5/100)

	labtest.WaitFor(t, 30*time.Second, "writes refused as read-only", func() (bool, string) {
		err := insert()
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "25006" {
			return true, ""
		}
		return false, fmt.Sprintf("INSERT: %v", err)
	})
	// The primary publishes why right after it stops the writes.
	labtest.WaitFor(t, 10*time.Second, "the cluster saying why it is read-only", func() (bool, string) {
		v, err := c.Cluster(ctx, "db")
		if err != nil {
			return false, err.Error()
		}
		for _, want := range []string{"member " + standby.ID + " on host " + standby.Host, "below the disk guard's 10 %", "writes resume by themselves"} {
			if !strings.Contains(v.ReadOnly, want) {
				return false, fmt.Sprintf("read-only reason %q lacks %q", v.ReadOnly, want)
			}
		}
		return true, ""
	})
	waitEvent(t, c, "read-only", standby.ID)
	var reads int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&reads); err != nil {
		t.Errorf("reads stopped with the writes: %v", err)
	}

	// The guard turned off: writes go on while the disk is still short.
	off := fleet.DiskGuardOff
	if _, err := c.Update(ctx, "db", api.UpdateRequest{DiskGuard: &off}); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 30*time.Second, "writes taken with the guard off", func() (bool, string) {
		err := insert()
		return err == nil, fmt.Sprintf("INSERT: %v", err)
	})
	bad := 0
	if _, err := c.Update(ctx, "db", api.UpdateRequest{DiskGuard: &bad}); err == nil || !strings.Contains(err.Error(), "from 1 to 50") {
		t.Errorf("disk guard 0 through the API: %v, want an error that gives the range", err)
	}
	ten := 10
	if _, err := c.Update(ctx, "db", api.UpdateRequest{DiskGuard: &ten}); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 30*time.Second, "writes refused again with the guard back on", func() (bool, string) {
		err := insert()
		return err != nil && strings.Contains(err.Error(), "read-only transaction"), fmt.Sprintf("INSERT: %v", err)
	})

	// Space freed: writes resume by themselves.
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 30*time.Second, "writes taken again once space is freed", func() (bool, string) {
		err := insert()
		return err == nil, fmt.Sprintf("INSERT: %v", err)
	})
	waitEvent(t, c, "read-write", "takes writes again")
	v, err = c.Cluster(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	if v.ReadOnly != "" {
		t.Errorf("writes resumed but the cluster still says read-only: %q", v.ReadOnly)
	}
	for _, m := range v.Members {
		if !m.Healthy {
			t.Errorf("member %s is not healthy after the disk filled and emptied: %s %s", m.ID, m.State, m.Message)
		}
	}
}

// mountSmallDisk mounts a tmpfs of size on dir for the rest of the test:
// a filesystem that fills in seconds, unlike the machine's.
func mountSmallDisk(t *testing.T, f *labtest.Fleet, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a tmpfs on %s: %v: %s", dir, err, out)
		}
		t.Skipf("mount a tmpfs on %s (needs root): %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		f.StopAll() // nothing may hold the filesystem when it goes
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// fill writes a file of n bytes.
func fill(t *testing.T, path string, n int64) {
	t.Helper()
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := fh.Write(buf[:k]); err != nil {
			t.Fatalf("fill %s: %v", path, err)
		}
		n -= k
	}
}

// waitEvent waits for an event of kind whose message contains text.
func waitEvent(t *testing.T, c *api.Client, kind, text string) {
	t.Helper()
	labtest.WaitFor(t, 30*time.Second, "a "+kind+" event about "+text, func() (bool, string) {
		evs, err := c.Events(context.Background(), "db", 50)
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range evs {
			if e.Kind == kind && strings.Contains(e.Message, text) {
				return true, ""
			}
			seen = append(seen, e.Kind+": "+e.Message)
		}
		return false, strings.Join(seen, " | ")
	})
}
