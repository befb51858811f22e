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
	// RootCert is a file with the fleet's CA: the server's certificate
	// must come from it and name Host (sslmode=verify-full). Empty only
	// where no fleet is around (this package's own tests), where the
	// connection is encrypted but the server is not verified.
	RootCert string
}

// sslParams are the libpq parameters that secure a connection to ci.
// channel_binding ties SCRAM to the TLS session, so a relay in between
// cannot pass the login on even with a certificate of its own. pgx and
// libpq both take them.
func (ci ConnInfo) sslParams() [][2]string {
	if ci.RootCert == "" {
		return [][2]string{{"sslmode", "require"}}
	}
	return [][2]string{{"sslmode", "verify-full"}, {"sslrootcert", ci.RootCert}, {"channel_binding", "require"}}
}

// URL returns ci as a postgres:// URL with every part escaped, for pgx.
// TLS is required and, with RootCert, the server verified.
func (ci ConnInfo) URL() string {
	q := url.Values{}
	for _, p := range ci.sslParams() {
		q.Set(p[0], p[1])
	}
	u := url.URL{
		Scheme:   "postgres",
		Host:     net.JoinHostPort(ci.Host, strconv.Itoa(ci.Port)),
		Path:     "/" + ci.Database,
		RawQuery: q.Encode(),
	}
	switch {
	case ci.Password != "":
		u.User = url.UserPassword(ci.User, ci.Password)
	case ci.User != "":
		u.User = url.User(ci.User)
	}
	return u.String()
}

// libpqSSL returns the key=value conninfo words that secure a libpq
// connection to ci.
func (ci ConnInfo) libpqSSL() []string {
	var w []string
	for _, p := range ci.sslParams() {
		w = append(w, p[0]+"="+conninfoValue(p[1]))
	}
	return w
}

// libpqSSLEnv is libpqSSL as environment variables, for programs that take
// no conninfo string (pg_basebackup with -h/-p/-U).
func (ci ConnInfo) libpqSSLEnv() []string {
	names := map[string]string{"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "channel_binding": "PGCHANNELBINDING"}
	var env []string
	for _, p := range ci.sslParams() {
		env = append(env, names[p[0]]+"="+p[1])
	}
	return env
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
