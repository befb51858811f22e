package pooler

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgfleet/pgfleet/internal/proxy"
)

// startupTimeout bounds a client's TLS handshake and login.
const startupTimeout = 15 * time.Second

// resetSQL returns a server to a fresh session's state, as DISCARD ALL
// does, but keeps the protocol-level prepared statements, which the pooler
// itself names and tracks and which other clients will use.
const resetSQL = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"

// sessionTags are command tags after which a server's session differs
// from a fresh one: it is reset before another client gets it.
var sessionTags = []string{"SET", "RESET", "LISTEN", "PREPARE", "DECLARE CURSOR", "CREATE TABLE", "LOAD", "DISCARD", "DEALLOCATE", "CREATE SEQUENCE"}

// session is one client connection.
type session struct {
	c      *cluster
	raw    net.Conn // the TCP connection, which ends the session when closed
	conn   net.Conn // raw, or the TLS connection over it
	be     *pgproto3.Backend
	user   string
	db     string
	params map[string]string // the client's startup settings
	pool   *pool
	pid    uint32
	secret []byte
	stmts  statements
	// clientKey and serverKey are the role's SCRAM keys from the login,
	// kept only until the pool has them.
	clientKey, serverKey []byte
	// unnamed is the client's latest Parse of the unnamed statement,
	// sent again when a Bind of it reaches another server.
	unnamed *pgproto3.Parse

	mu          sync.Mutex
	srv         *server
	unnamedSent bool // the unnamed statement was parsed on srv
	outstanding int  // Syncs and Queries sent to srv and not answered yet
	sinceSync   int  // messages sent to srv since the last Sync or Query
	segSent     int  // Syncs and Queries sent in this binding
	segDone     int  // ReadyForQuery received in this binding
	pending     []pendingReply
	unflushed   int
	gone        bool // the client left
}

// pendingReply is a ParseComplete or CloseComplete the server owes, and
// whether the client asked for it (or the pooler, which keeps it).
type pendingReply struct {
	kind byte // '1' ParseComplete, '3' CloseComplete
	drop bool
	seg  int
	stmt string // a statement whose Parse this answers
}

// pgError is an ErrorResponse for the client.
func pgError(severity, code, msg, hint string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: severity, SeverityUnlocalized: severity, Code: code, Message: msg, Hint: hint}
}

// fatal tells the client why its connection ends.
func (s *session) fatal(e *pgproto3.ErrorResponse) {
	if s.be == nil {
		s.be = pgproto3.NewBackend(s.conn, s.conn)
	}
	s.conn.SetWriteDeadline(time.Now().Add(time.Second))
	s.be.Send(e)
	s.be.Flush()
}

func (s *session) serve() {
	defer s.conn.Close()
	s.conn.SetDeadline(time.Now().Add(startupTimeout))
	if !s.startup() {
		return
	}
	defer s.c.p.unregister(s)
	s.conn.SetDeadline(time.Time{})
	s.loop()
}

