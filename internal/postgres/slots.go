package postgres

import (
	"context"
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
