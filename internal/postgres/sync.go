package postgres

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
)

// SyncStandbyNames renders synchronous_standby_names for quorum commit: a
// commit waits until any one of names has flushed it. No names means
// asynchronous replication.
func SyncStandbyNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = `"` + strings.ReplaceAll(n, `"`, `""`) + `"`
	}
	return "ANY 1 (" + strings.Join(q, ", ") + ")"
}

// CurrentLSN is the primary's current WAL write position.
func CurrentLSN(ctx context.Context, conn *pgx.Conn) (LSN, error) {
	var lsn string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		return 0, err
	}
	return ParseLSN(lsn)
}

// SyncStandbysInEffect reads synchronous_standby_names as the server
// applies it now (a reload takes effect a moment after the signal).
func SyncStandbysInEffect(ctx context.Context, conn *pgx.Conn) (string, error) {
	var v string
	err := conn.QueryRow(ctx, "SELECT setting FROM pg_settings WHERE name = 'synchronous_standby_names'").Scan(&v)
	return v, err
}

// FlushedBy returns, per application_name, the WAL position each connected
// standby has flushed.
func FlushedBy(ctx context.Context, conn *pgx.Conn) (map[string]LSN, error) {
	rows, err := conn.Query(ctx, "SELECT application_name, coalesce(flush_lsn::text, '0/0') FROM pg_stat_replication")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]LSN{}
	for rows.Next() {
		var name, l string
		if err := rows.Scan(&name, &l); err != nil {
			return nil, err
		}
		if lsn, err := ParseLSN(l); err == nil && lsn > out[name] {
			out[name] = lsn
		}
	}
	return out, rows.Err()
}
