package migrate

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// This file holds the SQL of an online import: a publication and a
// logical slot on the source, a subscription in the cluster. Every name
// it runs comes from ObjectName or from the catalog of the database it
// runs in, quoted by pgx.Identifier or format's %I.

// InspectReplication reads what CheckOnline needs of the source.
func InspectReplication(ctx context.Context, src *pgx.Conn) (Replication, []TableIdentity, error) {
	var r Replication
	err := src.QueryRow(ctx, `SELECT current_setting('wal_level'),
  current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots),
  current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication),
  rolreplication OR rolsuper, rolsuper, rolname
FROM pg_roles WHERE rolname = current_user`).Scan(&r.WalLevel, &r.MaxSlots, &r.UsedSlots, &r.MaxSenders, &r.UsedSenders, &r.CanReplicate, &r.Superuser, &r.User)
	if err != nil {
		return r, nil, fmt.Errorf("read the source's replication settings: %w", err)
	}
	// Partitions replicate through their root (publish_via_partition_root),
	// but updates still need each partition to name its rows.
	rows, err := src.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname),
  EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
  c.relreplident::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1`)
	if err != nil {
		return r, nil, fmt.Errorf("read the source's tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (TableIdentity, error) {
		var t TableIdentity
		err := row.Scan(&t.Table, &t.PrimaryKey, &t.Identity)
		return t, err
	})
	if err != nil {
		return r, nil, fmt.Errorf("read the source's tables: %w", err)
	}
	return r, tables, nil
}

// SetFullIdentity gives the source's tables REPLICA IDENTITY FULL; their
// names come from the source's own catalog (InspectReplication).
func SetFullIdentity(ctx context.Context, src *pgx.Conn, tables []string) error {
	for _, t := range tables {
		if _, err := src.Exec(ctx, "ALTER TABLE "+t+" REPLICA IDENTITY FULL"); err != nil {
			return fmt.Errorf("set replica identity full on %s: %w", t, err)
		}
	}
	return nil
}

// CreatePublication publishes every table of the source's database as
// name, unless a publication of that name exists already (a resumed
// import). A superuser publishes FOR ALL TABLES, which also covers tables
// created later; any other role publishes the tables it has now, which
// takes owning them.
func CreatePublication(ctx context.Context, src *pgx.Conn, name string, superuser bool) error {
	var exists bool
	if err := src.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look for publication %s on the source: %w", name, err)
	}
	if exists {
		return nil
	}
	what := "ALL TABLES"
	if !superuser {
		tables, err := Tables(ctx, src)
		if err != nil {
			return err
		}
		if len(tables) == 0 {
			return errors.New("the source database has no table to publish")
		}
		what = "TABLE " + strings.Join(tables, ", ")
	}
	q := "CREATE PUBLICATION " + pgx.Identifier{name}.Sanitize() + " FOR " + what + " WITH (publish_via_partition_root = true)"
	if _, err := src.Exec(ctx, q); err != nil {
		return fmt.Errorf("create publication %s on the source: %w", name, err)
	}
	return nil
}

// DropPublication drops publication name on the source, if it is there.
func DropPublication(ctx context.Context, src *pgx.Conn, name string) error {
	if _, err := src.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %s on the source: %w", name, err)
	}
	return nil
}

// DropSlots drops the source's slots of an import: the subscription's
// slot name and, when subOID is known, the initial copy's table-sync
// slots (pg_<subscription oid>_sync_…), ending the walsenders that still
// hold them. It returns how many it dropped.
func DropSlots(ctx context.Context, src *pgx.Conn, name string, subOID uint32) (int, error) {
	syncPrefix := "-"
	if subOID != 0 {
		syncPrefix = fmt.Sprintf("pg_%d_sync_", subOID)
	}
	const q = `SELECT slot_name, active_pid FROM pg_replication_slots
