package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ReplicationSlot is a physical replication slot of a server.
type ReplicationSlot struct {
	Name   string
	Active bool // a walsender streams through it now
}

// PhysicalSlots lists the server's physical replication slots.
func PhysicalSlots(ctx context.Context, conn *pgx.Conn) ([]ReplicationSlot, error) {
	rows, err := conn.Query(ctx, "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name")
	if err != nil {
		return nil, fmt.Errorf("list replication slots: %w", err)
	}
	var out []ReplicationSlot
	var s ReplicationSlot
	_, err = pgx.ForEachRow(rows, []any{&s.Name, &s.Active}, func() error {
		out = append(out, s)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list replication slots: %w", err)
	}
	return out, nil
}

// DropSlot drops replication slot name. A slot already gone is not an
// error; one a walsender took in the meantime is left, and reported.
func DropSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name)
	if isCode(err, "42704") { // undefined_object
		return nil
	}
	if err != nil {
		return fmt.Errorf("drop replication slot %s: %w", name, err)
	}
	return nil
}

// SlotRestartLSN returns the restart LSN of physical replication slot
// name: the server keeps every WAL segment from it on for the slot's
// standby. It is 0 when the server has no such slot, or one that reserves
// no WAL yet.
func SlotRestartLSN(ctx context.Context, conn *pgx.Conn, name string) (LSN, error) {
	var lsn *string
	err := conn.QueryRow(ctx, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_type = 'physical' AND slot_name = $1", name).Scan(&lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read replication slot %s: %w", name, err)
	}
	if lsn == nil {
		return 0, nil
	}
	l, err := ParseLSN(*lsn)
	if err != nil {
		return 0, fmt.Errorf("read replication slot %s: %w", name, err)
	}
	return l, nil
}
