package migrate

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// userTables lists the ordinary and partitioned tables outside the
// system schemas, qualified and quoted.
const userTables = `SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1`

// InspectSource reads what Check needs of the source database.
func InspectSource(ctx context.Context, conn *pgx.Conn) (Source, error) {
	var s Source
	err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, pg_database_size(current_database())`).Scan(&s.VersionNum, &s.Bytes)
	if err != nil {
		return s, fmt.Errorf("read the source's version and size: %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1`)
	if err != nil {
		return s, fmt.Errorf("read the source's extensions: %w", err)
	}
	s.Extensions, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return s, err
}

// SourceRoles reads the source's roles and memberships. Passwords come
// along only when the connecting role may read pg_authid (a superuser);
// otherwise the roles come without one, and notes says so.
func SourceRoles(ctx context.Context, conn *pgx.Conn) ([]Role, []Membership, []string, error) {
	const q = `SELECT r.rolname, r.rolcanlogin, r.rolcreatedb, r.rolcreaterole, r.rolinherit, r.rolconnlimit, r.rolsuper, r.rolreplication, %s
FROM pg_roles r %s WHERE r.rolname !~ '^pg_' ORDER BY 1`
	var notes []string
	rows, err := conn.Query(ctx, fmt.Sprintf(q, "coalesce(a.rolpassword, '')", "LEFT JOIN pg_authid a ON a.oid = r.oid"))
	var roles []Role
	if err == nil {
		roles, err = pgx.CollectRows(rows, scanRole)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" { // insufficient_privilege
		notes = append(notes, "the source's user may not read passwords (pg_authid): roles come without them; set them with `pgfleet users rotate`")
		if rows, err = conn.Query(ctx, fmt.Sprintf(q, "''", "")); err == nil {
			roles, err = pgx.CollectRows(rows, scanRole)
		}
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the source's roles: %w", err)
	}
	rows, err = conn.Query(ctx, `SELECT g.rolname, m.rolname, am.admin_option
FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
WHERE g.rolname !~ '^pg_' ORDER BY 1, 2`)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the source's role memberships: %w", err)
	}
	members, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Membership, error) {
		var m Membership
		err := r.Scan(&m.Role, &m.Member, &m.Admin)
		return m, err
	})
	return roles, members, notes, err
}

func scanRole(r pgx.CollectableRow) (Role, error) {
	var x Role
	err := r.Scan(&x.Name, &x.Login, &x.CreateDB, &x.CreateRole, &x.Inherit, &x.ConnLimit, &x.Superuser, &x.Replication, &x.Password)
	return x, err
}

// InspectTarget reads what Check needs of the target database.
func InspectTarget(ctx context.Context, conn *pgx.Conn) (Target, error) {
	t := Target{FreeBytes: -1}
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&t.VersionNum); err != nil {
		return t, fmt.Errorf("read the cluster's version: %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT name FROM pg_available_extensions ORDER BY 1`)
	if err != nil {
		return t, fmt.Errorf("read the cluster's extensions: %w", err)
	}
	if t.Available, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return t, err
	}
	tables, err := Tables(ctx, conn)
	t.UserTables = len(tables)
	return t, err
}

// Tables lists the user tables of the connected database.
func Tables(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, userTables)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// RoleNames lists the roles of the connected cluster.
func RoleNames(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT rolname FROM pg_roles`)
	if err != nil {
		return nil, fmt.Errorf("list roles: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// CountRows counts the rows of every user table of the connected
// database. The names it runs come from the same database's catalog
// (format's %I quoting), never from the other side of the import.
func CountRows(ctx context.Context, conn *pgx.Conn) (map[string]int64, error) {
	tables, err := Tables(ctx, conn)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, t := range tables {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&n); err != nil {
			return nil, fmt.Errorf("count rows of %s: %w", t, err)
		}
		out[t] = n
	}
	return out, nil
}
