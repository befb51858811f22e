// Package chaos is pgfleet's fault suite, modelled on Jepsen's set test:
// writers insert unique ids into a cluster through every path an
// application uses, a seeded nemesis injects faults, and a checker decides
// from the recorded history whether any promise was broken. The checker
// (this file) is a pure function of the history; the runner (run.go) drives
// a real fleet.
package chaos

import (
	"fmt"
	"slices"
	"sort"
	"time"
)

// Outcome is what a writer learned of one insert.
type Outcome string

const (
	// Acked: the commit was acknowledged; the row must survive (in sync
	// mode) and says which member took it on which timeline.
	Acked Outcome = "acked"
	// Failed: the server refused it (an error reply): it did not commit.
	Failed Outcome = "failed"
	// Unknown: the connection broke before the answer; it may or may not
	// have committed, and either is correct.
	Unknown Outcome = "unknown"
)

// Op is one insert of a unique id.
type Op struct {
	ID       int64
	Client   string // "proxy:HOST", "url", "direct:MEMBER"
	Start    time.Time
	End      time.Time
	Outcome  Outcome
	Member   string // for Acked: the member that took the write
	Timeline int64  // for Acked: the timeline it took it on
}

// Fault is one injected fault and how the cluster came out of it.
type Fault struct {
	Kind    string
	Target  string    // host or member
	Start   time.Time // injected
	Healed  time.Time // the nemesis undid it (restart, SIGCONT, link up)
	Settled time.Time // primary writable and every member streaming; zero if never within the bound
}

// History is everything a run recorded.
type History struct {
	Sync   bool // sync mode: no acknowledged id may be lost
	Ops    []Op
	Faults []Fault
	// Final is the set of ids on the primary once the run settled.
	Final map[int64]bool
	// Divergent lists what the runner found members disagree on after
	// the last heal (rows missing on a member, members not streaming).
	Divergent []string
}

// Finding is one broken promise.
type Finding struct {
	Kind   string // "lost", "split-brain", "stale-timeline", "unsettled", "diverged"
	Detail string
}

// KindStats sums up the faults of one kind.
type KindStats struct {
	Faults  int
	Settled int
	// Lost is the acknowledged ids missing from the final table whose
	// acknowledgement came during a fault of this kind (up to the next
	// fault's start).
	Lost int
	// Unavailable is the longest stretch, from a fault's start to its
	// settling, in which no write through the proxies or the multi-host
	// URL was acknowledged; Settle the time from heal to settled.
	Unavailable []time.Duration
	Settle      []time.Duration
}

// Report is the checker's verdict.
type Report struct {
	Acked, Failed, Unknown int
	Lost                   []int64
	Findings               []Finding
	ByKind                 map[string]*KindStats
}

// OK reports whether no promise was broken: no finding at all in sync
// mode; in asynchronous mode lost acknowledged writes are reported, not
// findings.
func (r Report) OK() bool { return len(r.Findings) == 0 }

