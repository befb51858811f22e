package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestConfigSet changes settings of a live three-member cluster and checks
// each member's own SHOW; bad names and values, settings pgfleet owns and
// settings that need a restart without --restart are refused and change
// nothing. Then shared_buffers changes with a rolling restart while an app
// writes through the proxy: never more than one member down, no failed
// transaction, the new value on every member.
func TestConfigSet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two agents and two postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2,ams")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "cfg", PrimaryRegion: "iad", HA: ptrInt(2), Replicas: []string{"ams"}, BackupStore: "none"}); err != nil {
		t.Fatal(err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, "cluster cfg ready", func() (bool, string) {
		var err error
		if v, err = c.Cluster(ctx, "cfg"); err != nil {
			return false, err.Error()
		}
		healthy := 0
		for _, m := range v.Members {
			if m.Healthy {
				healthy++
			}
		}
		return v.Primary != "" && healthy == 3, fmt.Sprintf("primary %q, %d healthy", v.Primary, healthy)
	})
	show := func(member, setting string) string {
		u, err := c.URL(ctx, "cfg", member)
		if err != nil {
			t.Fatal(err)
		}
		conn := labtest.Connect(t, u.URL)
		defer conn.Close(ctx)
		var s string
		if err := conn.QueryRow(ctx, "SHOW "+setting).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	everywhere := func(setting, want string) {
		t.Helper()
		labtest.WaitFor(t, time.Minute, setting+" = "+want+" on every member", func() (bool, string) {
			var got []string
			ok := true
			for _, m := range v.Members {
				s := show(m.ID, setting)
				got = append(got, m.ID+"="+s)
				ok = ok && s == want
			}
			return ok, strings.Join(got, ", ")
		})
	}

	out, stderr, err := inFleet(t, f, "config", "set", "cfg", "work_mem=64MB", "statement_timeout=30s")
	if err != nil {
		t.Fatalf("config set: %v\n%s", err, stderr)
	}
	if !strings.Contains(out, "work_mem") || !strings.Contains(out, "statement_timeout") {
		t.Errorf("config set printed:\n%s", out)
	}
	everywhere("work_mem", "64MB")
	everywhere("statement_timeout", "30s")
	if out, _, err := inFleet(t, f, "config", "show", "cfg"); err != nil || !strings.Contains(out, "65536 (kB)") {
		t.Errorf("config show: %v\n%s", err, out)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"work_mem=lots"}, "not a number"},
		{[]string{"work_mem=1kB"}, "out of range"},
		{[]string{"no_such_setting=1"}, "no such setting"},
		{[]string{"archive_command=/bin/true"}, "reserved"},
		{[]string{"shared_buffers=256MB"}, "only when postgres restarts"},
		{[]string{"log_min_messages=loud"}, "want one of"},
		{[]string{"work_mem=32MB", "fsync=off"}, "fsync"},
		{[]string{"work_mem"}, "KEY=VALUE"},
	} {
		_, _, err := inFleet(t, f, append([]string{"config", "set", "cfg"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("config set %v: %v; want refused, saying %q", tt.args, err, tt.want)
		}
	}
	// Nothing of the refused requests took effect, not even their valid part.
	everywhere("work_mem", "64MB")

	if _, stderr, err := inFleet(t, f, "config", "set", "cfg", "--reset", "work_mem"); err != nil {
		t.Fatalf("config set --reset: %v\n%s", err, stderr)
	}
	everywhere("work_mem", "4MB")

	// A setting that takes a restart, under a writer through the proxy.
	pu, err := c.ClusterURL(ctx, "cfg", api.URLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := labtest.Connect(t, pu.URL).Exec(ctx, "CREATE TABLE w (id serial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	var writes, failed, maxDown int
	var firstFail string
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			err := insertOnce(wctx, pu.URL)
			cancel()
			if err != nil {
				failed++
				if firstFail == "" {
					firstFail = err.Error()
				}
				continue
			}
			writes++
			if cv, err := c.Cluster(ctx, "cfg"); err == nil {
				// Down is postgres not running: a standby taking over in
				// a switchover is catching up, not down.
				down := 0
				for _, m := range cv.Members {
					switch m.State {
					case fleet.StateRunning, fleet.StateStreaming, fleet.StateCatchingUp:
					default:
						down++
					}
				}
				maxDown = max(maxDown, down)
			}
		}
	}()
	out, stderr, err = inFleet(t, f, "config", "set", "cfg", "shared_buffers=256MB", "--restart")
	close(stop)
	<-done
	if err != nil {
		t.Fatalf("config set --restart: %v\n%s\n%s", err, out, stderr)
	}
	t.Logf("rolling restart:\n%s", out)
	t.Logf("the app wrote %d times during it; %d failed; at most %d member(s) down at once", writes, failed, maxDown)
	everywhere("shared_buffers", "256MB")
	if failed > 0 {
		t.Errorf("%d of the app's writes failed during the rolling restart; first: %s", failed, firstFail)
	}
	if maxDown > 1 {
		t.Errorf("%d members were down at once during the rolling restart, want at most 1", maxDown)
	}
	if _, _, err := inFleet(t, f, "config", "set", "cfg", "max_connections=50", "--restart"); err == nil || !strings.Contains(err.Error(), "can only go up") {
		t.Errorf("lowering max_connections in a rolling restart: %v; want refused", err)
	}
}

// insertOnce connects, writes one row and disconnects, as an app that
// connects per transaction does.
func insertOnce(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "INSERT INTO w DEFAULT VALUES")
	return err
}

func ptrInt(n int) *int { return &n }
