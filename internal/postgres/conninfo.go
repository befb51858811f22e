package postgres

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ConnectTimeout bounds how long Connect waits for a server. A supervisor
// polls every second, so a dead host must not hold it for the kernel's TCP
// timeout.
const ConnectTimeout = 3 * time.Second

// ConnInfo addresses a server.
type ConnInfo struct {
	Host     string
	Port     int
	User     string
	Password string
	Database string
}

// URL returns ci as a postgres:// URL with every part escaped. TLS is
// required: every member serves it (see ensureCert); the server is not
// verified until the fleet has a CA.
func (ci ConnInfo) URL() string {
	u := url.URL{
		Scheme:   "postgres",
		Host:     net.JoinHostPort(ci.Host, strconv.Itoa(ci.Port)),
		Path:     "/" + ci.Database,
		RawQuery: "sslmode=require",
	}
	switch {
	case ci.Password != "":
		u.User = url.UserPassword(ci.User, ci.Password)
	case ci.User != "":
		u.User = url.User(ci.User)
	}
	return u.String()
}

// String returns ci without its password, for logs and errors.
func (ci ConnInfo) String() string {
	return fmt.Sprintf("%s@%s/%s", ci.User, net.JoinHostPort(ci.Host, strconv.Itoa(ci.Port)), ci.Database)
}

// Connect opens a plain connection to ci with a ConnectTimeout connect
// timeout and TLS disabled.
func Connect(ctx context.Context, ci ConnInfo) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(ci.URL())
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", ci, err)
	}
	cfg.ConnectTimeout = ConnectTimeout
	cfg.RuntimeParams["application_name"] = "pgfleet"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", ci, err)
	}
	return conn, nil
}

// pgpassLine is a ~/.pgpass-format line granting ci's password for ci's host,
// port and user on any database (a physical replication connection matches
// the database name "replication", so "*" covers both).
func pgpassLine(ci ConnInfo) string {
	esc := func(s string) string {
		s = strings.ReplaceAll(s, `\`, `\\`)
		return strings.ReplaceAll(s, `:`, `\:`)
	}
	return fmt.Sprintf("%s:%d:*:%s:%s\n", esc(ci.Host), ci.Port, esc(ci.User), esc(ci.Password))
}

// conninfoValue quotes v for a libpq key=value connection string.
func conninfoValue(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`+"\t\n") {
		return v
	}
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, `'`, `\'`) + "'"
}
