package pooler

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Protocol-level prepared statements in transaction pooling. A client's
// named statement lives on whichever server connection it was parsed on,
// and the client's next transaction may run on another one. The pooler
// keeps each client's Parse messages and names every statement on the
// servers after its text and parameter types: two clients that prepare the
// same query share it, a name never means two queries, and a Bind or
// Describe that reaches a server lacking the statement is preceded by the
// Parse, which the pooler sends itself and whose answer it keeps from the
// client.

// statement is a client's named prepared statement.
type statement struct {
	server string // its name on every server connection
	query  string
	types  []uint32
}

// serverName is the name of a statement on the servers: a hash of its
// text and parameter types, so that it is the same on every connection and
// for every client, and never the name of another statement.
func serverName(query string, types []uint32) string {
	h := sha256.New()
	var b [4]byte
	for _, t := range types {
		binary.BigEndian.PutUint32(b[:], t)
		h.Write(b[:])
	}
	binary.BigEndian.PutUint32(b[:], uint32(len(types)))
	h.Write(b[:])
	h.Write([]byte(query))
	return "pgfleet_" + hex.EncodeToString(h.Sum(nil)[:12])
}

// noopStatement is a name no statement has: closing it answers
// CloseComplete and changes nothing, which is what a client's Close of its
// own name must do once the statement may still serve other clients.
const noopStatement = "pgfleet_none"

// statements are one client's named prepared statements, by the client's
// names.
type statements map[string]statement

// parse records the client's Parse and returns its server name.
func (s statements) parse(p *pgproto3.Parse) statement {
	st := statement{server: serverName(p.Query, p.ParameterOIDs), query: p.Query, types: append([]uint32(nil), p.ParameterOIDs...)}
	s[p.Name] = st
	return st
}

// parseMessage is the Parse that prepares st on a server.
func (st statement) parseMessage() *pgproto3.Parse {
	return &pgproto3.Parse{Name: st.server, Query: st.query, ParameterOIDs: st.types}
}
