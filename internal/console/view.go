package console

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

// Health is how a cluster is doing, in one word and the reason for it.
// Pages show the word and a symbol, never a color alone.
type Health struct {
	State  string // healthy, degraded, read-only, electing, starting or down
	Reason string
}

// Symbol is the text mark beside the state, for readers who do not see
// the color.
func (h Health) Symbol() string {
	switch h.State {
	case "healthy":
		return "✓"
	case "degraded", "starting", "read-only":
		return "!"
	case "electing":
		return "…"
	}
	return "✗"
}

// judge decides a cluster's health from its view: the primary first (no
// primary is an election if anything runs, else down), then every other
// member (not healthy, or behind the replica lag limit, is degraded). The
// reason names the members that made the decision.
func judge(v api.ClusterView) Health {
	var running, notReady []string
	settingUp := true
	for _, m := range v.Members {
		switch m.State {
		case fleet.StateRunning, fleet.StateStreaming, fleet.StateCatchingUp:
			running = append(running, m.ID)
		}
		switch m.State {
		case fleet.StatePending, fleet.StateInitializing, fleet.StateCloning, fleet.StateWaiting, fleet.StateStarting:
		default:
			settingUp = false
		}
		if m.ID != v.Primary && !memberOK(m, v.MaxReplicaLag) {
			notReady = append(notReady, describeMember(m))
		}
	}
	if v.Primary == "" {
		switch {
		case settingUp && len(v.Members) > 0:
			return Health{"starting", "setting up: " + strings.Join(describeAll(v.Members), "; ")}
		case len(running) > 0:
			return Health{"electing", "no member holds the leader key: an election is under way among " + strings.Join(running, ", ")}
		}
		return Health{"down", "no member runs: " + strings.Join(describeAll(v.Members), "; ")}
	}
	p, ok := memberByID(v, v.Primary)
	switch {
	case !ok:
		return Health{"down", fmt.Sprintf("the leader key names %s, which is not a member", v.Primary)}
	case p.State == fleet.StateUnknown:
		return Health{"down", fmt.Sprintf("primary %s on %s stopped reporting: its host is down; a standby takes over once its lease expires", p.ID, p.Host)}
	case p.State != fleet.StateRunning || !p.Healthy:
		return Health{"down", "primary " + describeMember(p)}
	}
	if v.ReadOnly != "" {
		// Before any lag: the disk guard stopping the writes is what an
		// app notices.
		return Health{"read-only", "takes no writes: " + v.ReadOnly}
	}
	if len(notReady) > 0 {
		return Health{"degraded", strings.Join(notReady, "; ")}
	}
	return Health{"healthy", fmt.Sprintf("all %d members are up and in step", len(v.Members))}
}

// memberOK reports whether a standby or replica streams, healthy, within
// the lag at which reads still go to it.
func memberOK(m api.MemberView, maxLag int64) bool {
	return m.Healthy && m.State == fleet.StateStreaming && m.LagBytes >= 0 && (maxLag <= 0 || m.LagBytes <= maxLag)
}

func describeMember(m api.MemberView) string {
	s := fmt.Sprintf("%s %s", m.ID, m.State)
	switch {
	case m.State == fleet.StateUnknown:
		s += " (host " + m.Host + " is down)"
	case m.Progress != "":
		s += " " + m.Progress
	case m.State == fleet.StateStreaming && m.LagBytes > 0:
		s += ", " + fleet.FormatBytes(m.LagBytes) + " behind"
	case m.State == fleet.StateStreaming && !m.Healthy:
		s += ", not healthy"
	}
	if m.Message != "" && m.State == fleet.StateFailed {
		s += ": " + m.Message
	}
	return s
}

func describeAll(ms []api.MemberView) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = describeMember(m)
	}
	return out
}

func memberByID(v api.ClusterView, id string) (api.MemberView, bool) {
	for _, m := range v.Members {
		if m.ID == id {
			return m, true
		}
	}
	return api.MemberView{}, false
}

// ready reports whether every member runs (the primary) or streams with no
// lag: what `pgfleet create --wait` waits for.
func ready(v api.ClusterView) bool {
	if v.Primary == "" || len(v.Members) == 0 {
		return false
	}
	for _, m := range v.Members {
		if !m.Healthy || (m.ID != v.Primary && m.LagBytes != 0) {
			return false
		}
	}
	return true
}

// up counts the members that serve: the primary running, the others
// streaming.
func up(v api.ClusterView) int {
	n := 0
	for _, m := range v.Members {
		if (m.ID == v.Primary && m.State == fleet.StateRunning) || m.State == fleet.StateStreaming {
			n++
		}
	}
	return n
}

