package postgres

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// The users, databases and apps a person manages with pgfleet. Every
// statement here runs as the cluster's superuser on the primary; names are
// checked by the caller (fleet.ValidateRoleName and friends) and quoted
// here with pgx.Identifier all the same, and passwords travel only as SCRAM
// verifiers computed in this process (scramVerifier), so a clear password
// never reaches the server, its log or pg_stat_statements.

// Errors of the access operations, for the API to tell whose fault a
// failure is. The error returned wraps one of them and says, in its own
// words, what was wrong and what to do.
var (
	ErrExists     = errors.New("already exists")
	ErrNotFound   = errors.New("not found")
	ErrNotAllowed = errors.New("not allowed")
)

type accessError struct {
	kind error
	msg  string
}

func (e *accessError) Error() string { return e.msg }
func (e *accessError) Unwrap() error { return e.kind }

func refuse(kind error, format string, args ...any) error {
	return &accessError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// RoleKind is what pgfleet made a role for, as recorded in the role's
// comment; "" for a role pgfleet did not make.
type RoleKind string

// Kinds of roles pgfleet makes.
const (
	KindUser     RoleKind = "user"
	KindReadOnly RoleKind = "read-only user"
	KindApp      RoleKind = "app"
)

// roleComments mark the roles pgfleet made, so that list, delete and rotate
// recognise them and leave every other role alone.
var roleComments = map[RoleKind]string{
	KindUser:     "pgfleet user",
	KindReadOnly: "pgfleet user, read-only",
	KindApp:      "pgfleet app",
}

func kindOf(comment string) RoleKind {
	for k, c := range roleComments {
		if c == comment {
			return k
		}
	}
	return ""
}

// Role is a login role of a cluster, as `pgfleet users list` shows it.
type Role struct {
	Name string   `json:"name"`
	Kind RoleKind `json:"kind,omitempty"` // "" for a role pgfleet did not make
	// Login is false for a detached app: its role and data are kept, and
	// it cannot log in until it is attached again.
	Login     bool `json:"login"`
	Superuser bool `json:"superuser,omitempty"`
}

// Database is a database of a cluster, as `pgfleet db list` shows it.
type Database struct {
	Name  string `json:"name"`
	Owner string `json:"owner"`
	Bytes int64  `json:"bytes"`
	// App is true for an app's database (owned by the app's role of the
	// same name): `pgfleet detach` removes it, not `pgfleet db delete`.
	App bool `json:"app,omitempty"`
}

// ConnectVerified opens a connection to ci over TLS, verifying the server's
// certificate against roots and ci.Host, with SCRAM bound to the TLS
// channel. It is Connect for callers that hold the fleet's CA in memory
// rather than in a file (the API), so nothing is written to disk for it.
func ConnectVerified(ctx context.Context, ci ConnInfo, roots *x509.CertPool) (*pgx.Conn, error) {
	if roots == nil {
		return nil, fmt.Errorf("connect %s: no CA to verify the server with", ci)
	}
	ci.RootCert = ""
	cfg, err := pgx.ParseConfig(ci.URL())
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", ci, err)
	}
	cfg.ConnectTimeout = ConnectTimeout
	cfg.RuntimeParams["application_name"] = "pgfleet"
	cfg.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: ci.Host}
	cfg.Fallbacks = nil
	cfg.ChannelBinding = "require"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", ci, err)
	}
	return conn, nil
}

// passwordClause is "PASSWORD '<SCRAM verifier of password>'". DDL takes no
// bind parameters; the verifier is base64 with '$' and ':', so it cannot
// leave the literal, and quotes are doubled all the same.
func passwordClause(password string) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	v, err := newSCRAMVerifier(password)
	if err != nil {
		return "", err
	}
	return "PASSWORD '" + strings.ReplaceAll(v, "'", "''") + "'", nil
}

// leastPrivilege are the attributes of every role pgfleet makes for people
// and apps: none of the powers over the server or other roles.
const leastPrivilege = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"

// lookupRole returns the role name's kind and whether it exists and can
// log in.
func lookupRole(ctx context.Context, q pgxQuerier, name string) (kind RoleKind, login, exists bool, err error) {
	var comment *string
	err = q.QueryRow(ctx, `SELECT rolcanlogin, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1`, name).Scan(&login, &comment)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, false, nil
	}
	if err != nil {
		return "", false, false, err
	}
	if comment != nil {
		kind = kindOf(*comment)
	}
	return kind, login, true, nil
}

type pgxQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// CreateUser makes a user for a person or a tool: a login role that can
// read (and unless readOnly, write) the tables of every database, and do
// nothing else: no DDL, no roles, no replication. A read-only user's
// sessions are also read-only by default. Nothing is made when any step
// fails: it is one transaction.
func CreateUser(ctx context.Context, conn *pgx.Conn, name, password string, readOnly bool) error {
	if err := createUser(ctx, conn, name, password, readOnly); err != nil {
		return fmt.Errorf("create user %s: %w", name, err)
	}
	return nil
}

func createUser(ctx context.Context, conn *pgx.Conn, name, password string, readOnly bool) error {
	pw, err := passwordClause(password)
	if err != nil {
		return err
	}
	kind, grants := KindUser, "pg_read_all_data, pg_write_all_data"
	if readOnly {
		kind, grants = KindReadOnly, "pg_read_all_data"
	}
	ident := pgx.Identifier{name}.Sanitize()
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, _, exists, err := lookupRole(ctx, tx, name); err != nil {
			return err
		} else if exists {
			return refuse(ErrExists, "a role named %s already exists in the cluster: pick another name, or `pgfleet users rotate %s` for a new password", name, name)
		}
		stmts := []string{
			"CREATE ROLE " + ident + " " + leastPrivilege + " " + pw,
			"COMMENT ON ROLE " + ident + " IS '" + roleComments[kind] + "'",
			"GRANT " + grants + " TO " + ident,
		}
		if readOnly {
			stmts = append(stmts, "ALTER ROLE "+ident+" SET default_transaction_read_only = on")
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				if isCode(err, "42710") { // duplicate_object: made concurrently
					return refuse(ErrExists, "a role named %s already exists in the cluster: pick another name", name)
				}
				return err
			}
		}
		return nil
	})
}

// Roles lists the cluster's login roles and detached apps, pgfleet's own
// roles aside.
func Roles(ctx context.Context, conn *pgx.Conn, owned func(string) bool) ([]Role, error) {
	rows, err := conn.Query(ctx, `SELECT rolname, rolcanlogin, rolsuper, coalesce(shobj_description(oid, 'pg_authid'), '')
		FROM pg_roles WHERE rolname NOT LIKE 'pg\_%' ORDER BY rolname`)
	if err != nil {
		return nil, fmt.Errorf("list roles: %w", err)
	}
	var out []Role
	var r Role
	var comment string
	_, err = pgx.ForEachRow(rows, []any{&r.Name, &r.Login, &r.Superuser, &comment}, func() error {
		r.Kind = kindOf(comment)
		if owned(r.Name) || (!r.Login && r.Kind == "") {
			return nil // pgfleet's own, or a group role made by hand
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list roles: %w", err)
	}
	return out, nil
}

// managedRole checks that name is a role pgfleet made, of one of kinds,
// and returns its kind.
func managedRole(ctx context.Context, q pgxQuerier, name string, what string, kinds ...RoleKind) (RoleKind, bool, error) {
	kind, login, exists, err := lookupRole(ctx, q, name)
	if err != nil {
		return "", false, err
	}
	if !exists {
		return "", false, refuse(ErrNotFound, "the cluster has no user %s: `pgfleet users list` shows its users", name)
	}
	for _, k := range kinds {
		if kind == k {
			return kind, login, nil
		}
	}
	if kind == KindApp {
		return kind, login, refuse(ErrNotAllowed, "%s is an app's role: `pgfleet detach --app %s` removes it", name, name)
	}
	return kind, login, refuse(ErrNotAllowed, "role %s was not made by pgfleet, so pgfleet does not %s it: change it with SQL as the superuser (`pgfleet connect`)", name, what)
}

// SetPassword gives a user or an app a new password. Sessions already open
// go on; new logins need the new password, on every member once the
// change has replayed there.
func SetPassword(ctx context.Context, conn *pgx.Conn, name, password string) error {
	if err := setPassword(ctx, conn, name, password); err != nil {
		return fmt.Errorf("set the password of %s: %w", name, err)
	}
	return nil
}

func setPassword(ctx context.Context, conn *pgx.Conn, name, password string) error {
	pw, err := passwordClause(password)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		kind, login, err := managedRole(ctx, tx, name, "rotate", KindUser, KindReadOnly, KindApp)
		if err != nil {
			return err
		}
		if kind == KindApp && !login {
			return refuse(ErrNotAllowed, "app %s is detached: `pgfleet attach --app %s` attaches it again with a new password", name, name)
		}
		_, err = tx.Exec(ctx, "ALTER ROLE "+pgx.Identifier{name}.Sanitize()+" "+pw)
		return err
	})
}

// DropUser removes a user made by CreateUser and ends its sessions.
func DropUser(ctx context.Context, conn *pgx.Conn, name string) error {
	if err := dropUser(ctx, conn, name); err != nil {
		return fmt.Errorf("delete user %s: %w", name, err)
	}
	return nil
}

