package agent_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// scraper reads the agents' /metrics as Prometheus would, over kept-alive
// connections (an agent caps the API connections one address holds), and
// parses it with Prometheus' own text parser.
type scraper struct {
	f *labtest.Fleet
	c *http.Client
}

func newScraper(t *testing.T, f *labtest.Fleet) scraper {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CA}}}
	t.Cleanup(c.CloseIdleConnections)
	return scraper{f: f, c: c}
}

func (s scraper) scrape(host string) (map[string]*dto.MetricFamily, error) {
	resp, err := s.c.Get("https://" + s.f.Host(host).API() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	return fams, nil
}

// value is the value of the sample of name whose labels include want, and
// whether there is one.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if have[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// unitWord finds a unit in a metric name: Prometheus names carry base
// units (bytes, seconds) as their last word, before _total for counters.
var unitWord = regexp.MustCompile(`_(bytes|seconds|milliseconds|ms|kb|mb|gb|kilobytes|megabytes|minutes|hours|percent)(_|$)`)

// checkConventions reports every metric that breaks Prometheus' naming
// conventions as pgfleet follows them.
func checkConventions(t *testing.T, host string, fams map[string]*dto.MetricFamily) {
	t.Helper()
	for name, f := range fams {
		if !strings.HasPrefix(name, "pgfleet_") {
			t.Errorf("%s: metric %s lacks the pgfleet_ prefix", host, name)
		}
		if f.GetHelp() == "" {
			t.Errorf("%s: metric %s has no HELP", host, name)
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			if !strings.HasSuffix(name, "_total") {
				t.Errorf("%s: counter %s does not end in _total", host, name)
			}
		case dto.MetricType_GAUGE:
			if strings.HasSuffix(name, "_total") {
				t.Errorf("%s: gauge %s ends in _total, which is for counters", host, name)
			}
		default:
			t.Errorf("%s: metric %s is a %s; want a counter or a gauge with a TYPE line", host, name, f.GetType())
		}
		base := strings.TrimSuffix(name, "_total")
		if m := unitWord.FindStringSubmatch(name); m != nil {
			if unit := m[1]; unit != "bytes" && unit != "seconds" {
				t.Errorf("%s: metric %s is in %s; want base units (bytes, seconds)", host, name, unit)
			} else if !strings.HasSuffix(base, "_"+unit) {
				t.Errorf("%s: metric %s names its unit %s other than at the end", host, name, unit)
			}
		}
		if strings.HasPrefix(name, "pgfleet_member_") {
			for _, m := range f.Metric {
				have := map[string]bool{}
				for _, l := range m.Label {
					have[l.GetName()] = l.GetValue() != ""
				}
				for _, l := range []string{"cluster", "member", "host", "region"} {
					if !have[l] {
						t.Errorf("%s: a sample of %s lacks label %s: %v", host, name, l, m.Label)
					}
				}
			}
		}
	}
}

// TestMetrics scrapes every agent's /metrics during a cluster's life: every
// member reports itself up with its role; the primary sees the lag of a
// standby whose host is down grow and fall once it is back; a failover is
// counted; every name follows the conventions.
func TestMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three agents and three postgres instances")
	}
	// Members archive WAL through this test binary (walCommand).
	pg, err := postgres.CurrentOrPostgres()
	if err != nil {
		t.Fatal(err)
	}
	letPostgresRunTestBinary(t, pg)
	f := labtest.StartFleet(t, "iad:3")
	scrape := newScraper(t, f).scrape
	ctx := context.Background()
	c := f.Client
	backups := "file://" + filepath.Join(labtest.TestDir(t), "backups")
	if _, err := c.Create(ctx, api.CreateRequest{Name: "mx", PrimaryRegion: "iad", HA: ptr(3), BackupStore: backups}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, "cluster mx ready", func() (bool, string) {
		var err error
		if v, err = c.Cluster(ctx, "mx"); err != nil {
			return false, err.Error()
		}
		return clusterReady(v)
	})
	hostOf := map[string]string{}
	for _, m := range v.Members {
		hostOf[m.ID] = m.Host
	}
	primary := v.Primary
	var standby string
	for _, m := range v.Members {
		if m.ID != primary {
			standby = m.ID
			break
		}
	}
	member := func(id string) map[string]string {
		return map[string]string{"cluster": "mx", "member": id}
	}

	// Every member reports, from its own host, that it is up and its role.
	for _, m := range v.Members {
		labtest.WaitFor(t, 30*time.Second, m.ID+" up with its role on "+m.Host, func() (bool, string) {
			fams, err := scrape(m.Host)
			if err != nil {
				return false, err.Error()
			}
			up, _ := value(fams, "pgfleet_member_up", member(m.ID))
			role, ok := value(fams, "pgfleet_member_role", map[string]string{"member": m.ID, "role": string(m.Role)})
			return up == 1 && ok && role == 1, fmt.Sprintf("up=%v, role %s=%v (%v)", up, m.Role, role, ok)
		})
	}
	for _, h := range f.Plan.Hosts {
		fams, err := scrape(h.Name)
		if err != nil {
			t.Fatal(err)
		}
		checkConventions(t, h.Name, fams)
		for _, name := range []string{"pgfleet_member_commits_total", "pgfleet_member_connections", "pgfleet_member_disk_free_bytes", "pgfleet_member_wal_written_bytes_total", "pgfleet_proxy_route"} {
			if fams[name] == nil {
				t.Errorf("%s: /metrics lacks %s", h.Name, name)
			}
		}
		// Every proxy routes the primary port to the primary.
		if r, ok := value(fams, "pgfleet_proxy_route", map[string]string{"cluster": "mx", "routes_to": "primary", "mode": "forward", "member": primary}); !ok || r != 1 {
			t.Errorf("%s: pgfleet_proxy_route of mx's primary port forwarding to %s = %v (%v); want 1", h.Name, primary, r, ok)
		}
	}

	// The primary reports the cluster's first backup, taken at once, and
	// archiving that works.
	labtest.WaitFor(t, 2*time.Minute, "the first backup and WAL archived, seen on the primary", func() (bool, string) {
		fams, err := scrape(hostOf[primary])
		if err != nil {
			return false, err.Error()
		}
		n, _ := value(fams, "pgfleet_member_backups", member(primary))
		age, ok := value(fams, "pgfleet_member_last_backup_age_seconds", member(primary))
		every, _ := value(fams, "pgfleet_member_backup_interval_seconds", member(primary))
		fails, fok := value(fams, "pgfleet_member_archive_failures_total", member(primary))
		archived, aok := value(fams, "pgfleet_member_last_archived_age_seconds", member(primary))
		return n >= 1 && ok && age < 600 && every > 0 && fok && fails == 0 && aok && archived < 600,
			fmt.Sprintf("%v backups, the newest %v s old (%v) every %v s; archive failures %v (%v), last archived %v s ago (%v)", n, age, ok, every, fails, fok, archived, aok)
	})

	// A connection through a proxy is counted on its port, its bytes once
	// it closes.
	pu, err := c.ClusterURL(ctx, "mx", api.URLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pu.URL)
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE filler (id int, pad text)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	labtest.WaitFor(t, 10*time.Second, "the proxy connection counted", func() (bool, string) {
		var fwd, recv float64
		for _, h := range f.Plan.Hosts {
			fams, err := scrape(h.Name)
			if err != nil {
				return false, err.Error()
			}
			n, _ := value(fams, "pgfleet_proxy_port_connections_forwarded_total", map[string]string{"cluster": "mx", "routes_to": "primary"})
			b, _ := value(fams, "pgfleet_proxy_port_received_bytes_total", map[string]string{"cluster": "mx", "routes_to": "primary"})
			fwd, recv = fwd+n, recv+b
		}
		return fwd >= 1 && recv > 0, fmt.Sprintf("forwarded %v, received %v bytes", fwd, recv)
	})

	// The primary reports how far each standby is behind, from its slot:
	// also while the standby's host is down, when the standby cannot.
	slot := map[string]string{"cluster": "mx", "member": primary, "slot": postgres.SlotName(standby)}
	primaryLag := func() (float64, string) {
		fams, err := scrape(hostOf[primary])
		if err != nil {
			return -1, err.Error()
		}
		lag, ok := value(fams, "pgfleet_member_standby_lag_bytes", slot)
		if !ok {
			return -1, "no pgfleet_member_standby_lag_bytes for " + standby
		}
		return lag, fmt.Sprintf("%s's lag seen from the primary: %v bytes", standby, lag)
	}
	const mb = 1 << 20
	labtest.WaitFor(t, 30*time.Second, standby+" caught up", func() (bool, string) {
		lag, s := primaryLag()
		return lag >= 0 && lag < mb, s
	})

	f.Stop(hostOf[standby])
	pconn, err := pgx.Connect(ctx, mustURL(t, c, primary))
	if err != nil {
		t.Fatal(err)
	}
	defer pconn.Close(ctx)
	if _, err := pconn.Exec(ctx, "INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g"); err != nil {
		t.Fatal(err)
	}
	labtest.WaitFor(t, 30*time.Second, standby+"'s lag above 4 MB while its host is down", func() (bool, string) {
		lag, s := primaryLag()
		return lag > 4*mb, s
	})
	_, seen := primaryLag()
	t.Logf("while %s is down: %s", hostOf[standby], seen)
	if fams, err := scrape(hostOf[primary]); err == nil {
		if r, ok := value(fams, "pgfleet_member_replication_slot_retained_bytes", slot); !ok || r < 4*mb {
			t.Errorf("pgfleet_member_replication_slot_retained_bytes of %s's slot = %v (%v); want above 4 MB while it is down", standby, r, ok)
		}
	}

	f.Start(hostOf[standby], "")
	labtest.WaitFor(t, 2*time.Minute, standby+"'s lag back under 1 MB", func() (bool, string) {
		lag, s := primaryLag()
		return lag >= 0 && lag < mb, s
	})
	_, seen = primaryLag()
	t.Logf("once %s is back: %s", hostOf[standby], seen)
	// And the standby says so itself, once it streams again.
	labtest.WaitFor(t, time.Minute, standby+" reports itself caught up", func() (bool, string) {
		fams, err := scrape(hostOf[standby])
		if err != nil {
			return false, err.Error()
		}
		up, _ := value(fams, "pgfleet_member_up", member(standby))
		lag, ok := value(fams, "pgfleet_member_replication_lag_bytes", member(standby))
		secs, _ := value(fams, "pgfleet_member_replication_lag_seconds", member(standby))
		return up == 1 && ok && lag < mb, fmt.Sprintf("up=%v, lag %v bytes (%v), %v s", up, lag, ok, secs)
	})

	// A failover is counted once, by the member that took over.
	failovers := func() (float64, map[string]float64, error) {
		total, by := 0.0, map[string]float64{}
		for _, h := range f.Plan.Hosts {
			fams, err := scrape(h.Name)
			if err != nil {
				return 0, nil, err
			}
			for _, m := range fams["pgfleet_member_failovers_total"].GetMetric() {
				for _, l := range m.Label {
					if l.GetName() == "member" {
						by[l.GetValue()] += m.Counter.GetValue()
					}
				}
				total += m.Counter.GetValue()
			}
		}
		return total, by, nil
	}
	before, _, err := failovers()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Failover(ctx, "mx"); err != nil {
		t.Fatalf("Failover: %v", err)
	}
	labtest.WaitFor(t, 2*time.Minute, "a new primary after the failover", func() (bool, string) {
		if v, err = c.Cluster(ctx, "mx"); err != nil {
			return false, err.Error()
		}
		ok, s := clusterReady(v)
		return ok && v.Primary != primary, s
	})
	labtest.WaitFor(t, 30*time.Second, "the failover counted", func() (bool, string) {
		total, by, err := failovers()
		if err != nil {
			return false, err.Error()
		}
		return total == before+1 && by[v.Primary] >= 1, fmt.Sprintf("pgfleet_member_failovers_total: %v in all, before %v; by member %v; new primary %s", total, before, by, v.Primary)
	})
	fams, err := scrape(hostOf[v.Primary])
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := value(fams, "pgfleet_member_role", map[string]string{"member": v.Primary, "role": string(fleet.RolePrimary)}); !ok || r != 1 {
		t.Errorf("pgfleet_member_role{member=%q,role=\"primary\"} = %v (%v); want 1", v.Primary, r, ok)
	}
	if n, _ := value(fams, "pgfleet_member_elections_total", member(v.Primary)); n < 1 {
		t.Errorf("pgfleet_member_elections_total of %s = %v; want at least 1", v.Primary, n)
	}
	// What a scrape costs: the primary's host, one member, over a kept-alive
	// connection.
	var took []time.Duration
	for range 20 {
		start := time.Now()
		if _, err := scrape(hostOf[v.Primary]); err != nil {
			t.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("a scrape of %s took %s (median of 20), %s at most", hostOf[v.Primary], took[10], took[19])
	var names []string
	for n := range fams {
		names = append(names, n)
	}
	slices.Sort(names)
	t.Logf("metrics of %s: %s", hostOf[v.Primary], strings.Join(names, " "))
}

// mustURL is a direct URL of member.
func mustURL(t *testing.T, c *api.Client, member string) string {
	t.Helper()
	u, err := c.URL(context.Background(), "mx", member)
	if err != nil {
		t.Fatal(err)
	}
	return u.URL
}