WHERE slot_name = $1 OR starts_with(slot_name::text, $2)`
	rows, err := src.Query(ctx, q, name, syncPrefix)
	if err != nil {
		return 0, fmt.Errorf("list the source's slots: %w", err)
	}
	type slot struct {
		name string
		pid  *int32
	}
	slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
		var s slot
		err := r.Scan(&s.name, &s.pid)
		return s, err
	})
	if err != nil {
		return 0, fmt.Errorf("list the source's slots: %w", err)
	}
	n := 0
	for _, s := range slots {
		if s.pid != nil {
			if _, err := src.Exec(ctx, "SELECT pg_terminate_backend($1, 5000)", *s.pid); err != nil {
				return n, fmt.Errorf("end the walsender of slot %s on the source: %w", s.name, err)
			}
		}
		if _, err := src.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", s.name); err != nil {
			return n, fmt.Errorf("drop slot %s on the source: %w", s.name, err)
		}
		n++
	}
	return n, nil
}

// SourceLSN returns the source's current WAL position, and how far the
// slot has been confirmed by the cluster (ok false when there is no such
// slot). The slot lives on the source, so its position survives any
// change of the cluster's primary.
func SourceLSN(ctx context.Context, src *pgx.Conn, slot string) (current, confirmed string, lag int64, ok bool, err error) {
	err = src.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text,
  coalesce((SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1), ''),
  coalesce((SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1), 0)`, slot).
		Scan(&current, &confirmed, &lag)
	if err != nil {
		return "", "", 0, false, fmt.Errorf("read the source's WAL position: %w", err)
	}
	return current, confirmed, lag, confirmed != "", nil
}

// SlotConfirmed reports whether the source's slot has been confirmed up
// to lsn.
func SlotConfirmed(ctx context.Context, src *pgx.Conn, slot, lsn string) (bool, error) {
	var ok bool
	err := src.QueryRow(ctx, "SELECT coalesce((SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1), false)", slot, lsn).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("read slot %s on the source: %w", slot, err)
	}
	return ok, nil
}

// Nudger returns a function that hurries the cluster's confirmation of
// what it has applied. The apply worker commits without waiting for its
// WAL to reach disk and confirms a change to the source only once it has,
// and only when it next reports; the source's walsender asks for a report
// when it has read WAL past the last one, but reads only flushed WAL. So
// on each side an empty transaction that takes a transaction ID, whose
// commit is synchronous, flushes that side's WAL: the cluster's covers the
// applied changes, the source's makes its walsender ask. Without the
// nudges, the last changes of a cutover wait up to about a second for the
// WAL writers and the worker's own reports. Both are best effort.
func Nudger(src, dst *pgx.Conn) func(ctx context.Context) {
	srcOK, dstOK := true, true
	return func(ctx context.Context) {
		if dstOK {
			_, err := dst.Exec(ctx, "SELECT pg_current_xact_id()")
			dstOK = err == nil
		}
		if srcOK {
			_, err := src.Exec(ctx, "SELECT pg_current_xact_id()")
			srcOK = err == nil
		}
	}
}

// Subscription is an online import's subscription as the cluster's
// catalog holds it.
type Subscription struct {
	OID     uint32
	Enabled bool
	Running bool     // its apply worker runs (pg_stat_subscription has its pid)
	States  []string // pg_subscription_rel.srsubstate of each table
}

// FindSubscription reads subscription name from the cluster (any of its
// databases: pg_subscription is shared); ok is false when there is none.
func FindSubscription(ctx context.Context, dst *pgx.Conn, name string) (s Subscription, ok bool, err error) {
	err = dst.QueryRow(ctx, `SELECT oid, subenabled,
  EXISTS (SELECT FROM pg_stat_subscription st WHERE st.subid = s.oid AND st.relid IS NULL AND st.pid IS NOT NULL)
FROM pg_subscription s WHERE subname = $1`, name).Scan(&s.OID, &s.Enabled, &s.Running)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, false, nil
	}
	if err != nil {
		return s, false, fmt.Errorf("read subscription %s: %w", name, err)
	}
	rows, err := dst.Query(ctx, "SELECT srsubstate::text FROM pg_subscription_rel WHERE srsubid = $1", s.OID)
	if err != nil {
		return s, true, fmt.Errorf("read subscription %s's tables: %w", name, err)
	}
	s.States, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return s, true, fmt.Errorf("read subscription %s's tables: %w", name, err)
	}
	return s, true, nil
}

