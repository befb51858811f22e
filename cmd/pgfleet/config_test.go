package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestConfigSet changes settings of a live two-member cluster and checks
// each member's own SHOW; bad names and values, settings pgfleet owns and
// settings that need a restart are refused and change nothing.
func TestConfigSet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two agents and two postgres instances")
	}
	f := labtest.StartFleet(t, "iad:2")
	ctx := context.Background()
	c := f.Client
	if _, err := c.Create(ctx, api.CreateRequest{Name: "cfg", PrimaryRegion: "iad", HA: ptrInt(2), BackupStore: "none"}); err != nil {
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
		return v.Primary != "" && healthy == 2, fmt.Sprintf("primary %q, %d healthy", v.Primary, healthy)
	})
	show := func(member, setting string) string {
		u, err := c.URL(ctx, "cfg", member)
		if err != nil {
			t.Fatal(err)
		}
		conn := mustConnect(t, u.URL)
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
}

func ptrInt(n int) *int { return &n }