// worstLag is the largest lag of a non-primary member, "-" with none, "?"
// when one's lag is unknown.
func worstLag(v api.ClusterView) string {
	worst, any := int64(0), false
	for _, m := range v.Members {
		if m.ID == v.Primary {
			continue
		}
		if m.LagBytes < 0 {
			return "?"
		}
		worst, any = max(worst, m.LagBytes), true
	}
	if !any {
		return "-"
	}
	return fleet.FormatBytes(worst)
}

// lag formats a member's lag for the members table.
func lag(m api.MemberView) string {
	if m.Role == fleet.RolePrimary {
		return "-"
	}
	if m.LagBytes < 0 {
		return "?"
	}
	return fleet.FormatBytes(m.LagBytes)
}

// diskFree formats a member's free disk for the members table, with the
// share of the disk it is: the disk guard's measure.
func diskFree(m api.MemberView) string {
	if m.DiskSize <= 0 {
		return "-"
	}
	return fmt.Sprintf("%s (%d %%)", fleet.FormatBytes(m.DiskFree), 100*m.DiskFree/m.DiskSize)
}

// ago says how long before now t was, in the largest unit that fits.
func ago(t, now time.Time) string {
	d := now.Sub(t)
	switch {
	case t.IsZero():
		return "never"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", max(0, int(d/time.Second)))
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d/time.Hour))
	}
	return fmt.Sprintf("%d days ago", int(d/(24*time.Hour)))
}

// hostRow is one host on the fleet page: live, or known from a member's
// placement (or an earlier read) and gone, which is down.
type hostRow struct {
	Name, Region, Addr, API, Version string
	Started                          time.Time
	Members                          int
	Up                               bool
}

// regionHosts is one region's hosts.
type regionHosts struct {
	Region string
	Hosts  []hostRow
	Up     int
}

// groupHosts puts the live hosts and the hosts known to exist (placed
// members, or hosts seen before) by region; a known host that is not live
// is down.
func groupHosts(live []api.HostView, known map[string]hostRow, clusters []api.ClusterView) []regionHosts {
	rows := map[string]hostRow{}
	for name, h := range known {
		h.Up, h.Members = false, 0
		rows[name] = h
	}
	for _, c := range clusters {
		for _, m := range c.Members {
			if _, ok := rows[m.Host]; !ok {
				rows[m.Host] = hostRow{Name: m.Host, Region: m.Region}
			}
		}
	}
	for _, h := range live {
		rows[h.Name] = hostRow{Name: h.Name, Region: h.Region, Addr: h.Addr, API: h.APIAddr, Version: h.Version, Started: h.Started, Up: true}
	}
	for _, c := range clusters {
		for _, m := range c.Members {
			r := rows[m.Host]
			r.Members++
			rows[m.Host] = r
		}
	}
	by := map[string]*regionHosts{}
	for _, r := range rows {
		g, ok := by[r.Region]
		if !ok {
			g = &regionHosts{Region: r.Region}
			by[r.Region] = g
		}
		g.Hosts = append(g.Hosts, r)
		if r.Up {
			g.Up++
		}
	}
	out := make([]regionHosts, 0, len(by))
	for _, g := range by {
		sort.Slice(g.Hosts, func(i, j int) bool { return g.Hosts[i].Name < g.Hosts[j].Name })
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Region < out[j].Region })
	return out
}

// rttMatrix is the round trips between regions: the median of what the
// hosts of one region measured to the hosts of another.
type rttMatrix struct {
	Regions []string
	Rows    []rttRow
}

type rttRow struct {
	From  string
	Cells []string // per Regions: "0.3 ms", or "-" when not measured
}

func buildRTT(rtts []api.RTTView, hosts []api.HostView) rttMatrix {
	region := map[string]string{}
	var regions []string
	for _, h := range hosts {
		region[h.Name] = h.Region
		if !slices.Contains(regions, h.Region) {
			regions = append(regions, h.Region)
		}
	}
	sort.Strings(regions)
	samples := map[[2]string][]int64{}
	for _, r := range rtts {
		a, b := region[r.From], region[r.To]
		if a == "" || b == "" {
			continue
		}
		samples[[2]string{a, b}] = append(samples[[2]string{a, b}], r.Micros)
	}
	m := rttMatrix{Regions: regions}
	for _, from := range regions {
		row := rttRow{From: from}
		for _, to := range regions {
			s := samples[[2]string{from, to}]
			if len(s) == 0 {
				row.Cells = append(row.Cells, "-")
				continue
			}
			slices.Sort(s)
			row.Cells = append(row.Cells, fmt.Sprintf("%.1f ms", float64(s[len(s)/2])/1000))
		}
		m.Rows = append(m.Rows, row)
	}
	return m
}
