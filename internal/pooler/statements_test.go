package pooler

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestServerName: a statement's name on the servers depends on its text
// and parameter types only, never on the client or the client's name.
func TestServerName(t *testing.T) {
	a := serverName("SELECT $1", []uint32{23})
	for _, tc := range []struct {
		name  string
		query string
		types []uint32
		same  bool
	}{
		{"same text and types", "SELECT $1", []uint32{23}, true},
		{"other types", "SELECT $1", []uint32{25}, false},
		{"no types", "SELECT $1", nil, false},
		{"other text", "SELECT $1 ", []uint32{23}, false},
		{"types and text shifted", "\x00\x00\x00\x17SELECT $1", nil, false},
	} {
		if got := serverName(tc.query, tc.types); (got == a) != tc.same {
			t.Errorf("serverName(%s) = %s against %s: same %v, want %v", tc.name, got, a, got == a, tc.same)
		}
	}
	if len(a) > 63 {
		t.Errorf("serverName = %q: longer than PostgreSQL's 63-byte names", a)
	}
}

// TestStatements: two clients that prepare the same query under their own
// names share one server statement; a client's Parse message is kept to be
// sent again on another server.
func TestStatements(t *testing.T) {
	c1, c2 := statements{}, statements{}
	s1 := c1.parse(&pgproto3.Parse{Name: "P0_1", Query: "SELECT abalance FROM pgbench_accounts WHERE aid = $1", ParameterOIDs: []uint32{23}})
	s2 := c2.parse(&pgproto3.Parse{Name: "stmtcache_9", Query: "SELECT abalance FROM pgbench_accounts WHERE aid = $1", ParameterOIDs: []uint32{23}})
	if s1.server != s2.server {
		t.Errorf("the same query under two client names: server names %s and %s, want one", s1.server, s2.server)
	}
	if got := c1["P0_1"]; got.server != s1.server {
		t.Errorf("statements[P0_1] = %+v, want server name %s", got, s1.server)
	}
	p := s1.parseMessage()
	if p.Name != s1.server || p.Query != s1.query || len(p.ParameterOIDs) != 1 || p.ParameterOIDs[0] != 23 {
		t.Errorf("parseMessage() = %+v, want the client's Parse under the server name", p)
	}
	c1.parse(&pgproto3.Parse{Name: "P0_1", Query: "SELECT 2"})
	if c1["P0_1"].server == s1.server {
		t.Error("a client's name parsed again with another query kept the old server statement")
	}
}
