package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// clone copies the cluster's data into this member, which has none, from
// the member ha.CloneSource picks: a standby or replica when one fits
// (preferably in this member's region), else the primary.
func (s *supervisor) clone(ctx context.Context, c store.ClusterState, why string) error {
	leader, _ := c.Member(c.Leader)
	// Choosing may wait a few seconds for the primary to make this
	// member's slot (waitSlot): the status says it clones meanwhile.
	s.set(fleet.StateCloning, s.standbyRole(), why)
	from, reason := s.cloneSource(ctx, c, leader)
	src, err := s.replicationSource(ctx, from)
	if err != nil {
		return err
	}
	// The member's own slot lives on the primary. A copy from a standby
	// goes without it: pg_basebackup's temporary slot on the standby keeps
	// the WAL of the copy itself, and the primary's slot keeps what comes
	// after (see ha.CloneSource).
	slot := postgres.SlotName(s.spec.ID)
	if from.ID != leader.ID {
		slot = ""
	}
	s.event(ctx, "clone", fmt.Sprintf("cloning %s from %s (%s): %s", s.spec.ID, from.ID, net.JoinHostPort(src.Host, strconv.Itoa(src.Port)), reason))
	s.set(fleet.StateCloning, s.standbyRole(), fmt.Sprintf("%s; copying from %s", why, from.ID))
	start := time.Now()
	err = s.inst.BaseBackup(ctx, src, slot, func(done, total int64) {
		s.mu.Lock()
		if total > 0 {
			s.progress = fmt.Sprintf("%d%% of %d MB", done*100/total, total>>20)
		}
		s.mu.Unlock()
	})
	s.standbyCloneFailed = err != nil && from.ID != leader.ID
	if err != nil {
		return fmt.Errorf("clone from %s: %w", from.ID, err)
	}
	s.event(ctx, "cloned", fmt.Sprintf("cloned %s from %s in %s", s.spec.ID, from.ID, time.Since(start).Round(time.Millisecond)))
	return nil
}

// slotWait is how long a member without data waits for the primary to
// hold its replication slot before choosing where to copy from: a member
// just added to the spec starts about when the primary makes its slot, on
// the primary's next round.
const slotWait = 10 * time.Second

// cloneSource gathers what ha.CloneSource decides from, the restart LSN of
// this member's slot on the primary among it, and returns its choice.
func (s *supervisor) cloneSource(ctx context.Context, c store.ClusterState, leader fleet.MemberSpec) (fleet.MemberSpec, string) {
	in := ha.CloneInput{
		Self: s.spec, Primary: ha.CloneMember{ID: leader.ID, Region: leader.Region},
		MaxLag: ha.CloneMaxLag, StandbyFailed: s.standbyCloneFailed,
	}
	for _, m := range c.Members {
		cm := ha.CloneMember{ID: m.ID, Region: m.Region, Leaving: m.Leaving, LagBytes: -1}
		if st, ok := c.Status[m.ID]; ok {
			cm.Streaming = m.ID != c.Leader && st.State == fleet.StateStreaming && st.Healthy
			cm.LagBytes = st.LagBytes
			if l, err := postgres.ParseLSN(st.ReplayLSN); err == nil {
				cm.ReplayLSN = uint64(l)
			}
		}
		in.Members = append(in.Members, cm)
	}
	if !in.StandbyFailed {
		in.SlotLSN = s.waitSlot(ctx, leader)
	}
	id, why := ha.CloneSource(in)
	if m, ok := c.Member(id); ok {
		return m, why
	}
	return leader, why
}