// startup runs TLS, the startup message and the client's SCRAM login, and
// tells the client its settings and cancel key.
func (s *session) startup() bool {
	log := s.c.log
	be := pgproto3.NewBackend(s.conn, s.conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return false
	}
	switch m := msg.(type) {
	case *pgproto3.CancelRequest:
		s.cancel(m)
		return false
	case *pgproto3.GSSEncRequest:
		if _, err := s.conn.Write([]byte{'N'}); err != nil {
			return false
		}
		if msg, err = be.ReceiveStartupMessage(); err != nil {
			return false
		}
	}
	if _, ok := msg.(*pgproto3.SSLRequest); !ok {
		s.be = be
		s.fatal(pgError("FATAL", "28000", "pgfleet's pooled port takes TLS connections only", "connect with sslmode=verify-full and the fleet's CA (pgfleet url --pooled)"))
		return false
	}
	if _, err := s.conn.Write([]byte{'S'}); err != nil {
		return false
	}
	tc := tls.Server(s.conn, s.c.p.cfg.Identity.ServerTLS(tls.NoClientCert))
	if err := tc.Handshake(); err != nil {
		log.Debug("client TLS handshake", "err", err)
		return false
	}
	s.conn = tc
	s.be = pgproto3.NewBackend(tc, tc)
	msg, err = s.be.ReceiveStartupMessage()
	if err != nil {
		return false
	}
	if m, ok := msg.(*pgproto3.CancelRequest); ok {
		s.cancel(m)
		return false
	}
	sm, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		s.fatal(pgError("FATAL", "08P01", fmt.Sprintf("expected a startup message, got %T", msg), ""))
		return false
	}
	s.user, s.db = sm.Parameters["user"], sm.Parameters["database"]
	if s.db == "" {
		s.db = s.user
	}
	if s.user == "" {
		s.fatal(pgError("FATAL", "28000", "no PostgreSQL user name specified in startup packet", ""))
		return false
	}
	s.params = map[string]string{}
	for k, v := range sm.Parameters {
		switch k {
		case "user", "database":
		case "replication":
			s.fatal(pgError("FATAL", "08P01", "replication connections are not pooled", "connect to the cluster's primary port (pgfleet url) for replication"))
			return false
		case "options":
			if strings.TrimSpace(v) != "" {
				s.fatal(pgError("FATAL", "08P01", "the startup option \"options\" is not supported by the pooled port", "set settings with SET in each transaction, or connect to the primary port"))
				return false
			}
		default:
			s.params[k] = v
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startupTimeout)
	defer cancel()
	if !s.authenticate(ctx) {
		return false
	}
	s.pool = s.c.pool(s.user, s.db)
	s.pool.setKeys(s.clientKey, s.serverKey)
	s.clientKey = nil
	params := s.pool.loginParams()
	if params == nil {
		// The first client of this pool: a server login checks the
		// database and tells the settings every later client is told.
		srv, err := s.acquire(ctx)
		if err != nil {
			s.fail(err, true)
			return false
		}
		s.pool.setParams(srv.params)
		params = srv.params
		s.pool.put(srv)
	}
	s.c.p.register(s)
	s.be.Send(&pgproto3.AuthenticationOk{})
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := params[k]
		if cv, ok := s.params[k]; ok {
			v = cv
		}
		s.be.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	s.be.Send(&pgproto3.BackendKeyData{ProcessID: s.pid, SecretKey: s.secret})
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return s.be.Flush() == nil
}

// authenticate runs SCRAM-SHA-256 with the client against the role's
// verifier on the primary. A role that does not exist or cannot log in
// fails as a wrong password does, as PostgreSQL's own check.
func (s *session) authenticate(ctx context.Context) bool {
	v, found, err := s.c.verifier(ctx, s.user)
	if err != nil {
		s.c.log.Warn("client login: cannot read the role's verifier", "user", s.user, "err", err)
		s.fatal(pgError("FATAL", "57P03", fmt.Sprintf("cannot check the password of %q now: %v", s.user, err), "try again shortly"))
		return false
	}
	if !found {
		v = fakeVerifier()
	}
	failed := func() bool {
		if found {
			// The password may have changed: read it again next time. A
			// role that was not found stays so until the cache expires, so
			// that guessing names costs the primary nothing.
			s.c.forget(s.user)
		}
		s.fatal(pgError("FATAL", "28P01", fmt.Sprintf("password authentication failed for user %q", s.user), ""))
		return false
	}
	leaf := s.c.p.cfg.Identity.Leaf()
	mechs := []string{scramSHA256Plus, scramSHA256}
	if leaf == nil {
		mechs = mechs[1:]
	}
	s.be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: mechs})
	if s.be.Flush() != nil {
		return false
	}
	s.be.SetAuthType(pgproto3.AuthTypeSASL)
	msg, err := s.be.Receive()
	if err != nil {
		return false
	}
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return failed()
	}
	x := &serverExchange{v: v, plusCert: leaf}
	first, err := x.start(init.AuthMechanism, init.Data, leaf != nil)
	if err != nil {
		return failed()
	}
	s.be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(first)})
	if s.be.Flush() != nil {
		return false
	}
	s.be.SetAuthType(pgproto3.AuthTypeSASLContinue)
	msg, err = s.be.Receive()
	if err != nil {
		return false
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return failed()
	}
	final, clientKey, err := x.finish(resp.Data)
	if err != nil || !found {
		return failed()
	}
	s.be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
	s.clientKey, s.serverKey = clientKey, v.ServerKey
	return true
}