// Check decides from h whether a promise was broken:
//
//   - lost: in sync mode, every acknowledged id is in the final table (in
//     asynchronous mode the loss is counted per fault kind instead);
//   - split-brain: no two members acknowledged writes on the same timeline,
//     which would mean two writable primaries of one history;
//   - stale-timeline: no write was acknowledged on an older timeline by an
//     insert that started after the first acknowledgement on a newer one
//     (an old primary still writable after the new one took writes);
//   - unsettled: every fault settled (primary writable, every member
//     streaming) within the run's bound;
//   - diverged: after the last heal every member holds the same rows.
func Check(h History) Report {
	r := Report{ByKind: map[string]*KindStats{}}
	var acked []Op
	for _, op := range h.Ops {
		switch op.Outcome {
		case Acked:
			r.Acked++
			acked = append(acked, op)
		case Failed:
			r.Failed++
		default:
			r.Unknown++
		}
	}
	sort.Slice(acked, func(i, j int) bool { return acked[i].End.Before(acked[j].End) })

	faults := slices.Clone(h.Faults)
	sort.Slice(faults, func(i, j int) bool { return faults[i].Start.Before(faults[j].Start) })
	kindAt := func(t time.Time) string {
		kind := ""
		for _, f := range faults {
			if !f.Start.After(t) {
				kind = f.Kind
			}
		}
		return kind
	}

	for _, op := range acked {
		if h.Final[op.ID] {
			continue
		}
		r.Lost = append(r.Lost, op.ID)
		if k := kindAt(op.End); k != "" {
			stats(r.ByKind, k).Lost++
		}
	}
	if h.Sync && len(r.Lost) > 0 {
		r.Findings = append(r.Findings, Finding{"lost", fmt.Sprintf("%d acknowledged ids missing in sync mode, e.g. %v", len(r.Lost), r.Lost[:min(10, len(r.Lost))])})
	}

	// Two members on one timeline.
	type span struct{ first, last time.Time }
	byTL := map[int64]map[string]*span{}
	firstOnTL := map[int64]time.Time{}
	for _, op := range acked {
		m := byTL[op.Timeline]
		if m == nil {
			m = map[string]*span{}
			byTL[op.Timeline] = m
		}
		if s, ok := m[op.Member]; ok {
			s.last = op.End
		} else {
			m[op.Member] = &span{op.End, op.End}
		}
		if f, ok := firstOnTL[op.Timeline]; !ok || op.End.Before(f) {
			firstOnTL[op.Timeline] = op.End
		}
	}
	tls := make([]int64, 0, len(byTL))
	for tl := range byTL {
		tls = append(tls, tl)
	}
	slices.Sort(tls)
	for _, tl := range tls {
		if len(byTL[tl]) < 2 {
			continue
		}
		var who []string
		for m, s := range byTL[tl] {
			who = append(who, fmt.Sprintf("%s (%s to %s)", m, s.first.Format("15:04:05.000"), s.last.Format("15:04:05.000")))
		}
		sort.Strings(who)
		r.Findings = append(r.Findings, Finding{"split-brain", fmt.Sprintf("timeline %d: writes acknowledged by %v", tl, who)})
	}

	// An older timeline acknowledging after a newer one began.
	newerFirst := map[int64]time.Time{} // earliest first ack on any newer timeline
	var earliest time.Time
	for i := len(tls) - 1; i >= 0; i-- {
		tl := tls[i]
		if !earliest.IsZero() {
			newerFirst[tl] = earliest
		}
		if f := firstOnTL[tl]; earliest.IsZero() || f.Before(earliest) {
			earliest = f
		}
	}
	stale := 0
	var example string
	for _, op := range acked {
		if nf, ok := newerFirst[op.Timeline]; ok && op.Start.After(nf) {
			if stale == 0 {
				example = fmt.Sprintf("id %d by %s on timeline %d, started %s, after a newer timeline's first write at %s",
					op.ID, op.Member, op.Timeline, op.Start.Format("15:04:05.000"), nf.Format("15:04:05.000"))
			}
			stale++
		}
	}
	if stale > 0 {
		r.Findings = append(r.Findings, Finding{"stale-timeline", fmt.Sprintf("%d writes acknowledged on an older timeline after a newer one took writes, e.g. %s", stale, example)})
	}

	// Per fault: settling and the longest stretch without an
	// acknowledged write through the paths applications use.
	var appAcks []time.Time
	for _, op := range acked {
		if op.Client == "url" || len(op.Client) > 6 && op.Client[:6] == "proxy:" {
			appAcks = append(appAcks, op.End)
		}
	}
	for i, f := range faults {
		s := stats(r.ByKind, f.Kind)
		s.Faults++
		if f.Settled.IsZero() {
			r.Findings = append(r.Findings, Finding{"unsettled", fmt.Sprintf("%s on %s at %s never settled", f.Kind, f.Target, f.Start.Format("15:04:05.000"))})
			continue
		}
		s.Settled++
		s.Settle = append(s.Settle, f.Settled.Sub(f.Healed))
		end := f.Settled
		if i+1 < len(faults) && faults[i+1].Start.Before(end) {
			end = faults[i+1].Start
		}
		s.Unavailable = append(s.Unavailable, longestGap(appAcks, f.Start, end))
	}
	for _, d := range h.Divergent {
		r.Findings = append(r.Findings, Finding{"diverged", d})
	}
	return r
}

func stats(m map[string]*KindStats, kind string) *KindStats {
	s := m[kind]
	if s == nil {
		s = &KindStats{}
		m[kind] = s
	}
	return s
}

// longestGap is the longest stretch within [from, to] that holds no time of
// acks (sorted).
func longestGap(acks []time.Time, from, to time.Time) time.Duration {
	if !to.After(from) {
		return 0
	}
	prev, longest := from, time.Duration(0)
	for _, t := range acks {
		if t.Before(from) {
			continue
		}
		if t.After(to) {
			break
		}
		longest = max(longest, t.Sub(prev))
		prev = t
	}
	return max(longest, to.Sub(prev))
}
