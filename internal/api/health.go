package api

import (
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// Health checks answer /health/{cluster}/{check} with the meaning Patroni's
// REST API gives the same names, so that HAProxy and other load balancers
// configured for Patroni keep working when pointed at pgfleet's agents.
const (
	checkPrimary  = "primary"   // writable primary: holds the leader key and runs
	checkReplica  = "replica"   // standby or read replica streaming from the primary
	checkReadOnly = "read-only" // primary or replica: anything that serves reads
	checkHealth   = "health"    // postgres runs, in any role
	checkSync     = "sync"      // streaming standby in the published sync set
	checkAsync    = "async"     // streaming standby outside it
)

// healthChecks maps every name a check answers to, Patroni's aliases
// included, to the check.
var healthChecks = map[string]string{
	"primary": checkPrimary, "master": checkPrimary, "leader": checkPrimary, "read-write": checkPrimary,
	"replica":   checkReplica,
	"read-only": checkReadOnly,
	"health":    checkHealth,
	"sync":      checkSync, "synchronous": checkSync,
	"async": checkAsync, "asynchronous": checkAsync,
}

// validChecks is the list an unknown check's answer gives.
const validChecks = "primary (or master, leader, read-write), replica, read-only, health, sync (or synchronous), async (or asynchronous)"

// statusMaxAge is how long ago a member's supervisor may have last checked
// its status before a health check stops trusting it. Supervisors check
// every second; one that has not for the host lease's TTL (agent.HostTTL)
// is stuck, even if its agent still renews the lease. The agent answering
// runs that supervisor, so the age is read on one clock. (The published
// status is written only when it changes, so its Updated says less.)
const statusMaxAge = 5 * time.Second

// healthCheck is a parsed health check request.
type healthCheck struct {
	Check  string // one of the check* constants
	MaxLag int64  // bytes; -1 when the request gives no limit
}

// parseHealthCheck resolves a check name and its query. It answers 404 for
// an unknown check and 400 for a query it cannot honour: a load balancer
// with a mistyped health check should see it fail, not silently pass
// (Patroni ignores a lag it cannot parse).
func parseHealthCheck(name, rawQuery string) (healthCheck, int, string) {
	hc := healthCheck{Check: healthChecks[name], MaxLag: -1}
	if hc.Check == "" {
		return hc, http.StatusNotFound, fmt.Sprintf("unknown health check %q: valid checks are %s", name, validChecks)
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return hc, http.StatusBadRequest, fmt.Sprintf("query %q is not valid: %v", rawQuery, err)
	}
	for k, vs := range q {
		if k != "lag" {
			return hc, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q: health checks take only lag (as in ?lag=16MB)", k)
		}
		if len(vs) != 1 {
			return hc, http.StatusBadRequest, "lag is given more than once: give it once"
		}
	}
	v, ok := q["lag"]
	if !ok {
		return hc, 0, ""
	}
	switch hc.Check {
	case checkReplica, checkReadOnly, checkSync, checkAsync:
	default:
		return hc, http.StatusBadRequest, fmt.Sprintf("lag applies to the replica, read-only, sync and async checks, not to %s: remove it", name)
	}
	n, err := parseBytes(v[0])
	if err != nil {
		return hc, http.StatusBadRequest, fmt.Sprintf("lag: %v", err)
	}
	hc.MaxLag = n
	return hc, 0, ""
}

// byteUnits are PostgreSQL's memory units, which Patroni's lag parameter
// takes too: powers of 1024.
var byteUnits = map[string]int64{"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}

// parseBytes reads a byte count such as "1048576", "16MB" or "1 kB". Units
// are PostgreSQL's (B, kB, MB, GB, TB, powers of 1024); unlike PostgreSQL it
// ignores their case, since no other meaning ("mb" for millibits) is
// possible here.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := byteUnits[unit]
	if unit == "" {
		mult, ok = 1, true
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if num == "" || !ok || err != nil {
		return 0, fmt.Errorf("%q is not a byte count: give a whole number of bytes, optionally with a unit B, kB, MB, GB or TB (as in 16MB)", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}

// memberHealth is what a health check knows about the member it checks: the
// member of the cluster placed on the agent's own host.
type memberHealth struct {
	ID string
	// Status is the member's last published status; HasStatus is false when
	// there is none, as when its host's lease expired.
	Status    fleet.MemberStatus
	HasStatus bool
	// Checked is when the member's supervisor last checked its status, as
	// the agent running it says; zero when it cannot say, and the status's
	// Updated stands in.
	Checked time.Time
	Leader  string   // member holding the leader key, "" during an election
	Sync    []string // published sync set; nil outside sync mode
}

// judgeHealth decides a parsed check for a member: 200 when it passes, 503
// and why when it does not. It fails closed: a member whose status is
// missing or stale passes no check, since nothing says what it is now.
func judgeHealth(hc healthCheck, m memberHealth, now time.Time) (int, string) {
	st := m.Status
	if !m.HasStatus {
		return http.StatusServiceUnavailable, fmt.Sprintf("%s has no status: its host's agent is down or has not reported yet", m.ID)
	}
	checked := m.Checked
	if checked.IsZero() {
		checked = st.Updated
	}
	if age := now.Sub(checked); age > statusMaxAge {
		return http.StatusServiceUnavailable, fmt.Sprintf("%s's status is %s old: its supervisor has stopped reporting", m.ID, age.Round(time.Second))
	}
	// The same tests as the routing proxy's (internal/agent/routing.go), so
	// that a load balancer and the proxy agree on where writes go. A
	// primary whose last status query failed stays the primary, as it does
	// for the proxy: taking the only writable member out of rotation
	// because it was slow to answer would turn slowness into an outage. A
	// standby must also have answered, since reads have other places to go;
	// the key holder is no standby, even while it is being promoted.
	isPrimary := m.Leader == m.ID && st.Role == fleet.RolePrimary && st.State == fleet.StateRunning
	isStandby := m.Leader != m.ID && (st.Role == fleet.RoleStandby || st.Role == fleet.RoleReplica) &&
		st.State == fleet.StateStreaming && st.Healthy
	inSync := slices.Contains(m.Sync, m.ID)
	what := fmt.Sprintf("%s is %s, %s", m.ID, st.Role, st.State)
	if (st.State == fleet.StateRunning || st.State == fleet.StateStreaming) && !st.Healthy {
		what += ", not answering status queries"
	}

	switch hc.Check {
	case checkPrimary:
		switch {
		case isPrimary:
			return http.StatusOK, m.ID + " is the primary"
		case m.Leader == "":
			return http.StatusServiceUnavailable, what + "; no member holds the leader key (an election is running)"
		case m.Leader != m.ID:
			return http.StatusServiceUnavailable, what + "; the primary is " + m.Leader
		}
		return http.StatusServiceUnavailable, what + "; it holds the leader key but does not run as primary yet"
	case checkReadOnly:
		if isPrimary {
			return http.StatusOK, m.ID + " is the primary"
		}
		if !isStandby {
			return http.StatusServiceUnavailable, what + "; neither a running primary nor a streaming standby"
		}
		return lagOK(hc, m)
	case checkReplica:
		if !isStandby {
			return http.StatusServiceUnavailable, what + "; not a streaming standby or replica"
		}
		return lagOK(hc, m)
	case checkSync:
		if !isStandby || !inSync {
			return http.StatusServiceUnavailable, what + "; not a streaming standby in the sync set " + syncSet(m.Sync)
		}
		return lagOK(hc, m)
	case checkAsync:
		if !isStandby || inSync {
			return http.StatusServiceUnavailable, what + "; not a streaming standby outside the sync set " + syncSet(m.Sync)
		}
		return lagOK(hc, m)
	case checkHealth:
		switch st.State {
		case fleet.StateRunning, fleet.StateStreaming, fleet.StateCatchingUp:
			return http.StatusOK, what
		}
		return http.StatusServiceUnavailable, what + "; postgres does not run"
	}
	return http.StatusNotFound, fmt.Sprintf("unknown health check %q: valid checks are %s", hc.Check, validChecks)
}

// lagOK finishes a check that passed but for the lag limit. A limit with
// an unknown lag fails: the member may be arbitrarily far behind.
func lagOK(hc healthCheck, m memberHealth) (int, string) {
	lag := m.Status.LagBytes
	if m.Status.Role == fleet.RolePrimary {
		lag = 0
	}
	switch {
	case hc.MaxLag < 0:
		return http.StatusOK, fmt.Sprintf("%s is %s, %s", m.ID, m.Status.Role, m.Status.State)
	case lag < 0:
		return http.StatusServiceUnavailable, fmt.Sprintf("%s's lag is not known, and the check limits it to %d bytes", m.ID, hc.MaxLag)
	case lag > hc.MaxLag:
		return http.StatusServiceUnavailable, fmt.Sprintf("%s is %d bytes behind the primary, over the limit of %d", m.ID, lag, hc.MaxLag)
	}
	return http.StatusOK, fmt.Sprintf("%s is %s, %s, %d bytes behind the primary", m.ID, m.Status.Role, m.Status.State, lag)
}

func syncSet(ms []string) string {
	if len(ms) == 0 {
		return "(empty)"
	}
	return "(" + strings.Join(ms, ", ") + ")"
}
