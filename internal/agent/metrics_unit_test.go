package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// TestExpositionParses checks that what exposition writes is what
// Prometheus reads: one family per name whatever the order samples were
// added in, and label values escaped.
func TestExpositionParses(t *testing.T) {
	var e exposition
	e.gauge("pgfleet_test_route", "A route.", 1, labels{"why", "say \"hi\"\nback\\slash"})
	e.counter("pgfleet_test_total", "A count.", 3, labels{"member", "a"})
	e.gauge("pgfleet_test_route", "A route.", 0, labels{"why", "other"})
	var b strings.Builder
	if err := e.write(&b); err != nil {
		t.Fatal(err)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("parse exposition: %v\n%s", err, b.String())
	}
	route := fams["pgfleet_test_route"]
	if n := len(route.GetMetric()); n != 2 {
		t.Fatalf("pgfleet_test_route has %d samples, want 2:\n%s", n, b.String())
	}
	if got := route.Metric[0].Label[0].GetValue(); got != "say \"hi\"\nback\\slash" {
		t.Errorf("label value read back as %q", got)
	}
	if got := fams["pgfleet_test_total"].Metric[0].Counter.GetValue(); got != 3 {
		t.Errorf("pgfleet_test_total = %v, want 3", got)
	}
}

// TestCollectDown checks that a member whose postgres is not running
// reports up 0, its role and its disk, and no postgres number at all, not
// even one an earlier scrape read.
func TestCollectDown(t *testing.T) {
	dir := t.TempDir()
	s := &supervisor{
		spec: fleet.MemberSpec{ID: "demo-2", Cluster: "demo", Region: "iad", Role: fleet.RoleStandby},
		host: fleet.Host{Name: "iad-2", Region: "iad"},
		dir:  dir, log: slog.New(slog.DiscardHandler),
		inst: postgres.New(postgres.Config{DataDir: filepath.Join(dir, "pgdata")}),
		role: fleet.RoleStandby, state: fleet.StateFailed,
	}
	s.primaryLSN.Store(1 << 30)
	s.mx.count("election")
	var e exposition
	s.collect(context.Background(), &e)
	var b strings.Builder
	e.write(&b)
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, b.String())
	}
	if up := fams["pgfleet_member_up"]; up == nil || up.Metric[0].Gauge.GetValue() != 0 {
		t.Errorf("pgfleet_member_up of a member without postgres: %v; want 0", up)
	}
	for _, name := range []string{"pgfleet_member_role", "pgfleet_member_disk_free_bytes", "pgfleet_member_elections_total"} {
		if fams[name] == nil {
			t.Errorf("no %s for a member without postgres:\n%s", name, b.String())
		}
	}
	for _, name := range []string{"pgfleet_member_commits_total", "pgfleet_member_connections", "pgfleet_member_replication_lag_bytes", "pgfleet_member_wal_written_bytes_total"} {
		if fams[name] != nil {
			t.Errorf("%s reported for a member without postgres:\n%s", name, b.String())
		}
	}
}