// cancel passes a client's cancel request on to the server its session
// runs a transaction on, if any.
func (s *session) cancel(m *pgproto3.CancelRequest) {
	target := s.c.p.session(m.ProcessID)
	if target == nil || !bytes.Equal(target.secret, m.SecretKey) {
		return
	}
	target.mu.Lock()
	srv := target.srv
	target.mu.Unlock()
	if srv == nil || srv.key == nil {
		return
	}
	conn, err := net.DialTimeout("tcp", srv.addr, dialTimeout)
	if err != nil {
		return
	}
	defer conn.Close()
	buf, err := (&pgproto3.CancelRequest{ProcessID: srv.key.ProcessID, SecretKey: srv.key.SecretKey}).Encode(nil)
	if err == nil {
		conn.SetWriteDeadline(time.Now().Add(dialTimeout))
		conn.Write(buf)
	}
}

// acquire returns a server for the session's next transaction, set up
// with the client's settings: an idle one, a new one, or, when the pool is
// full, the first one freed within the queue timeout.
func (s *session) acquire(ctx context.Context) (*server, error) {
	c := s.c
	var deadline time.Time // of the wait for a server, once there is a primary
	for {
		r, err := c.forward(ctx)
		if err != nil {
			return nil, err
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(c.p.cfg.QueueTimeout)
		}
		srv, err := s.pool.take(deadline, c.stop)
		if err != nil {
			return nil, err
		}
		if srv == nil {
			if srv, err = s.open(ctx, r); err != nil {
				s.pool.drop(nil)
				return nil, err
			}
			s.pool.opened(srv)
		} else if !srv.alive() {
			c.log.Debug("an idle server connection was closed by the server", "user", s.user, "member", srv.member)
			srv.close()
			s.pool.drop(srv)
			continue
		}
		if srv.member != r.Backend.Member {
			// Opened before the primary moved on.
			srv.close()
			s.pool.drop(srv)
			continue
		}
		if err := s.apply(srv); err != nil {
			srv.close()
			s.pool.drop(srv)
			return nil, fmt.Errorf("set the client's settings: %w", err)
		}
		return srv, nil
	}
}

// open logs in to the route's primary as the session's role.
func (s *session) open(ctx context.Context, r proxy.Route) (*server, error) {
	host, _, err := net.SplitHostPort(r.Backend.Addr)
	if err != nil {
		return nil, err
	}
	ck, sk := s.pool.keys()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: s.c.p.cfg.Identity.Pool()}
	srv, err := dialServer(ctx, login{
		addr: r.Backend.Addr, host: host, member: r.Backend.Member, user: s.user, db: s.db,
		params: s.params, clientKey: ck, serverKey: sk,
	}, cfg)
	if err != nil {
		return nil, err
	}
	srv.addr = r.Backend.Addr
	return srv, nil
}

