package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/proxy"
)

// Scrape bounds. A scrape reads each member's postgres once, all members at
// once, over the member's own connection (supervisor.mon): nothing is
// polled between scrapes, so a scrape every 15 s costs a few short queries
// per member and nothing more.
const (
	// scrapeTimeout bounds one member's queries: a postgres that does not
	// answer in time is reported down rather than hold the scrape.
	scrapeTimeout = 2 * time.Second
	// backupCatalogEvery is how often the primary re-reads its cluster's
	// backup catalog for the backup age; listing it reads every manifest
	// from the backup store, too much for each scrape. While the catalog
	// holds no backup (a new cluster takes its first at once) or cannot be
	// read, it is read again after backupCatalogRetry.
	backupCatalogEvery = 5 * time.Minute
	backupCatalogRetry = 30 * time.Second
)

// memberMetrics holds what a supervisor counts for /metrics, and the
// backup catalog it caches for it.
type memberMetrics struct {
	elections   atomic.Int64 // elections this member ran in
	failovers   atomic.Int64 // promotions that took over from a lost or stepped-down primary
	switchovers atomic.Int64 // promotions as a switchover's target
	// planned is set by promote when the promotion under way is a
	// switchover's; the "promoted" event that ends it is counted by it.
	planned atomic.Bool

	backupMu      sync.Mutex
	backupTried   time.Time // when the catalog was last read, or tried
	backupRead    time.Time // when it was last read
	backups       int       // complete backups in the catalog
	lastBackup    time.Time // the newest one's stop time
	backupReading bool
}

// count counts the events that /metrics reports: a member runs in an
// election ("election") and is promoted ("promoted", once it runs as the
// primary).
func (m *memberMetrics) count(kind string) {
	switch kind {
	case "election":
		m.elections.Add(1)
	case "promoted":
		if m.planned.Swap(false) {
			m.switchovers.Add(1)
		} else {
			m.failovers.Add(1)
		}
	}
}

// labels are a sample's label pairs, name then value.
type labels []string

// sample is one line of the exposition.
type sample struct {
	labels labels
	value  float64
}

// family is one metric: its HELP and TYPE lines, then its samples.
type family struct {
	name, kind, help string
	samples          []sample
}

// exposition collects metrics and writes them in Prometheus' text format,
// each family once with all its samples, whatever order they were added in.
type exposition struct {
	mu   sync.Mutex
	fams []*family
	by   map[string]*family
}

func (e *exposition) add(name, kind, help string, v float64, l labels) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.by == nil {
		e.by = map[string]*family{}
	}
	f := e.by[name]
	if f == nil {
		f = &family{name: name, kind: kind, help: help}
		e.by[name] = f
		e.fams = append(e.fams, f)
	}
	f.samples = append(f.samples, sample{labels: l, value: v})
}

func (e *exposition) gauge(name, help string, v float64, l labels) { e.add(name, "gauge", help, v, l) }

