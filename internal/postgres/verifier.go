package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// RoleVerifier returns the SCRAM verifier of role name as pg_authid holds
// it, for the pooler to check a client's login against; "" when no such
// role may log in now (no role, NOLOGIN, expired, no password). It needs a
// superuser's connection: only superusers read pg_authid.
func RoleVerifier(ctx context.Context, conn *pgx.Conn, name string) (string, error) {
	var v *string
	err := conn.QueryRow(ctx, `SELECT rolpassword FROM pg_authid
WHERE rolname = $1 AND rolcanlogin AND (rolvaliduntil IS NULL OR rolvaliduntil > now())`, name).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && v == nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the verifier of %s: %w", name, err)
	}
	return *v, nil
}
