package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// WALStream is a physical replication connection that receives a server's
// WAL as pg_receivewal does: START_REPLICATION without a slot, so it never
// holds WAL back on the server, under an application_name no
// synchronous_standby_names of pgfleet's names, so no commit ever waits for
// it. It is not safe for concurrent use.
type WALStream struct {
	conn *pgconn.PgConn
}

// WALStreamName is the application_name of pgfleet's WAL streams, as
// pg_stat_replication shows them.
const WALStreamName = "pgfleet-walstream"

// WALSystem is what IDENTIFY_SYSTEM says about a server.
type WALSystem struct {
	Timeline uint32
	Flush    LSN // the server's WAL flushed so far: what it can stream
}

// WALData is a piece of WAL as the server sent it: Data is the WAL from
// Start on, on the timeline streaming started on.
type WALData struct {
	Start LSN
	Data  []byte
	// ServerEnd is the end of the server's WAL when it sent this.
	ServerEnd LSN
}

// ErrStreamEnded is returned by Receive when the server ended the stream
// (its timeline ended, or it is shutting down after sending everything).
var ErrStreamEnded = errors.New("the server ended the WAL stream")

// OpenWALStream opens a replication connection to ci (a user with the
// REPLICATION attribute).
func OpenWALStream(ctx context.Context, ci ConnInfo) (*WALStream, error) {
	cfg, err := pgconn.ParseConfig(ci.URL())
	if err != nil {
		return nil, fmt.Errorf("WAL stream from %s: %w", ci, err)
	}
	cfg.ConnectTimeout = ConnectTimeout
	cfg.RuntimeParams["application_name"] = WALStreamName
	cfg.RuntimeParams["replication"] = "true"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("WAL stream from %s: %w", ci, err)
	}
	return &WALStream{conn: conn}, nil
}

// Close closes the connection.
func (s *WALStream) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return s.conn.Close(ctx)
}

// Identify runs IDENTIFY_SYSTEM: the server's timeline and flushed WAL.
func (s *WALStream) Identify(ctx context.Context) (WALSystem, error) {
	res, err := s.conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return WALSystem{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return WALSystem{}, errors.New("IDENTIFY_SYSTEM: unexpected answer")
	}
	row := res[0].Rows[0]
	tli, err := strconv.ParseUint(string(row[1]), 10, 32)
	if err != nil || tli == 0 {
		return WALSystem{}, fmt.Errorf("IDENTIFY_SYSTEM: timeline %q", row[1])
	}
	flush, err := ParseLSN(string(row[2]))
	if err != nil {
		return WALSystem{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	return WALSystem{Timeline: uint32(tli), Flush: flush}, nil
}

// Start asks the server to stream its WAL from start on timeline tli.
func (s *WALStream) Start(ctx context.Context, start LSN, tli uint32) error {
	q := fmt.Sprintf("START_REPLICATION PHYSICAL %s TIMELINE %d", start, tli)
	s.conn.Frontend().Send(&pgproto3.Query{String: q})
	if err := s.conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("%s: %w", q, err)
	}
	for {
		msg, err := s.conn.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("%s: %w", q, pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("%s: unexpected message %T", q, msg)
		}
	}
}

// Receive waits until ctx ends for the next piece of WAL. A keepalive the
// server wants answered is answered with write and flush (what the caller
// has received and made durable) before Receive goes on waiting. A ctx
// that ends is an error for which pgconn.Timeout reports true, and the
// stream can be received from again.
func (s *WALStream) Receive(ctx context.Context, write, flush LSN) (WALData, error) {
	for {
		msg, err := s.conn.ReceiveMessage(ctx)
		if err != nil {
			return WALData{}, err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case 'w':
				d, err := parseXLogData(m.Data[1:])
				return d, err
			case 'k':
				reply, err := parseKeepalive(m.Data[1:])
				if err != nil {
					return WALData{}, err
				}
				if reply {
					if err := s.Status(write, flush); err != nil {
						return WALData{}, err
					}
				}
			}
		case *pgproto3.CopyDone:
			return WALData{}, ErrStreamEnded
		case *pgproto3.ErrorResponse:
			return WALData{}, pgconn.ErrorResponseToPgError(m)
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return WALData{}, fmt.Errorf("WAL stream: unexpected message %T", msg)
		}
	}
}

// Status sends a standby status update: WAL received up to write and made
// durable up to flush, 0 for none (as pg_receivewal reports unless it is
// synchronous: a server shutting down then waits only until its WAL was
// received). Nothing is ever reported applied, so the server never counts
// this stream as a standby's replay.
func (s *WALStream) Status(write, flush LSN) error {
	s.conn.Frontend().Send(&pgproto3.CopyData{Data: statusUpdate(write, flush, time.Now())})
	if err := s.conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("WAL stream: send status: %w", err)
	}
	return nil
}

// pgEpoch is where PostgreSQL's timestamps count from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// statusUpdate is the body of a standby status update message ('r').
func statusUpdate(write, flush LSN, now time.Time) []byte {
	b := make([]byte, 1+8+8+8+8+1)
	b[0] = 'r'
	binary.BigEndian.PutUint64(b[1:], uint64(write))
	binary.BigEndian.PutUint64(b[9:], uint64(flush))
	binary.BigEndian.PutUint64(b[17:], 0) // applied: nothing
	binary.BigEndian.PutUint64(b[25:], uint64(now.Sub(pgEpoch).Microseconds()))
	return b
}

// parseXLogData parses an XLogData message after its 'w'. The WAL is
// copied: the message's buffer is the connection's.
func parseXLogData(b []byte) (WALData, error) {
	if len(b) < 24 {
		return WALData{}, fmt.Errorf("WAL stream: XLogData of %d bytes", len(b))
	}
	return WALData{
		Start:     LSN(binary.BigEndian.Uint64(b)),
		ServerEnd: LSN(binary.BigEndian.Uint64(b[8:])),
		Data:      append([]byte(nil), b[24:]...),
	}, nil
}

// parseKeepalive parses a primary keepalive message after its 'k' and
// reports whether the server asks for an answer.
func parseKeepalive(b []byte) (bool, error) {
	if len(b) < 17 {
		return false, fmt.Errorf("WAL stream: keepalive of %d bytes", len(b))
	}
	return b[16] != 0, nil
}
