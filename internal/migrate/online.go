package migrate

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Replication is what the source offers logical replication, as an
// online import needs it.
type Replication struct {
	WalLevel     string // wal_level: minimal, replica or logical
	MaxSlots     int    // max_replication_slots
	UsedSlots    int    // slots that exist already
	MaxSenders   int    // max_wal_senders
	UsedSenders  int    // walsenders running now
	CanReplicate bool   // the connecting role has REPLICATION or is a superuser
	Superuser    bool   // the connecting role is a superuser
	User         string // the connecting role
}

// TableIdentity is how a source table names its rows to logical
// replication: by its primary key, by a replica identity index, by all
// its columns (FULL), or not at all.
type TableIdentity struct {
	Table      string // qualified and quoted by the source's catalog
	PrimaryKey bool
	Identity   string // pg_class.relreplident: d (default), n (nothing), f (full), i (index)
}

// Identified reports whether logical replication can apply the table's
// updates and deletes elsewhere: a publication of a table that cannot
// name its rows refuses every UPDATE and DELETE on the source.
func (t TableIdentity) Identified() bool {
	switch t.Identity {
	case "f", "i":
		return true
	case "d":
		return t.PrimaryKey
	}
	return false
}

// Unidentified returns the tables that Identified rejects, sorted.
func Unidentified(tables []TableIdentity) []string {
	var out []string
	for _, t := range tables {
		if !t.Identified() {
			out = append(out, t.Table)
		}
	}
	sort.Strings(out)
	return out
}

// CheckOnline refuses an online import the source cannot serve, naming
// every change it needs at once so that one restart of the source is
// enough: wal_level=logical, a free replication slot and walsender for
// the subscription plus one each for the initial copy's table workers
// (PostgreSQL 15 copies two tables at a time), a role that may
// replicate, and tables that can name their rows (fullIdentity: they will
// be given REPLICA IDENTITY FULL instead).
func CheckOnline(r Replication, tables []TableIdentity, fullIdentity bool) error {
	const need = 3 // the apply worker's slot and two table-sync slots
	var fixes []string
	if r.WalLevel != "logical" {
		fixes = append(fixes, fmt.Sprintf("set wal_level = logical (it is %s) and restart the source", r.WalLevel))
	}
	if free := r.MaxSlots - r.UsedSlots; free < need {
		fixes = append(fixes, fmt.Sprintf("raise max_replication_slots to at least %d (it is %d, %d in use; takes a restart)", r.UsedSlots+need, r.MaxSlots, r.UsedSlots))
	}
	if free := r.MaxSenders - r.UsedSenders; free < need {
		fixes = append(fixes, fmt.Sprintf("raise max_wal_senders to at least %d (it is %d, %d in use; takes a restart)", r.UsedSenders+need, r.MaxSenders, r.UsedSenders))
	}
	if !r.CanReplicate {
		fixes = append(fixes, fmt.Sprintf("give the role %s REPLICATION (ALTER ROLE %s REPLICATION), or import as a superuser", r.User, quoteIdent(r.User)))
	}
	if bad := Unidentified(tables); len(bad) > 0 && !fullIdentity {
		fixes = append(fixes, fmt.Sprintf("give these tables a primary key or a replica identity, or pass --replica-identity-full to set REPLICA IDENTITY FULL on them (their updates then cost a scan on the cluster): %s", strings.Join(bad, ", ")))
	}
	if len(fixes) == 0 {
		return nil
	}
	return fmt.Errorf("the source cannot replicate yet; change on the source:\n  - %s", strings.Join(fixes, "\n  - "))
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// notName is what an import's object names cannot hold.
var notName = regexp.MustCompile(`[^a-z0-9_]+`)

// ObjectName is the name of an online import's publication (on the
// source), replication slot (on the source) and subscription (in the
// cluster) for database db. Every run of `pgfleet import` derives it again
// from the database's name, so the import keeps its state in those
// objects alone and can be resumed, watched or cleaned up from any machine.
func ObjectName(db string) string {
	n := "pgfleet_import_" + notName.ReplaceAllString(strings.ToLower(db), "_")
	if len(n) > 63 {
		n = n[:63]
	}
	return n
}

// Phase is where an online import stands.
type Phase string

const (
	PhaseCopying   Phase = "copying"   // the initial copy of the tables runs
	PhaseStreaming Phase = "streaming" // every table copied; changes follow
	PhaseStopped   Phase = "stopped"   // the subscription is disabled or its worker is not running
)

// Progress is an online import's state as `pgfleet import --status` shows it.
type Progress struct {
	Cluster      string `json:"cluster"`
	Database     string `json:"database"`
	Subscription string `json:"subscription"`
	Phase        Phase  `json:"phase"`
	Tables       int    `json:"tables"`
	TablesDone   int    `json:"tables_done"`
	// Running reports whether the cluster's primary runs the
	// subscription's apply worker now.
	Running bool `json:"running"`
	// SourceLSN is the source's current WAL position, ConfirmedLSN how far
	// the cluster has confirmed it (the source slot's confirmed_flush_lsn),
	// and LagBytes the difference.
	SourceLSN    string `json:"source_lsn"`
	ConfirmedLSN string `json:"confirmed_lsn"`
	LagBytes     int64  `json:"lag_bytes"`
}

// Summarize turns the subscription's per-table states (pg_subscription_rel's
// srsubstate: i init, d copying, f copied, s synchronized, r ready) into a
// Progress: a table counts as done once it is s or r, and the import
// streams once every table is.
func Summarize(states []string, enabled, running bool) Progress {
	p := Progress{Tables: len(states), Running: running}
	for _, s := range states {
		if s == "s" || s == "r" {
			p.TablesDone++
		}
	}
	switch {
	case !enabled || !running:
		p.Phase = PhaseStopped
	case p.TablesDone < p.Tables:
		p.Phase = PhaseCopying
	default:
		p.Phase = PhaseStreaming
	}
	return p
}

// ReadyToLock reports whether a cutover may stop the source's writes: every
// table is copied and the cluster is within maxLag bytes of the source, so
// that the pause the lock causes lasts only as long as applying that much.
func ReadyToLock(p Progress, maxLag int64) (bool, string) {
	switch {
	case p.Tables > 0 && p.TablesDone < p.Tables:
		return false, fmt.Sprintf("initial copy: %d of %d tables done", p.TablesDone, p.Tables)
	case !p.Running:
		return false, "the subscription's worker is not running on the cluster's primary"
	case p.LagBytes > maxLag:
		return false, fmt.Sprintf("lag %d bytes", p.LagBytes)
	}
	return true, fmt.Sprintf("lag %d bytes", p.LagBytes)
}