// CreateSubscription subscribes the connected database of the cluster to
// publication name on the source, through a slot of the same name, which
// it creates on the source. conninfo holds the source's password, which
// PostgreSQL keeps in pg_subscription.subconninfo (readable by superusers
// only): the session first stops the server from logging the statement
// (on error or for its duration) and pg_stat_statements from keeping it.
// With sync, applied changes commit with synchronous_commit = on, so that
// the source forgets no change before a sync standby holds it and a
// failover loses none; otherwise they commit
// as PostgreSQL's subscriptions do by default (off: the source is told
// once the primary's WAL is flushed), which applies several times faster,
// and a failover may lose the last ones, as it may lose the cluster's own
// last commits in that mode.
func CreateSubscription(ctx context.Context, dst *pgx.Conn, name, conninfo string, sync bool) error {
	if _, err := dst.Exec(ctx, "SET log_min_error_statement = panic; SET log_statement = 'none'; SET log_min_duration_statement = -1"); err != nil {
		return fmt.Errorf("create subscription %s: %w", name, err)
	}
	// Nor may pg_stat_statements keep it, should a user have loaded it.
	if _, err := dst.Exec(ctx, "SET pg_stat_statements.track_utility = off"); err != nil {
		return fmt.Errorf("create subscription %s: %w", name, err)
	}
	id := pgx.Identifier{name}.Sanitize()
	q := "CREATE SUBSCRIPTION " + id + " CONNECTION " + quoteLiteral(conninfo) + " PUBLICATION " + id +
		" WITH (slot_name = " + quoteLiteral(name) + ", synchronous_commit = " + quoteLiteral(map[bool]string{true: "on", false: "off"}[sync]) + ")"
	if _, err := dst.Exec(ctx, q); err != nil {
		// The statement holds a password: report the server's message alone.
		return fmt.Errorf("create subscription %s: %v", name, err)
	}
	return nil
}

// DropSubscription drops subscription name from the cluster. With
// sourceUp, PostgreSQL drops the source's slot too; otherwise the
// subscription lets go of the slot first (slot_name = NONE) and the
// caller drops it on the source later.
func DropSubscription(ctx context.Context, dst *pgx.Conn, name string, sourceUp bool) error {
	id := pgx.Identifier{name}.Sanitize()
	stmts := []string{"DROP SUBSCRIPTION IF EXISTS " + id}
	if !sourceUp {
		stmts = []string{"ALTER SUBSCRIPTION " + id + " DISABLE", "ALTER SUBSCRIPTION " + id + " SET (slot_name = NONE)", "DROP SUBSCRIPTION " + id}
	}
	for _, s := range stmts {
		if _, err := dst.Exec(ctx, s); err != nil {
			return fmt.Errorf("drop subscription %s: %w", name, err)
		}
	}
	return nil
}

// LockSource makes the source database read-only for every new
// transaction (ALTER DATABASE … SET default_transaction_read_only) and
// ends the sessions connected to it, whose open transactions roll back;
// walsenders stay. Undo it with UnlockSource. A session may still turn
// read-only off for itself: this stops apps, not a determined user.
func LockSource(ctx context.Context, src *pgx.Conn, db string) (ended int, err error) {
	if _, err := src.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET default_transaction_read_only = on"); err != nil {
		return 0, fmt.Errorf("make the source read-only: %w", err)
	}
	err = src.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'`, db).Scan(&ended)
	if err != nil {
		return 0, fmt.Errorf("end the source's sessions: %w", err)
	}
	return ended, nil
}

// UnlockSource undoes LockSource.
func UnlockSource(ctx context.Context, src *pgx.Conn, db string) error {
	if _, err := src.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" RESET default_transaction_read_only"); err != nil {
		return fmt.Errorf("make the source writable again: %w", err)
	}
	return nil
}

// CopySequences sets every sequence of the cluster's database to the
// value its namesake has on the source, which replication does not carry.
// The names are the source's, but reach the cluster only as parameters
// of format('%I.%I') and to_regclass; a sequence the cluster lacks is
// returned in missing.
func CopySequences(ctx context.Context, src, dst *pgx.Conn) (copied int, missing []string, err error) {
	rows, err := src.Query(ctx, "SELECT schemaname::text, sequencename::text, last_value FROM pg_sequences WHERE last_value IS NOT NULL ORDER BY 1, 2")
	if err != nil {
		return 0, nil, fmt.Errorf("read the source's sequences: %w", err)
	}
	type seq struct {
		schema, name string
		last         int64
	}
	seqs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (seq, error) {
		var s seq
		err := r.Scan(&s.schema, &s.name, &s.last)
		return s, err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("read the source's sequences: %w", err)
	}
	for _, s := range seqs {
		var found bool
		err := dst.QueryRow(ctx, `SELECT CASE WHEN to_regclass(format('%I.%I', $1::text, $2::text)) IS NULL THEN false
  ELSE setval(to_regclass(format('%I.%I', $1::text, $2::text)), $3, true) IS NOT NULL END`, s.schema, s.name, s.last).Scan(&found)
		if err != nil {
			return copied, missing, fmt.Errorf("set sequence %s.%s in the cluster: %w", s.schema, s.name, err)
		}
		if !found {
			missing = append(missing, s.schema+"."+s.name)
			continue
		}
		copied++
	}
	return copied, missing, nil
}