func (e *exposition) counter(name, help string, v float64, l labels) {
	e.add(name, "counter", help, v, l)
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func (e *exposition) write(w io.Writer) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for _, f := range e.fams {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.name, f.help, f.name, f.kind)
		for _, s := range f.samples {
			b.WriteString(f.name)
			if len(s.labels) > 0 {
				b.WriteByte('{')
				for i := 0; i+1 < len(s.labels); i += 2 {
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", s.labels[i], labelEscaper.Replace(s.labels[i+1]))
				}
				b.WriteByte('}')
			}
			b.WriteByte(' ')
			b.WriteString(strconv.FormatFloat(s.value, 'g', -1, 64))
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// metrics serves /metrics: the proxy's counters, each proxy port's, and
// each member placed on this host, in Prometheus' text format.
func (rt *router) metrics(w http.ResponseWriter, r *http.Request) {
	var e exposition
	rt.proxyMetrics(&e)
	if rt.pool != nil {
		poolMetrics(rt.pool, rt.a.host, &e)
	}

	rt.a.supsMu.RLock()
	sups := make([]*supervisor, 0, len(rt.a.sups))
	for _, run := range rt.a.sups {
		sups = append(sups, run.sup)
	}
	rt.a.supsMu.RUnlock()
	slices.SortFunc(sups, func(a, b *supervisor) int { return strings.Compare(a.spec.ID, b.spec.ID) })
	var wg sync.WaitGroup
	for _, s := range sups {
		wg.Go(func() { s.collect(r.Context(), &e) })
	}
	wg.Wait()

	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if err := e.write(w); err != nil {
		rt.a.log.Debug("write /metrics", "err", err)
	}
}

func (rt *router) proxyMetrics(e *exposition) {
	st := rt.proxy.Stats()
	rt.mu.Lock()
	ok := 0.0
	if rt.storeOK {
		ok = 1
	}
	rt.mu.Unlock()
	host := labels{"host", rt.a.host.Name, "region", rt.a.host.Region}
	e.counter("pgfleet_proxy_connections_accepted_total", "Client connections the proxy accepted.", float64(st.Accepted.Load()), host)
	e.counter("pgfleet_proxy_connections_forwarded_total", "Client connections that reached a member.", float64(st.Forwarded.Load()), host)
	e.counter("pgfleet_proxy_connections_refused_total", "Client connections closed without reaching a member.", float64(st.Refused.Load()), host)
	e.counter("pgfleet_proxy_connections_rerouted_total", "Forwarded connections closed because their member stopped being the primary.", float64(st.Closed.Load()), host)
	e.gauge("pgfleet_proxy_connections_active", "Forwarded connections open now.", float64(st.Active.Load()), host)
	e.gauge("pgfleet_proxy_connections_held", "Connections waiting for a primary now.", float64(st.Held.Load()), host)
	e.counter("pgfleet_proxy_received_bytes_total", "Bytes forwarded from clients to members.", float64(st.ReceivedBytes.Load()), host)
	e.counter("pgfleet_proxy_sent_bytes_total", "Bytes forwarded from members to clients.", float64(st.SentBytes.Load()), host)
	e.gauge("pgfleet_proxy_store_ok", "1 when the last read of the state store succeeded; 0 while the proxy fails closed.", ok, host)

	for _, p := range rt.proxy.Ports() {
		l := labels{"cluster", p.Cluster, "port", strconv.Itoa(p.Port), "routes_to", p.Kind, "host", rt.a.host.Name, "region", rt.a.host.Region}
		e.counter("pgfleet_proxy_port_connections_accepted_total", "Client connections this port accepted.", float64(p.Accepted), l)
		e.counter("pgfleet_proxy_port_connections_forwarded_total", "Client connections this port forwarded to a member.", float64(p.Forwarded), l)
		e.counter("pgfleet_proxy_port_connections_refused_total", "Client connections this port closed without reaching a member: refused, held too long, member unreachable, too many.", float64(p.Refused), l)
		e.gauge("pgfleet_proxy_port_connections_active", "Connections this port forwards now.", float64(p.Active), l)
		e.gauge("pgfleet_proxy_port_connections_held", "Connections waiting on this port for a member now.", float64(p.Held), l)
		e.counter("pgfleet_proxy_port_received_bytes_total", "Bytes this port forwarded from clients.", float64(p.ReceivedBytes), l)
		e.counter("pgfleet_proxy_port_sent_bytes_total", "Bytes this port forwarded to clients.", float64(p.SentBytes), l)
		member := ""
		if p.Route.Mode == proxy.Forward {
			member = p.Route.Backend.Member
		}
		e.gauge("pgfleet_proxy_route", "The port's route now: 1 for its mode (forward, hold, refuse) and the member it forwards to.", 1,
			append(slices.Clip(l), "mode", p.Route.Mode.String(), "member", member))
	}
}

// pgSample is what one scrape reads from a member's postgres.
type pgSample struct {
	inRecovery         bool
	commits, rollbacks float64
	walBytes           float64
	dbBytes            float64
	replayLSN          postgres.LSN
	replayAge          float64 // standby: seconds since the last replayed commit's time
	archivedAt         *time.Time
	archiveFailures    float64
	connections        map[string]float64
	slots              []slotSample
}

// slotSample is one physical replication slot on a primary.
type slotSample struct {
	name       string
	retained   *float64 // bytes of WAL the slot keeps: current position - restart_lsn
	lag        *float64 // bytes the slot's standby has yet to replay
	lagSeconds *float64 // replay_lag of its stream, while it streams
}

// connStates are reported even at zero, so a dashboard's series do not come
// and go with the traffic.
var connStates = []string{"active", "idle", "idle in transaction", "idle in transaction (aborted)"}

// query reads everything a scrape reports from the member's postgres, in
// three statements, on the member's own metrics connection.
func (s *supervisor) query(ctx context.Context) (pgSample, error) {
	ps := pgSample{connections: map[string]float64{}}
	err := s.mon.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
		var replay *string
		var archivedAt *time.Time
		err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(),
			(SELECT coalesce(sum(xact_commit), 0)::float8 FROM pg_stat_database),
			(SELECT coalesce(sum(xact_rollback), 0)::float8 FROM pg_stat_database),
			(SELECT wal_bytes::float8 FROM pg_stat_wal),
			(SELECT coalesce(sum(pg_database_size(oid)), 0)::float8 FROM pg_database),
			CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,
			coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8,
			(SELECT last_archived_time FROM pg_stat_archiver),
			(SELECT failed_count::float8 FROM pg_stat_archiver)`).
			Scan(&ps.inRecovery, &ps.commits, &ps.rollbacks, &ps.walBytes, &ps.dbBytes, &replay, &ps.replayAge, &archivedAt, &ps.archiveFailures)
		if err != nil {
			return fmt.Errorf("read statistics: %w", err)
		}
		ps.archivedAt = archivedAt
		if replay != nil {
			if ps.replayLSN, err = postgres.ParseLSN(*replay); err != nil {
				return err
			}
		}
		rows, err := conn.Query(ctx, `SELECT coalesce(state, 'unknown'), count(*)::float8 FROM pg_stat_activity
			WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1`)
		if err != nil {
			return fmt.Errorf("count connections: %w", err)
		}
		var state string
		var n float64
		if _, err := pgx.ForEachRow(rows, []any{&state, &n}, func() error { ps.connections[state] = n; return nil }); err != nil {
			return fmt.Errorf("count connections: %w", err)
		}
		if ps.inRecovery {
			return nil
		}
		// A slot whose standby is down still holds its restart_lsn: the
		// lag of a stopped standby shows here, on the primary.
		rows, err = conn.Query(ctx, `SELECT s.slot_name,
				(pg_current_wal_lsn() - s.restart_lsn)::float8,
				(pg_current_wal_lsn() - coalesce(r.replay_lsn, s.restart_lsn))::float8,
				extract(epoch FROM r.replay_lag)::float8
			FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_type = 'physical' ORDER BY 1`)
		if err != nil {
			return fmt.Errorf("read replication slots: %w", err)
		}
		var sl slotSample
		_, err = pgx.ForEachRow(rows, []any{&sl.name, &sl.retained, &sl.lag, &sl.lagSeconds}, func() error {
			ps.slots = append(ps.slots, sl)
			return nil
		})
		if err != nil {
			return fmt.Errorf("read replication slots: %w", err)
		}
		return nil
	})
	return ps, err
}

// collect adds the member's metrics to e. Numbers from postgres come only
// from a query that answered in this scrape: a member whose postgres is
// down reports up 0 and none of them.
func (s *supervisor) collect(ctx context.Context, e *exposition) {
	base := labels{"cluster", s.spec.Cluster, "member", s.spec.ID, "host", s.host.Name, "region", s.spec.Region}
	with := func(kv ...string) labels { return append(slices.Clip(base), kv...) }

	s.mu.Lock()
	role, state := s.role, s.state
	s.mu.Unlock()
	if role == "" {
		role = s.spec.Role
	}
	e.gauge("pgfleet_member_role", "The member's role now (primary, standby, replica), as the label of a sample of 1.", 1, with("role", string(role)))
	e.gauge("pgfleet_member_state", "The member's state now, as its supervisor reports it (running, streaming, catching-up, failed...), as the label of a sample of 1.", 1, with("state", string(state)))
	e.counter("pgfleet_member_elections_total", "Elections this member ran in since the agent started.", float64(s.mx.elections.Load()), base)
	e.counter("pgfleet_member_failovers_total", "Times this member was promoted to primary in place of a lost or stepped-down one, since the agent started.", float64(s.mx.failovers.Load()), base)
	e.counter("pgfleet_member_switchovers_total", "Times this member was promoted to primary as a switchover's target, since the agent started.", float64(s.mx.switchovers.Load()), base)
	s.diskMetrics(e, base)

	var ps pgSample
	err := errors.New("postgres is not running")
	if s.inst.Pid() != 0 && !s.stopping.Load() {
		qctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
		ps, err = s.query(qctx)
		if err != nil && qctx.Err() == nil {
			// The connection may date from before postgres restarted: a
			// failed call drops it, so this tries a new one.
			ps, err = s.query(qctx)
		}
		cancel()
	}
	if err != nil {
		s.log.Debug("metrics: postgres does not answer", "err", err)
		e.gauge("pgfleet_member_up", "1 when the member's postgres answered this scrape's queries.", 0, base)
		return
	}
	e.gauge("pgfleet_member_up", "1 when the member's postgres answered this scrape's queries.", 1, base)
	e.counter("pgfleet_member_commits_total", "Transactions committed, all databases (pg_stat_database).", ps.commits, base)
	e.counter("pgfleet_member_rollbacks_total", "Transactions rolled back, all databases (pg_stat_database).", ps.rollbacks, base)
	e.counter("pgfleet_member_wal_written_bytes_total", "WAL this server generated (pg_stat_wal.wal_bytes).", ps.walBytes, base)
	e.gauge("pgfleet_member_database_size_bytes", "Size of all its databases (sum of pg_database_size).", ps.dbBytes, base)
	for _, st := range connStates {
		e.gauge("pgfleet_member_connections", "Client connections by state (pg_stat_activity).", ps.connections[st], with("state", st))
	}
	for st, n := range ps.connections {
		if !slices.Contains(connStates, st) {
			e.gauge("pgfleet_member_connections", "Client connections by state (pg_stat_activity).", n, with("state", st))
		}
	}
	if ps.inRecovery {
		// Measured against the primary's last published write position,
		// as the status this member publishes is.
		if w := s.primaryLSN.Load(); w > 0 {
			lag := fleet.LagBytes(w, uint64(ps.replayLSN))
			secs := 0.0
			if lag > 0 {
				secs = ps.replayAge
			}
			e.gauge("pgfleet_member_replication_lag_bytes", "Standby: WAL the primary has written that this member has not replayed.", float64(lag), base)
			e.gauge("pgfleet_member_replication_lag_seconds", "Standby: age of the last transaction it replayed while WAL is still to replay; 0 when caught up.", secs, base)
		}
	} else {
		for _, sl := range ps.slots {
			l := with("slot", sl.name)
			if sl.retained != nil {
				e.gauge("pgfleet_member_replication_slot_retained_bytes", "Primary: WAL a replication slot keeps in pg_wal (current position - restart_lsn).", *sl.retained, l)
			}
			if sl.lag != nil {
				e.gauge("pgfleet_member_standby_lag_bytes", "Primary: WAL the slot's standby has yet to replay, also while it is down (from restart_lsn then).", *sl.lag, l)
			}
			if sl.lagSeconds != nil {
				e.gauge("pgfleet_member_standby_lag_seconds", "Primary: replay_lag of the slot's standby while it streams (pg_stat_replication).", *sl.lagSeconds, l)
			}
		}
		s.backupMetrics(ctx, e, base)
	}
	e.counter("pgfleet_member_archive_failures_total", "Failed attempts to archive a WAL segment (pg_stat_archiver.failed_count).", ps.archiveFailures, base)
	if ps.archivedAt != nil {
		e.gauge("pgfleet_member_last_archived_age_seconds", "Time since the last WAL segment was archived (pg_stat_archiver).", time.Since(*ps.archivedAt).Seconds(), base)
	}
}

// diskMetrics reports the filesystem of the member's data directory.
func (s *supervisor) diskMetrics(e *exposition, base labels) {
	d, err := s.diskSpace()
	if err != nil {
		s.log.Debug("metrics: disk space", "err", err)
		return
	}
	e.gauge("pgfleet_member_disk_used_bytes", "Used space of the filesystem that holds the member's data directory.", float64(d.used), base)
	e.gauge("pgfleet_member_disk_free_bytes", "Space of the data directory's filesystem that postgres can still use.", float64(d.free), base)
	e.gauge("pgfleet_member_disk_size_bytes", "Size of the filesystem that holds the member's data directory.", float64(d.size), base)
	ro := 0.0
	if s.guarded() {
		ro = 1
	}
	e.gauge("pgfleet_member_read_only", "1 while the disk guard keeps this primary from taking writes.", ro, base)
}

// backupMetrics reports, from the primary, the cluster's base backups: how
// many the catalog holds and how old the newest is. The catalog is read in
// the background at most every backupCatalogEvery, so a scrape never waits
// for the backup store.
//
// The backup settings come from the store, not from s.cluster, which the
// supervisor's loops replace as they run.
func (s *supervisor) backupMetrics(ctx context.Context, e *exposition, base labels) {
	rctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	c, err := s.view.Cluster(rctx, s.spec.Cluster)
	cancel()
	if err != nil {
		s.log.Debug("metrics: read the cluster's backup settings", "err", err)
		return
	}
	b := c.Spec.Backup
	if b == nil {
		return
	}
	m := &s.mx
	m.backupMu.Lock()
	read, n, last := m.backupRead, m.backups, m.lastBackup
	every := backupCatalogEvery
	if n == 0 || m.backupTried.After(read) {
		every = backupCatalogRetry
	}
	if time.Since(m.backupTried) > every && !m.backupReading {
		m.backupReading = true
		go s.readBackupCatalog(context.WithoutCancel(ctx), *b)
	}
	m.backupMu.Unlock()
	e.gauge("pgfleet_member_backup_interval_seconds", "Primary: how often the cluster's schedule takes a base backup.", b.Every().Seconds(), base)
	if read.IsZero() {
		return
	}
	e.gauge("pgfleet_member_backups", "Primary: complete base backups in the cluster's catalog, as last read.", float64(n), base)
	if n > 0 {
		e.gauge("pgfleet_member_last_backup_age_seconds", "Primary: time since the newest complete base backup ended.", time.Since(last).Seconds(), base)
	}
}

func (s *supervisor) readBackupCatalog(ctx context.Context, b fleet.BackupSpec) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	key := ""
	if b.Encrypted {
		key = s.secrets.BackupKey
	}
	var stops []time.Time
	a, err := backup.OpenArchiveKey(ctx, b.Store, s.spec.Cluster, key)
	if err == nil {
		var ms []backup.Manifest
		ms, err = a.ListBackups(ctx)
		for _, m := range ms {
			stops = append(stops, m.StopTime)
		}
	}
	m := &s.mx
	m.backupMu.Lock()
	defer m.backupMu.Unlock()
	m.backupReading = false
	m.backupTried = time.Now()
	if err != nil {
		// The last known numbers stay; the next try waits its turn.
		s.log.Debug("metrics: read the backup catalog", "err", err)
		return
	}
	m.backupRead, m.backups = time.Now(), len(stops)
	if len(stops) > 0 {
		m.lastBackup = slices.MaxFunc(stops, time.Time.Compare)
	}
}