// apply makes srv run with the client's startup settings, which differ
// from client to client (application_name, DateStyle, TimeZone...).
func (s *session) apply(srv *server) error {
	var sql []string
	for k, v := range s.params {
		if cur, ok := srv.set[k]; !ok || cur != v {
			sql = append(sql, fmt.Sprintf("SET %s = %s", quoteIdent(k), quoteLiteral(v)))
		}
	}
	for k := range srv.set {
		if _, ok := s.params[k]; !ok {
			sql = append(sql, "RESET "+quoteIdent(k))
		}
	}
	if len(sql) == 0 {
		return nil
	}
	sort.Strings(sql)
	if err := srv.exec(strings.Join(sql, "; "), resetTimeout); err != nil {
		return err
	}
	srv.set = make(map[string]string, len(s.params))
	for k, v := range s.params {
		srv.set[k] = v
	}
	return nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// fail tells the client that its transaction could not start, as
// PostgreSQL words it where it can: a full pool is SQLSTATE 53300
// (too_many_connections).
func (s *session) fail(err error, fatal bool) *pgproto3.ErrorResponse {
	sev := "ERROR"
	if fatal {
		sev = "FATAL"
	}
	var full *errPoolFull
	var noPrimary *errNoPrimary
	var se *serverError
	var e *pgproto3.ErrorResponse
	switch {
	case errors.As(err, &full):
		e = pgError(sev, "53300", full.Error(), "")
	case errors.As(err, &noPrimary):
		e = pgError(sev, "57P03", noPrimary.Error(), "")
	case errors.As(err, &se):
		e = se.msg
		if !fatal && e.Severity == "FATAL" {
			e.Severity, e.SeverityUnlocalized = sev, sev
		}
	case errors.Is(err, errClosing):
		e = pgError("FATAL", "57P01", "terminating connection: the pooler is closing", "")
	default:
		e = pgError(sev, "08006", fmt.Sprintf("cannot reach the primary of cluster %s: %v", s.c.name, err), "")
	}
	if fatal {
		s.fatal(e)
	}
	return e
}

// loop forwards the client's messages, binding a server at the first
// message of each transaction.
func (s *session) loop() {
	defer s.leave()
	for {
		msg, err := s.be.Receive()
		if err != nil {
			return
		}
		if _, ok := msg.(*pgproto3.Terminate); ok {
			return
		}
		s.mu.Lock()
		if s.srv == nil {
			s.mu.Unlock()
			ctx, cancel := context.WithCancel(context.Background())
			srv, err := s.acquire(ctx)
			cancel()
			if err != nil {
				if errors.Is(err, errClosing) {
					s.fail(err, true)
					return
				}
				if !s.refuse(msg, s.fail(err, false)) {
					return
				}
				continue
			}
			s.mu.Lock()
			s.bind(srv)
		}
		srv := s.srv
		srv.wmu.Lock()
		flush := s.send(msg)
		s.mu.Unlock()
		if flush {
			if err := srv.fe.Flush(); err != nil {
				srv.conn.Close()
			}
		}
		srv.wmu.Unlock()
	}
}

// refuse answers a transaction that could not get a server: the error,
// then, after the client's Sync (which ends what it sent), ReadyForQuery.
func (s *session) refuse(first pgproto3.FrontendMessage, e *pgproto3.ErrorResponse) bool {
	s.be.Send(e)
	msg := first
	for {
		switch msg.(type) {
		case *pgproto3.Query, *pgproto3.Sync, *pgproto3.FunctionCall:
			s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			return s.be.Flush() == nil
		case *pgproto3.Terminate:
			return false
		}
		if s.be.Flush() != nil {
			return false
		}
		var err error
		if msg, err = s.be.Receive(); err != nil {
			return false
		}
	}
}

// bind gives the session srv and starts forwarding its answers.
func (s *session) bind(srv *server) {
	s.srv = srv
	s.unnamedSent = false
	s.outstanding, s.sinceSync, s.segSent, s.segDone = 0, 0, 0, 0
	s.pending = s.pending[:0]
	go s.answer(srv)
}

// ensure makes sure srv holds st, parsing it first if not; the answer
// stays with the pooler.
func (s *session) ensure(st statement) {
	if s.srv.prepared[st.server] {
		return
	}
	s.srv.fe.Send(st.parseMessage())
	s.srv.prepared[st.server] = true
	s.pending = append(s.pending, pendingReply{kind: '1', drop: true, seg: s.segSent, stmt: st.server})
}

// send forwards one client message to the bound server, translating
// statement names, and reports whether to flush.
func (s *session) send(msg pgproto3.FrontendMessage) bool {
	fe := s.srv.fe
	s.sinceSync++
	switch m := msg.(type) {
	case *pgproto3.Parse:
		if m.Name == "" {
			p := *m
			p.ParameterOIDs = append([]uint32(nil), m.ParameterOIDs...)
			s.unnamed, s.unnamedSent = &p, true
			fe.Send(m)
			s.pending = append(s.pending, pendingReply{kind: '1', seg: s.segSent})
			return false
		}
		st := s.stmts.parse(m)
		if s.srv.prepared[st.server] {
			// Parse it anew under the same name, so that the client gets
			// its ParseComplete, or its error, at the place it expects.
			fe.Send(&pgproto3.Close{ObjectType: 'S', Name: st.server})
			s.pending = append(s.pending, pendingReply{kind: '3', drop: true, seg: s.segSent})
		}
		fe.Send(st.parseMessage())
		s.srv.prepared[st.server] = true
		s.pending = append(s.pending, pendingReply{kind: '1', seg: s.segSent, stmt: st.server})
	case *pgproto3.Bind:
		if m.PreparedStatement == "" {
			if !s.unnamedSent && s.unnamed != nil {
				fe.Send(s.unnamed)
				s.unnamedSent = true
				s.pending = append(s.pending, pendingReply{kind: '1', drop: true, seg: s.segSent})
			}
			fe.Send(m)
			return false
		}
		st, ok := s.stmts[m.PreparedStatement]
		if !ok {
			fe.Send(m)
			return false
		}
		s.ensure(st)
		b := *m
		b.PreparedStatement = st.server
		fe.Send(&b)
	case *pgproto3.Describe:
		st, ok := s.stmts[m.Name]
		if m.ObjectType != 'S' || m.Name == "" || !ok {
			fe.Send(m)
			return false
		}
		s.ensure(st)
		fe.Send(&pgproto3.Describe{ObjectType: 'S', Name: st.server})
	case *pgproto3.Close:
		if m.ObjectType == 'S' && m.Name != "" {
			// The statement may serve other clients on this server: the
			// client's name goes, the statement stays.
			delete(s.stmts, m.Name)
			fe.Send(&pgproto3.Close{ObjectType: 'S', Name: noopStatement})
		} else {
			if m.ObjectType == 'S' {
				s.unnamed = nil
			}
			fe.Send(m)
		}
		s.pending = append(s.pending, pendingReply{kind: '3', seg: s.segSent})
	case *pgproto3.Sync, *pgproto3.Query:
		fe.Send(m)
		s.outstanding++
		s.segSent++
		s.sinceSync = 0
		return true
	case *pgproto3.Flush, *pgproto3.FunctionCall, *pgproto3.CopyDone, *pgproto3.CopyFail:
		fe.Send(m)
		return true
	case *pgproto3.CopyData:
		fe.Send(m)
		s.unflushed += len(m.Data)
		if s.unflushed > 64<<10 {
			s.unflushed = 0
			return true
		}
	default:
		fe.Send(m)
	}
	return false
}

// answer forwards srv's messages to the client until the transaction
// ends, then returns srv to the pool.
func (s *session) answer(srv *server) {
	for {
		msg, err := srv.fe.Receive()
		if err != nil {
			s.lost(srv, err)
			return
		}
		forward := true
		switch m := msg.(type) {
		case *pgproto3.ParseComplete, *pgproto3.CloseComplete:
			kind := byte('1')
			if _, ok := m.(*pgproto3.CloseComplete); ok {
				kind = '3'
			}
			s.mu.Lock()
			if len(s.pending) == 0 || s.pending[0].kind != kind {
				s.mu.Unlock()
				s.lost(srv, fmt.Errorf("the server answered %c out of turn", kind))
				return
			}
			forward = !s.pending[0].drop
			s.pending = s.pending[1:]
			s.mu.Unlock()
		case *pgproto3.CommandComplete:
			for _, t := range sessionTags {
				if bytes.HasPrefix(m.CommandTag, []byte(t)) && (len(m.CommandTag) == len(t) || m.CommandTag[len(t)] == ' ') {
					srv.dirty = true
					if t == "PREPARE" || t == "DECLARE CURSOR" || t == "DEALLOCATE" || t == "DISCARD" {
						srv.discard = true
					}
				}
			}
		case *pgproto3.ParameterStatus:
			srv.dirty = true
		case *pgproto3.ReadyForQuery:
			s.mu.Lock()
			s.outstanding--
			s.segDone++
			// What the server still owes of finished segments it will
			// never send: an error skipped those messages.
			for len(s.pending) > 0 && s.pending[0].seg < s.segDone {
				if s.pending[0].stmt != "" {
					delete(srv.prepared, s.pending[0].stmt)
				}
				s.pending = s.pending[1:]
			}
			if m.TxStatus == 'I' && s.outstanding == 0 && s.sinceSync == 0 {
				s.be.Send(m)
				err := s.be.Flush()
				s.srv = nil
				s.mu.Unlock()
				s.release(srv)
				if err != nil {
					s.conn.Close()
				}
				return
			}
			s.mu.Unlock()
		}
		if forward {
			s.be.Send(msg)
		}
		if srv.fe.ReadBufferLen() == 0 {
			if err := s.be.Flush(); err != nil {
				srv.broken = true
				s.conn.Close()
			}
		}
	}
}

// release returns srv to the pool after a transaction, reset first if
// the client changed its session.
func (s *session) release(srv *server) {
	// Wait for the client's last write to the server to end.
	srv.wmu.Lock()
	srv.wmu.Unlock()
	if srv.dirty && !srv.broken {
		sql := resetSQL
		if srv.discard {
			sql = "DISCARD ALL"
		}
		if err := srv.exec(sql, resetTimeout); err != nil {
			s.c.log.Warn("reset a server connection between clients", "user", s.user, "database", s.db, "err", err)
			srv.broken = true
		}
		if srv.discard {
			clear(srv.prepared)
		}
		srv.dirty, srv.discard = false, false
		// RESET ALL returns to the login's settings.
		srv.set = make(map[string]string, len(srv.login))
		for k, v := range srv.login {
			srv.set[k] = v
		}
	}
	r, _, _ := s.c.current()
	if srv.broken || r.Mode != proxy.Forward || r.Backend.Member != srv.member {
		srv.close()
		s.pool.drop(srv)
		return
	}
	s.pool.put(srv)
}

// lost ends a binding whose server failed or was cut (the primary moved):
// the client, whose transaction is gone, is told why and disconnected.
func (s *session) lost(srv *server, err error) {
	srv.broken = true
	srv.conn.Close()
	s.pool.drop(srv)
	s.mu.Lock()
	gone := s.gone
	s.srv = nil
	s.mu.Unlock()
	if gone {
		return
	}
	r, _, _ := s.c.current()
	msg := fmt.Sprintf("the server connection of this transaction was lost: %v", err)
	if r.Backend.Member != srv.member {
		msg = fmt.Sprintf("%s is no longer the primary of cluster %s (switchover or failover): this transaction did not complete there", srv.member, s.c.name)
	}
	s.c.log.Info("client lost its server connection", "user", s.user, "member", srv.member, "err", err)
	s.fatal(pgError("FATAL", "08006", msg, "reconnect and retry the transaction"))
	s.conn.Close()
}

// leave ends the session: a server it holds in a transaction is closed,
// which rolls the transaction back.
func (s *session) leave() {
	s.mu.Lock()
	s.gone = true
	srv := s.srv
	s.mu.Unlock()
	if srv != nil {
		srv.conn.Close()
	}
}
