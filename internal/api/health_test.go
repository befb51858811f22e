package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{in: "0", want: 0},
		{in: "1048576", want: 1 << 20},
		{in: "16MB", want: 16 << 20},
		{in: "1kB", want: 1 << 10},
		{in: " 2 GB ", want: 2 << 30},
		{in: "3mb", want: 3 << 20},
		{in: "1TB", want: 1 << 40},
		{in: "5B", want: 5},
		{in: "", err: true},
		{in: "MB", err: true},
		{in: "-1", err: true},
		{in: "1.5MB", err: true},
		{in: "16 MiB", err: true},
		{in: "10 ms", err: true},
		{in: "99999999999TB", err: true},
	}
	for _, tt := range tests {
		got, err := parseBytes(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestHealthDecision(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	fresh := now.Add(-time.Second)
	primary := fleet.MemberStatus{Role: fleet.RolePrimary, State: fleet.StateRunning, Healthy: true, Timeline: 2, Updated: fresh}
	standby := fleet.MemberStatus{Role: fleet.RoleStandby, State: fleet.StateStreaming, Healthy: true, LagBytes: 2048, Timeline: 2, Updated: fresh}
	replica := standby
	replica.Role = fleet.RoleReplica
	catchingUp := fleet.MemberStatus{Role: fleet.RoleStandby, State: fleet.StateCatchingUp, LagBytes: -1, Updated: fresh}
	unknownLag := standby
	unknownLag.LagBytes = -1
	quiet := standby // its last status query failed
	quiet.Healthy = false
	quietPrimary := primary
	quietPrimary.Healthy = false
	stale := standby
	stale.Updated = now.Add(-time.Minute)
	starting := fleet.MemberStatus{Role: fleet.RolePrimary, State: fleet.StateStarting, Updated: fresh}
	cloning := fleet.MemberStatus{Role: fleet.RoleStandby, State: fleet.StateCloning, Updated: fresh}

	// db-1 is on this host in every case; lead names the key holder.
	member := func(st fleet.MemberStatus, lead string, sync ...string) memberHealth {
		return memberHealth{ID: "db-1", Status: st, HasStatus: true, Leader: lead, Sync: sync}
	}
	tests := []struct {
		name   string
		check  string
		query  string
		m      memberHealth
		code   int
		reason string // a part of the reason
	}{
		{name: "primary", check: "primary", m: member(primary, "db-1"), code: 200, reason: "db-1 is the primary"},
		{name: "master alias", check: "master", m: member(primary, "db-1"), code: 200},
		{name: "leader alias", check: "leader", m: member(primary, "db-1"), code: 200},
		{name: "read-write alias", check: "read-write", m: member(primary, "db-1"), code: 200},
		{name: "primary slow to answer stays primary", check: "primary", m: member(quietPrimary, "db-1"), code: 200},
		{name: "primary without the key", check: "primary", m: member(primary, "db-2"), code: 503, reason: "the primary is db-2"},
		{name: "primary during an election", check: "primary", m: member(primary, ""), code: 503, reason: "election"},
		{name: "key holder still starting", check: "primary", m: member(starting, "db-1"), code: 503, reason: "does not run as primary yet"},
		{name: "standby is not primary", check: "primary", m: member(standby, "db-2"), code: 503, reason: "standby, streaming"},
		{name: "primary without status", check: "primary", m: memberHealth{ID: "db-1", Leader: "db-1"}, code: 503, reason: "has no status"},
		{name: "stale status", check: "replica", m: member(stale, "db-2"), code: 503, reason: "1m0s old"},
		// An unchanged status is not written again: the supervisor's own
		// check, which the agent reports, is what counts.
		{name: "unchanged status, supervisor checking", check: "replica", m: func() memberHealth { m := member(stale, "db-2"); m.Checked = fresh; return m }(), code: 200},
		{name: "supervisor stopped checking", check: "replica", m: func() memberHealth { m := member(standby, "db-2"); m.Checked = now.Add(-time.Minute); return m }(), code: 503, reason: "1m0s old"},

		{name: "replica: standby", check: "replica", m: member(standby, "db-2"), code: 200},
		{name: "replica: read replica", check: "replica", m: member(replica, "db-2"), code: 200},
		{name: "replica: primary is none", check: "replica", m: member(primary, "db-1"), code: 503, reason: "not a streaming standby"},
		{name: "replica: catching up", check: "replica", m: member(catchingUp, "db-2"), code: 503},
		{name: "replica: not answering", check: "replica", m: member(quiet, "db-2"), code: 503, reason: "not answering status queries"},
		{name: "replica: key holder being promoted", check: "replica", m: member(standby, "db-1"), code: 503},
		{name: "replica: during an election", check: "replica", m: member(catchingUp, ""), code: 503},
		{name: "replica: lag within", check: "replica", query: "lag=2048", m: member(standby, "db-2"), code: 200, reason: "2048 bytes behind"},
		{name: "replica: lag over", check: "replica", query: "lag=2047", m: member(standby, "db-2"), code: 503, reason: "over the limit of 2047"},
		{name: "replica: lag in kB", check: "replica", query: "lag=2kB", m: member(standby, "db-2"), code: 200},
		{name: "replica: lag in MB", check: "replica", query: "lag=16MB", m: member(standby, "db-2"), code: 200},
		{name: "replica: lag unknown", check: "replica", query: "lag=16MB", m: member(unknownLag, "db-2"), code: 503, reason: "not known"},
		{name: "replica: no limit, lag unknown", check: "replica", m: member(unknownLag, "db-2"), code: 200},

		{name: "read-only: primary", check: "read-only", m: member(primary, "db-1"), code: 200},
		{name: "read-only: primary with a lag limit", check: "read-only", query: "lag=0", m: member(primary, "db-1"), code: 200},
		{name: "read-only: standby", check: "read-only", m: member(standby, "db-2"), code: 200},
		{name: "read-only: standby over lag", check: "read-only", query: "lag=1kB", m: member(standby, "db-2"), code: 503},
		{name: "read-only: catching up", check: "read-only", m: member(catchingUp, "db-2"), code: 503, reason: "neither"},
		{name: "read-only: primary without the key", check: "read-only", m: member(primary, ""), code: 503},

		{name: "health: primary", check: "health", m: member(primary, "db-1"), code: 200},
		{name: "health: standby", check: "health", m: member(standby, "db-2"), code: 200},
		{name: "health: catching up", check: "health", m: member(catchingUp, ""), code: 200},
		{name: "health: cloning", check: "health", m: member(cloning, "db-2"), code: 503, reason: "postgres does not run"},
		{name: "health: no status", check: "health", m: memberHealth{ID: "db-1"}, code: 503},

		{name: "sync: in the set", check: "sync", m: member(standby, "db-2", "db-1"), code: 200},
		{name: "synchronous alias", check: "synchronous", m: member(standby, "db-2", "db-3", "db-1"), code: 200},
		{name: "sync: not in the set", check: "sync", m: member(standby, "db-2", "db-3"), code: 503, reason: "sync set (db-3)"},
		{name: "sync: asynchronous cluster", check: "sync", m: member(standby, "db-2"), code: 503, reason: "(empty)"},
		{name: "sync: in the set but not streaming", check: "sync", m: member(catchingUp, "db-2", "db-1"), code: 503},
		{name: "sync: lag over", check: "sync", query: "lag=1", m: member(standby, "db-2", "db-1"), code: 503},
		{name: "async: outside the set", check: "async", m: member(standby, "db-2", "db-3"), code: 200},
		{name: "asynchronous alias", check: "asynchronous", m: member(replica, "db-2"), code: 200},
		{name: "async: in the set", check: "async", m: member(standby, "db-2", "db-1"), code: 503, reason: "outside the sync set"},
		{name: "async: primary", check: "async", m: member(primary, "db-1"), code: 503},

		{name: "unknown check", check: "writable", m: member(primary, "db-1"), code: 404, reason: "valid checks are primary"},
		{name: "bad lag", check: "replica", query: "lag=lots", m: member(standby, "db-2"), code: 400, reason: "not a byte count"},
		{name: "negative lag", check: "replica", query: "lag=-5", m: member(standby, "db-2"), code: 400},
		{name: "lag twice", check: "replica", query: "lag=1&lag=2", m: member(standby, "db-2"), code: 400, reason: "more than once"},
		{name: "lag on primary", check: "primary", query: "lag=1MB", m: member(primary, "db-1"), code: 400, reason: "not to primary"},
		{name: "unknown parameter", check: "replica", query: "tag_x=y", m: member(standby, "db-2"), code: 400, reason: `unknown parameter "tag_x"`},
		{name: "malformed query", check: "replica", query: "lag=%zz", m: member(standby, "db-2"), code: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hc, code, reason := parseHealthCheck(tt.check, tt.query)
			if code == 0 {
				code, reason = judgeHealth(hc, tt.m, now)
			}
			if code != tt.code || !strings.Contains(reason, tt.reason) {
				t.Errorf("health %s?%s of %+v = %d %q; want %d with %q", tt.check, tt.query, tt.m, code, reason, tt.code, tt.reason)
			}
			if code != http.StatusOK && reason == "" {
				t.Errorf("health %s?%s = %d with no reason; a failed check must say why", tt.check, tt.query, code)
			}
		})
	}
}
