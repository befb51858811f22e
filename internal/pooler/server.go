package pooler

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// dialTimeout bounds a server login: TCP, TLS and SCRAM.
const dialTimeout = 5 * time.Second

// server is one connection to PostgreSQL, logged in as one role to one
// database, that serves one client transaction at a time.
type server struct {
	conn net.Conn // TLS
	raw  net.Conn // the TCP connection under it
	fe   *pgproto3.Frontend
	// wmu is held by the session writing to fe, from its first Send to
	// its Flush: the server is released only once the writing is done, so
	// the next session never shares fe's buffer with it.
	wmu    sync.Mutex
	addr   string            // host:port, for cancel requests
	member string            // the member it reaches
	login  map[string]string // the settings it logged in with
	key    *pgproto3.BackendKeyData
	params map[string]string // the ParameterStatus values it reported
	// set are the client settings (tracked) it runs with now.
	set map[string]string
	// prepared are the server names of the statements it holds.
	prepared map[string]bool
	// dirty reports that a client changed the session (SET, LISTEN, a
	// temporary table...): it is reset before serving another client.
	dirty bool
	// discard reports that a client made SQL-level prepared statements
	// or cursors: the reset is DISCARD ALL.
	discard bool
	broken  bool
	used    time.Time
}

// login is what a server login needs: the role's keys from the client's
// SCRAM exchange, and where and as what to log in.
type login struct {
	addr, host string // host:port, and the name its certificate must carry
	member     string
	user, db   string
	params     map[string]string // startup settings
	clientKey  []byte
	serverKey  []byte
}

// serverError is PostgreSQL's refusal of a login, passed on to the client
// as it came.
type serverError struct{ msg *pgproto3.ErrorResponse }

func (e *serverError) Error() string {
	return fmt.Sprintf("%s: %s (SQLSTATE %s)", e.msg.Severity, e.msg.Message, e.msg.Code)
}

// dialServer logs in to PostgreSQL over TLS verified against the fleet's
// CA, with SCRAM-SHA-256-PLUS bound to that TLS session.
func dialServer(ctx context.Context, l login, roots *tls.Config) (*server, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", l.addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s at %s: %w", l.member, l.addr, err)
	}
	s, err := startServer(ctx, raw, l, roots)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return s, nil
}

func startServer(ctx context.Context, raw net.Conn, l login, roots *tls.Config) (*server, error) {
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	buf, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := raw.Write(buf); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", l.member, err)
	}
	var b [1]byte
	if _, err := io.ReadFull(raw, b[:]); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", l.member, err)
	}
	if b[0] != 'S' {
		return nil, fmt.Errorf("connect to %s: the server does not take TLS", l.member)
	}
	cfg := roots.Clone()
	cfg.ServerName = l.host
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("connect to %s: TLS: %w", l.member, err)
	}
	fe := pgproto3.NewFrontend(tc, tc)
	params := map[string]string{"user": l.user, "database": l.db}
	for k, v := range l.params {
		params[k] = v
	}
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	if err := fe.Flush(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", l.member, err)
	}
	s := &server{conn: tc, raw: raw, fe: fe, addr: l.addr, member: l.member, params: map[string]string{}, login: map[string]string{}, set: map[string]string{}, prepared: map[string]bool{}}
	for k, v := range l.params {
		s.set[k], s.login[k] = v, v
	}
	x := &clientExchange{clientKey: l.clientKey, serverKey: l.serverKey}
	for {
		msg, err := fe.Receive()
		if err != nil {
			return nil, fmt.Errorf("log in to %s: %w", l.member, err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationSASL:
			plus := false
			for _, mech := range m.AuthMechanisms {
				plus = plus || mech == scramSHA256Plus
			}
			if plus {
				x.cbind = endPoint(tc.ConnectionState().PeerCertificates[0])
			}
			mech, data := x.first()
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: data})
		case *pgproto3.AuthenticationSASLContinue:
			data, err := x.final(m.Data)
			if err != nil {
				return nil, fmt.Errorf("log in to %s: %w", l.member, err)
			}
			fe.Send(&pgproto3.SASLResponse{Data: data})
		case *pgproto3.AuthenticationSASLFinal:
			if err := x.check(m.Data); err != nil {
				return nil, fmt.Errorf("log in to %s: %w", l.member, err)
			}
			continue
		case *pgproto3.AuthenticationOk:
			continue
		case *pgproto3.ParameterStatus:
			s.params[m.Name] = m.Value
			continue
		case *pgproto3.BackendKeyData:
			s.key = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...)}
			continue
		case *pgproto3.NoticeResponse:
			continue
		case *pgproto3.ReadyForQuery:
			raw.SetDeadline(time.Time{})
			s.used = time.Now()
			return s, nil
		case *pgproto3.ErrorResponse:
			e := *m
			return nil, &serverError{msg: &e}
		default:
			return nil, fmt.Errorf("log in to %s: unexpected %T", l.member, msg)
		}
		if err := fe.Flush(); err != nil {
			return nil, fmt.Errorf("log in to %s: %w", l.member, err)
		}
	}
}

// exec runs sql, the pooler's own statements, and reads its answers up to
// ReadyForQuery; nothing of it reaches a client.
func (s *server) exec(sql string, timeout time.Duration) error {
	s.conn.SetDeadline(time.Now().Add(timeout))
	defer s.conn.SetDeadline(time.Time{})
	s.fe.Send(&pgproto3.Query{String: sql})
	if err := s.fe.Flush(); err != nil {
		s.broken = true
		return err
	}
	var failed error
	for {
		msg, err := s.fe.Receive()
		if err != nil {
			s.broken = true
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			failed = fmt.Errorf("%s (SQLSTATE %s)", m.Message, m.Code)
		case *pgproto3.ParameterStatus:
			s.params[m.Name] = m.Value
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != 'I' {
				s.broken = true
				return errors.New("the server is left in a transaction")
			}
			return failed
		}
	}
}

// alive reports whether an idle server still answers for its session.
// Postgres says why it ends one (a restart, pg_terminate_backend) and
// closes it; an idle server has nothing else to say, so any byte waiting
// on its socket, or its end, means it is gone. A peek that does not wait
// finds them, and the next transaction takes another server instead of
// failing on this one.
func (s *server) alive() bool {
	if s.fe.ReadBufferLen() > 0 {
		return false
	}
	sc, ok := s.raw.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true
	})
	return alive
}

func (s *server) close() {
	s.fe.Send(&pgproto3.Terminate{})
	s.conn.SetWriteDeadline(time.Now().Add(time.Second))
	s.fe.Flush()
	s.conn.Close()
}