// waitSlot returns the restart LSN of this member's replication slot on
// the primary, once it holds one, asking over the superuser connection
// that pg_rewind uses; 0 if it holds none within slotWait.
func (s *supervisor) waitSlot(ctx context.Context, leader fleet.MemberSpec) uint64 {
	name := postgres.SlotName(s.spec.ID)
	deadline := time.Now().Add(slotWait)
	var last error
	for {
		lsn, err := s.slotOn(ctx, leader, name)
		if err == nil && lsn != 0 {
			return uint64(lsn)
		}
		last = err
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	s.log.Info("the primary holds no replication slot for this member yet; cloning from the primary", "primary", leader.ID, "slot", name, "err", last)
	return 0
}

// slotOn reads the restart LSN of slot name on member m.
func (s *supervisor) slotOn(ctx context.Context, m fleet.MemberSpec, name string) (postgres.LSN, error) {
	ci, err := s.superuserOf(ctx, m)
	if err != nil {
		return 0, err
	}
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := postgres.Connect(qctx, ci)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return postgres.SlotRestartLSN(qctx, conn, name)
}

// superuserOf is how this agent connects to member m's postgres as the
// superuser: pg_rewind's source, and the slot check before a clone.
func (s *supervisor) superuserOf(ctx context.Context, m fleet.MemberSpec) (postgres.ConnInfo, error) {
	h, err := s.view.Host(ctx, m.Host)
	if err != nil {
		return postgres.ConnInfo{}, fmt.Errorf("find member %s's host: %w", m.ID, err)
	}
	return postgres.ConnInfo{Host: h.Addr, Port: m.Port, User: fleet.Superuser, Password: s.secrets.SuperuserPassword, Database: "postgres", RootCert: s.inst.RootCertPath()}, nil
}

// rejoin makes data whose history left the leader's follow it again: with
// pg_rewind when it can, else by removing it so that the member is cloned
// afresh.
func (s *supervisor) rejoin(ctx context.Context, c store.ClusterState, why string) error {
	leader, _ := c.Member(c.Leader)
	src, err := s.superuserOf(ctx, leader)
	if err != nil {
		return err
	}
	if s.noopRewind {
		// The last rewind found nothing to do, yet the data still cannot
		// follow: pg_rewind takes one timeline number for one history, and
		// this one was also used by another (a member promoted and fenced
		// before its history file reached the archive, then another
		// promoted onto the same number). Only a fresh copy helps.
		s.noopRewind = false
		return s.discardData(ctx, fmt.Sprintf("pg_rewind from %s found nothing to do, yet the data cannot follow it (%s)", leader.ID, why))
	}
	s.set(fleet.StateRejoining, s.standbyRole(), why)
	start := time.Now()
	// pg_rewind runs single-user crash recovery on data that was not shut
	// down cleanly, which refuses standby.signal, and takes restore_command
	// from the data's own configuration: the data is configured as a
	// primary's (with the archive's settings) until the rewind is done.
	if err := s.configure(s.settings(nil, false)); err != nil {
		return fmt.Errorf("configure before rewind: %w", err)
	}
	changed, err := s.inst.Rewind(ctx, src, len(s.archiveSettings()) > 0)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A rewind can fail for a moment (the source restarted, the
		// network dropped): the run loop retries it, from whoever leads by
		// then; only a failure that repeats costs the data a re-clone.
		s.rewindFailures++
		if s.rewindFailures < rewindTries {
			return fmt.Errorf("pg_rewind from %s failed (try %d of %d): %w", leader.ID, s.rewindFailures, rewindTries, err)
		}
		s.rewindFailures = 0
		return s.discardData(ctx, fmt.Sprintf("pg_rewind from %s failed %d times (%v)", leader.ID, rewindTries, err))
	}
	s.rewindFailures = 0
	s.noopRewind = !changed
	s.forgetTimeline()
	// pg_rewind copied the leader's configuration; make the data a standby's.
	if err := s.configure(s.settings(nil, true)); err != nil {
		return fmt.Errorf("configure after rewind: %w", err)
	}
	s.diverged.Store(false)
	s.event(ctx, "rewind", fmt.Sprintf("%s rewound to follow %s in %s (%s)", s.spec.ID, leader.ID, time.Since(start).Round(time.Millisecond), why))
	return nil
}

// rewindTries is how many consecutive pg_rewind failures a member takes
// before it gives its data up for a re-clone.
const rewindTries = 3

// startTries is how many consecutive failed starts as a standby of a
// running primary a member takes before it treats its data as diverged and
// rejoins.
const startTries = 3

// discardData sets the member's data aside, since it cannot follow the
// leader, so that the next round clones it afresh. Only called with a
// running leader to clone from, which holds every acknowledged commit; even
// so the data is not deleted but kept as pgdata.discarded (one generation)
// until the member streams again.
func (s *supervisor) discardData(ctx context.Context, why string) error {
	s.forgetArchived()
	s.event(ctx, "reclone", fmt.Sprintf("%s: %s; cloning afresh (the old data is kept in %s until it streams)", s.spec.ID, why, s.discarded()))
	if err := os.RemoveAll(s.discarded()); err != nil {
		return fmt.Errorf("remove the data set aside before: %w", err)
	}
	if err := os.Rename(s.pgdata(), s.discarded()); err != nil {
		return fmt.Errorf("set data aside to re-clone: %w", err)
	}
	s.forgetTimeline()
	s.diverged.Store(false)
	return nil
}

// discarded is where discardData keeps the data it set aside.
func (s *supervisor) discarded() string { return s.pgdata() + ".discarded" }

// dropDiscarded deletes the data set aside for a re-clone, once the member
// streams again and so holds what the primary has.
func (s *supervisor) dropDiscarded() {
	if _, err := os.Stat(s.discarded()); err != nil {
		return
	}
	if err := os.RemoveAll(s.discarded()); err != nil {
		s.log.Warn("remove data set aside for a re-clone", "dir", s.discarded(), "err", err)
		return
	}
	s.log.Info("member streams again: removed the data set aside for its re-clone", "dir", s.discarded())
}

// receivedTimelineFile keeps, in the member's directory, the newest
// timeline this member's WAL receiver streamed on.
const receivedTimelineFile = "received-timeline"

// receivedTimeline is that timeline in memory: the file is read once and
// written only when the value grows, not on every status publication.
type receivedTimeline struct {
	mu     sync.Mutex
	loaded bool
	tl     int64
}

// timeline is the timeline of the WAL the member holds. A primary and a
// streaming standby say it themselves; a standby whose upstream is gone
// (the election case) has no WAL receiver to ask, and pg_control still names
// the timeline of its last restartpoint, which may be several switches old.
// So the newest timeline it streamed on is remembered on disk, and the
// newer of the two counts: WAL received on a timeline stays on it.
func (s *supervisor) timeline(pst postgres.Status) int64 {
	if !pst.InRecovery {
		return pst.Timeline
	}
	r := &s.recvTL
	r.mu.Lock()
	defer r.mu.Unlock()
	path := filepath.Join(s.dir, receivedTimelineFile)
	if !r.loaded {
		known, _ := os.ReadFile(path)
		r.tl, _ = strconv.ParseInt(strings.TrimSpace(string(known)), 10, 64)
		r.loaded = true
	}
	if pst.Streaming && pst.Timeline > r.tl {
		r.tl = pst.Timeline
		tmp := path + ".tmp"
		err := os.WriteFile(tmp, []byte(strconv.FormatInt(r.tl, 10)+"\n"), 0o600)
		if err == nil {
			err = os.Rename(tmp, path)
		}
		if err != nil {
			s.log.Warn("remember received timeline", "err", err)
		}
	}
	return max(r.tl, pst.Timeline)
}

// forgetTimeline drops the remembered timeline when the data is replaced
// or rewound: what it held is gone.
func (s *supervisor) forgetTimeline() {
	r := &s.recvTL
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loaded, r.tl = true, 0
	if err := os.Remove(filepath.Join(s.dir, receivedTimelineFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("forget received timeline", "err", err)
	}
}