func dropUser(ctx context.Context, conn *pgx.Conn, name string) error {
	if _, _, err := managedRole(ctx, conn, name, "delete", KindUser, KindReadOnly); err != nil {
		return err
	}
	var oid uint32
	if err := conn.QueryRow(ctx, "SELECT oid FROM pg_roles WHERE rolname = $1", name).Scan(&oid); err != nil {
		return err
	}
	// The drop first, so that a refusal changes nothing (its sessions go
	// on); then the sessions it leaves, which the server does not end.
	if _, err := conn.Exec(ctx, "DROP ROLE "+pgx.Identifier{name}.Sanitize()); err != nil {
		if isCode(err, "2BP01") { // dependent_objects_still_exist
			return refuse(ErrNotAllowed, "user %s still owns objects or holds privileges granted to it by hand (%v): reassign or revoke them as the superuser first", name, err)
		}
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usesysid = $1", oid); err != nil {
		return fmt.Errorf("end the sessions of the deleted user: %w", err)
	}
	return nil
}

func terminateSessions(ctx context.Context, conn *pgx.Conn, role string) error {
	_, err := conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()", role)
	if err != nil {
		return fmt.Errorf("end the sessions of %s: %w", role, err)
	}
	return nil
}

// lookupDatabase reports whether database name exists and who owns it.
func lookupDatabase(ctx context.Context, q pgxQuerier, name string) (owner string, exists bool, err error) {
	err = q.QueryRow(ctx, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", name).Scan(&owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	return owner, err == nil, err
}

// isApp reports whether database name is an app's: owned by the role of
// the same name, which pgfleet made for an app.
func isApp(ctx context.Context, q pgxQuerier, name, owner string) (bool, error) {
	if owner != name {
		return false, nil
	}
	kind, _, _, err := lookupRole(ctx, q, name)
	return kind == KindApp, err
}

// CreateDatabase makes a database owned by the superuser, which pgfleet's
// users can connect to and apps cannot: CONNECT goes to pgfleet's users
// (through pg_read_all_data) instead of to everyone.
func CreateDatabase(ctx context.Context, conn *pgx.Conn, name string) error {
	if err := createDatabase(ctx, conn, name, ""); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

func createDatabase(ctx context.Context, conn *pgx.Conn, name, owner string) error {
	if _, exists, err := lookupDatabase(ctx, conn, name); err != nil {
		return err
	} else if exists {
		return refuse(ErrExists, "database %s already exists: pick another name", name)
	}
	ident := pgx.Identifier{name}.Sanitize()
	create := "CREATE DATABASE " + ident
	if owner != "" {
		create += " OWNER " + pgx.Identifier{owner}.Sanitize()
	}
	// CREATE DATABASE cannot run in a transaction; the grants follow, and a
	// failure there drops the database again, so that nothing half-made
	// is left.
	if _, err := conn.Exec(ctx, create); err != nil {
		if isCode(err, "42P04") { // duplicate_database: made concurrently
			return refuse(ErrExists, "database %s already exists: pick another name", name)
		}
		return err
	}
	_, err := conn.Exec(ctx, "REVOKE ALL ON DATABASE "+ident+" FROM PUBLIC; GRANT CONNECT ON DATABASE "+ident+" TO pg_read_all_data")
	if err != nil {
		if _, derr := conn.Exec(ctx, "DROP DATABASE "+ident+" WITH (FORCE)"); derr != nil {
			return fmt.Errorf("%w (and dropping the half-made database failed: %v)", err, derr)
		}
		return err
	}
	return nil
}

// Databases lists the cluster's databases, the templates and the
// superuser's maintenance database aside.
func Databases(ctx context.Context, conn *pgx.Conn) ([]Database, error) {
	rows, err := conn.Query(ctx, `SELECT d.datname, pg_get_userbyid(d.datdba), pg_database_size(d.oid),
			coalesce(shobj_description(r.oid, 'pg_authid') = $1 AND r.rolname = d.datname, false)
		FROM pg_database d LEFT JOIN pg_roles r ON r.oid = d.datdba
		WHERE NOT d.datistemplate AND d.datname <> 'postgres' ORDER BY d.datname`, roleComments[KindApp])
	if err != nil {
		return nil, fmt.Errorf("list databases: %w", err)
	}
	var out []Database
	var d Database
	_, err = pgx.ForEachRow(rows, []any{&d.Name, &d.Owner, &d.Bytes, &d.App}, func() error {
		out = append(out, d)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list databases: %w", err)
	}
	return out, nil
}

// DropDatabase drops database name and every session on it. An app's
// database is refused: detaching the app with its data does that.
func DropDatabase(ctx context.Context, conn *pgx.Conn, name string) error {
	if err := dropDatabase(ctx, conn, name); err != nil {
		return fmt.Errorf("delete database %s: %w", name, err)
	}
	return nil
}

func dropDatabase(ctx context.Context, conn *pgx.Conn, name string) error {
	owner, exists, err := lookupDatabase(ctx, conn, name)
	if err != nil {
		return err
	}
	if !exists {
		return refuse(ErrNotFound, "the cluster has no database %s: `pgfleet db list` shows its databases", name)
	}
	if app, err := isApp(ctx, conn, name, owner); err != nil {
		return err
	} else if app {
		return refuse(ErrNotAllowed, "database %s is app %s's: `pgfleet detach --app %s --drop-data` deletes it with the app's role", name, name, name)
	}
	_, err = conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// AttachApp gives app a database and a role of its name: the role owns the
// database (and so its public schema), can connect to no other database
// pgfleet made, and has no power over the server or other roles. An app
// detached without its data is attached again to the same database, with
// a new password.
func AttachApp(ctx context.Context, conn *pgx.Conn, app, password string) error {
	if err := attachApp(ctx, conn, app, password); err != nil {
		return fmt.Errorf("attach app %s: %w", app, err)
	}
	return nil
}

func attachApp(ctx context.Context, conn *pgx.Conn, app, password string) error {
	pw, err := passwordClause(password)
	if err != nil {
		return err
	}
	ident := pgx.Identifier{app}.Sanitize()
	kind, login, roleExists, err := lookupRole(ctx, conn, app)
	if err != nil {
		return err
	}
	owner, dbExists, err := lookupDatabase(ctx, conn, app)
	if err != nil {
		return err
	}
	switch {
	case roleExists && kind == KindApp && login:
		return refuse(ErrExists, "app %s is already attached: `pgfleet users rotate %s --cluster CLUSTER` gives it a new password", app, app)
	case roleExists && kind == KindApp && dbExists && owner == app:
		// Detached with its data kept: let it in again.
		_, err := conn.Exec(ctx, "ALTER ROLE "+ident+" LOGIN "+pw)
		return err
	case roleExists:
		return refuse(ErrExists, "a role named %s already exists in the cluster and is not a detached app's: pick another app name", app)
	case dbExists:
		return refuse(ErrExists, "a database named %s already exists and belongs to no app: pick another app name, or `pgfleet db delete` it first", app)
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, s := range []string{
			"CREATE ROLE " + ident + " " + leastPrivilege + " " + pw,
			"COMMENT ON ROLE " + ident + " IS '" + roleComments[KindApp] + "'",
		} {
			if _, err := tx.Exec(ctx, s); err != nil {
				if isCode(err, "42710") {
					return refuse(ErrExists, "a role named %s already exists in the cluster: pick another app name", app)
				}
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := createDatabase(ctx, conn, app, app); err != nil {
		if _, derr := conn.Exec(ctx, "DROP ROLE "+ident); derr != nil {
			return fmt.Errorf("%w (and dropping the app's role again failed: %v)", err, derr)
		}
		return err
	}
	return nil
}

// DetachApp takes app's access away: its sessions end and its role can no
// longer log in; its database and role stay, for a later AttachApp. With
// dropData the database and the role are dropped.
func DetachApp(ctx context.Context, conn *pgx.Conn, app string, dropData bool) error {
	if err := detachApp(ctx, conn, app, dropData); err != nil {
		return fmt.Errorf("detach app %s: %w", app, err)
	}
	return nil
}

func detachApp(ctx context.Context, conn *pgx.Conn, app string, dropData bool) error {
	kind, _, exists, err := lookupRole(ctx, conn, app)
	if err != nil {
		return err
	}
	if !exists || kind != KindApp {
		return refuse(ErrNotFound, "the cluster has no app %s: `pgfleet users list` shows apps as kind app", app)
	}
	ident := pgx.Identifier{app}.Sanitize()
	if _, err := conn.Exec(ctx, "ALTER ROLE "+ident+" NOLOGIN"); err != nil {
		return err
	}
	if err := terminateSessions(ctx, conn, app); err != nil {
		return err
	}
	if !dropData {
		return nil
	}
	if owner, dbExists, err := lookupDatabase(ctx, conn, app); err != nil {
		return err
	} else if dbExists && owner == app {
		if _, err := conn.Exec(ctx, "DROP DATABASE "+ident+" WITH (FORCE)"); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, "DROP ROLE "+ident); err != nil {
		if isCode(err, "2BP01") {
			return refuse(ErrNotAllowed, "app %s's database is gone, but its role still owns objects or holds privileges elsewhere (%v): reassign or revoke them as the superuser, then detach again", app, err)
		}
		return err
	}
	return nil
}
