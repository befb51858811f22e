package ha

import (
	"fmt"
	"sort"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// Election timing.
const (
	// ElectionWindow is how long a candidate waits after publishing its
	// candidacy before it counts the candidacies: every reachable eligible
	// member publishes within it, so the most advanced one is never missed.
	ElectionWindow = 400 * time.Millisecond
	// CandidacyFresh is how old a candidacy may be and still count.
	CandidacyFresh = 3 * time.Second
	// SwitchoverTimeout is how long a switchover may take before the
	// members fall back to an ordinary election.
	SwitchoverTimeout = 30 * time.Second
)

// Eligible reports whether m may ever be promoted: standbys in the primary
// region, and while the cluster moves to another region (fleet.Move), in
// both regions, so that at every step of a move the member with the newest
// commits can be promoted wherever it is. Read replicas are never promoted.
func Eligible(m fleet.MemberSpec, spec fleet.ClusterSpec) bool {
	return m.Role != fleet.RoleReplica && (m.Region == spec.PrimaryRegion || spec.Moving(m.Region))
}

// SyncEligible reports whether the primary's commits may wait for m: an
// eligible member that is not on its way out of the cluster. A leaving
// member stays Eligible, so that an election that needs the commits it may
// hold alone still promotes it.
func SyncEligible(m fleet.MemberSpec, spec fleet.ClusterSpec) bool {
	return Eligible(m, spec) && !m.Leaving
}

// ElectionInput is what the election decision needs.
type ElectionInput struct {
	Now        time.Time
	Spec       fleet.ClusterSpec
	Members    []fleet.MemberSpec
	Candidates []fleet.Candidacy
	Switchover *fleet.Switchover
	Sync       *fleet.SyncState
	// Timeline is the newest timeline a primary of the cluster announced.
	Timeline int64
}

// Elect returns the member that should take the leader key, or "" when no
// one should yet, and why. The winner is the eligible candidate that is
// furthest along the cluster's history: on the newest timeline, and on it
// has received the most WAL, so no acknowledged commit that any reachable
// eligible member holds is lost; ties go to the lower member id, so every
// member computes the same winner. WAL positions on different timelines do
// not compare: a member still on an older timeline may have received more
// bytes, but past the fork they are WAL the cluster discarded, and promoting
// it would discard the newer timeline's commits instead.
//
// In asynchronous mode a candidate on a timeline older than the newest one a
// primary announced is kept out altogether: its history left the cluster's.
// In sync mode every member of the published sync set takes part whatever
// its timeline, since together they hold every acknowledged commit.
//
// During a switchover only its target may win, and only once it has
// received the stopped primary's last record.
func Elect(in ElectionInput) (string, string) {
	byID := map[string]fleet.MemberSpec{}
	for _, m := range in.Members {
		byID[m.ID] = m
	}
	fresh := map[string]fleet.Candidacy{}
	for _, c := range in.Candidates {
		m, ok := byID[c.Member]
		if !ok || !Eligible(m, in.Spec) || in.Now.Sub(c.At) > CandidacyFresh {
			continue
		}
		fresh[c.Member] = c
	}

	if sw := in.Switchover; sw != nil && in.Now.Sub(sw.Requested) < SwitchoverTimeout {
		if sw.LSN == 0 {
			return "", fmt.Sprintf("switchover: waiting for %s to stop", sw.From)
		}
		c, ok := fresh[sw.To]
		switch {
		case !ok:
			return "", fmt.Sprintf("switchover: waiting for %s's candidacy", sw.To)
		case c.LSN < sw.LSN:
			return "", fmt.Sprintf("switchover: %s has received %s of %s", sw.To, fmtLSN(c.LSN), fmtLSN(sw.LSN))
		default:
			return sw.To, fmt.Sprintf("switchover: %s has everything up to %s", sw.To, fmtLSN(sw.LSN))
		}
	}

	var cands []fleet.Candidacy
	if in.Spec.SyncMode() != fleet.SyncOff && in.Sync != nil && len(in.Sync.Members) > 0 {
		// Every acknowledged commit is on at least one sync member, and WAL
		// is one line: the most advanced of them all has every commit. So
		// all of them must take part; the lag limit does not apply.
		for _, m := range in.Sync.Members {
			c, ok := fresh[m]
			if !ok {
				return "", fmt.Sprintf("sync mode: waiting for %s, which may hold the last acknowledged commits", m)
			}
			cands = append(cands, c)
		}
	} else {
		behind := 0
		for _, c := range fresh {
			if c.LagBytes > in.Spec.MaxLag() {
				continue
			}
			if c.Timeline < in.Timeline {
				behind++
				continue
			}
			cands = append(cands, c)
		}
		if len(cands) == 0 && behind > 0 {
			return "", fmt.Sprintf("%d candidates are on a timeline older than the cluster's (%d); waiting for a member on it", behind, in.Timeline)
		}
	}
	if len(cands) == 0 {
		return "", "no eligible candidate within the lag limit"
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.Timeline != b.Timeline {
			return a.Timeline > b.Timeline
		}
		if a.LSN != b.LSN {
			return a.LSN > b.LSN
		}
		return a.Member < b.Member
	})
	w := cands[0]
	return w.Member, fmt.Sprintf("%s has received the most WAL (%s on timeline %d) of %d candidates", w.Member, fmtLSN(w.LSN), w.Timeline, len(cands))
}

// CandidacyClock dates candidacies by this observer's own clock: a
// candidacy is as old as the time since its store revision last changed
// here. Candidates republish every round, so a live one keeps changing; a
// dead one stops. Comparing the candidate's own timestamp with the local
// clock would make any clock skew between hosts beyond CandidacyFresh block
// every election.
type CandidacyClock struct {
	seen map[string]seenRev
}

type seenRev struct {
	rev int64
	at  time.Time
}

// Date returns cands with At set to when this clock first saw each one's
// current revision, now for one not seen before.
func (k *CandidacyClock) Date(now time.Time, cands []fleet.Candidacy) []fleet.Candidacy {
	if k.seen == nil {
		k.seen = map[string]seenRev{}
	}
	out := make([]fleet.Candidacy, 0, len(cands))
	next := make(map[string]seenRev, len(cands))
	for _, c := range cands {
		s, ok := k.seen[c.Member]
		if !ok || s.rev != c.Rev {
			s = seenRev{rev: c.Rev, at: now}
		}
		next[c.Member] = s
		c.At = s.at
		out = append(out, c)
	}
	k.seen = next
	return out
}

func fmtLSN(l uint64) string { return fmt.Sprintf("%X/%X", l>>32, uint32(l)) }

// FenceDeadline is when a primary whose lease renewal was last confirmed
// for a request sent at sent must have stopped taking writes. The store
// counts the lease from when it received that request, which is after sent,
// so the key cannot expire, and no other member be promoted, before
// sent+ttl; the margin (a quarter of the TTL, at least 300 ms) covers the
// time fencing itself takes.
func FenceDeadline(sent time.Time, ttl time.Duration) time.Time {
	return sent.Add(ttl - max(ttl/4, 300*time.Millisecond))
}

// RenewEvery is how often a leader renews its lease: three tries before
// the fence deadline.
func RenewEvery(ttl time.Duration) time.Duration { return ttl / 4 }
