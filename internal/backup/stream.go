package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgfleet/pgfleet/internal/postgres"
)

// Streaming defaults.
const (
	// DefaultStreamEvery is how often, at most, a Streamer uploads what it
	// received: a commit reaches the store within about this plus one
	// upload, and a busy cluster costs at most this many PUTs a second
	// (an idle one none).
	DefaultStreamEvery = 500 * time.Millisecond
	// streamMaxPending bounds the WAL a Streamer holds that the store has
	// not taken: past it, the stream starts over from the newest segment,
	// and the archive covers what it skipped.
	streamMaxPending = 64 << 20
	// streamUploadTimeout bounds one upload.
	streamUploadTimeout = 30 * time.Second
	// streamCleanEvery is how often the increments of segments the
	// archive has taken since are dropped.
	streamCleanEvery = 10 * time.Second
)

// ErrNotStreaming is returned by Streamer.Run once UploadUntil has passed:
// the member is no longer the primary, and what it received is not
// uploaded.
var ErrNotStreaming = errors.New("no longer allowed to upload WAL")

// Streamer receives a primary's WAL over the replication protocol, as
// pg_receivewal does, and uploads it to its archive as increments
// (partial.go) at most every Every, so that a commit is in the store
// within about that much time even while its segment is far from full.
//
// It needs no replication slot: it streams the newest WAL, which postgres
// keeps until it is archived anyway, and a stream that falls behind (a slow
// store) starts over from the newest segment, the archive covering what it
// skipped. It is never a synchronous standby (postgres.WALStreamName).
type Streamer struct {
	Source  postgres.ConnInfo // a replication user of the primary
	Archive *Archive
	// Every is how often, at most, increments are uploaded; 0 means
	// DefaultStreamEvery.
	Every time.Duration
	// UploadUntil returns until when WAL may be uploaded; it is asked
	// before every upload, which must end by then. The agent answers its
	// member's fence deadline while the member holds the leader key, and
	// the zero time once it does not, so a primary that lost the key, and
	// whose timeline a new primary may branch from, adds nothing after.
	// Nil means always.
	UploadUntil func() time.Time
	// OnUpload, if set, is called after each upload with the timeline and
	// the LSN up to which the store holds the WAL.
	OnUpload func(tli uint32, end LSN)
	Log      *slog.Logger
}

// Run streams until ctx ends or UploadUntil has passed (ErrNotStreaming),
// starting over after a failure (postgres restarting, the store away).
func (s *Streamer) Run(ctx context.Context) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	failures := 0
	for {
		start := time.Now()
		err := s.session(ctx, log)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrNotStreaming):
			return err
		}
		if time.Since(start) > time.Minute {
			failures = 0 // a stream that ran a while failing is news again
		}
		failures++
		// The first failure in a row is worth a line; postgres restarting
		// makes many more.
		if failures == 1 {
			log.Warn("WAL stream to the store interrupted; starting over", "err", err)
		} else {
			log.Debug("WAL stream to the store interrupted; starting over", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(time.Duration(failures)*time.Second, 5*time.Second)):
		}
	}
}

// uploadDeadline returns until when the next upload may run, and false
// when none may.
func (s *Streamer) uploadDeadline() (time.Time, bool) {
	limit := time.Now().Add(streamUploadTimeout)
	if s.UploadUntil == nil {
		return limit, true
	}
	until := s.UploadUntil()
	if !time.Now().Before(until) {
		return time.Time{}, false
	}
	return minTime(limit, until), true
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// streamState is one session's WAL received and not yet uploaded.
type streamState struct {
	tli     uint32
	segSize uint64
	// pending is the WAL from pendingAt on, received and not uploaded.
	pending   []byte
	pendingAt LSN
	// toClean are segments completed this session whose increments go
	// once the archive holds them.
	toClean []string
}

func (st *streamState) end() LSN { return st.pendingAt + LSN(len(st.pending)) }

// session streams from the newest segment of the primary's WAL, resuming
// after what the store already holds of it, until the stream or an upload
// fails.
func (s *Streamer) session(ctx context.Context, log *slog.Logger) error {
	if _, ok := s.uploadDeadline(); !ok {
		return ErrNotStreaming
	}
	conn, err := postgres.OpenWALStream(ctx, s.Source)
	if err != nil {
		return err
	}
	defer conn.Close()
	sys, err := conn.Identify(ctx)
	if err != nil {
		return err
	}
	st := &streamState{tli: sys.Timeline, segSize: DefaultWALSegmentSize}
	segStart := LSN(uint64(sys.Flush) / st.segSize * st.segSize)
	seg := segmentName(st.tli, uint64(segStart)/st.segSize, st.segSize)
	st.pendingAt = segStart
	if incs, err := s.Archive.SegmentIncrements(ctx, seg); err == nil {
		if end := AssembleIncrements(seg, incs).End; end > 0 && segStart+LSN(end) <= sys.Flush {
			st.pendingAt = segStart + LSN(end)
		}
	}
	if err := conn.Start(ctx, st.pendingAt, st.tli); err != nil {
		return err
	}
	log.Info("streaming WAL to the store", "timeline", st.tli, "from", st.pendingAt, "store", s.Archive.Store().String())
	every := s.Every
	if every <= 0 {
		every = DefaultStreamEvery
	}
	var lastUpload, lastClean time.Time
	failing := false // the last upload failed: retries log quietly
	for {
		// Wait for WAL until the next upload is due, or a while when
		// nothing waits to be uploaded (an idle cluster costs a wake-up
		// every few seconds, and no upload).
		wait := 5 * time.Second
		if len(st.pending) > 0 {
			wait = max(time.Until(lastUpload.Add(every)), 0)
		}
		var d postgres.WALData
		err := error(nil)
		if wait > 0 {
			rctx, cancel := context.WithTimeout(ctx, wait)
			d, err = conn.Receive(rctx, st.end(), st.pendingAt)
			cancel()
		}
		switch {
		case err == nil && d.Data != nil:
			if d.Start != st.end() {
				return fmt.Errorf("the stream sent WAL from %s, want %s", d.Start, st.end())
			}
			st.pending = append(st.pending, d.Data...)
			if len(st.pending) > streamMaxPending {
				return fmt.Errorf("%d bytes of WAL received and not yet in the store: starting over from the newest segment", len(st.pending))
			}
		case err == nil, ctx.Err() == nil && isTimeout(err):
		default:
			// The stream ended (postgres stopping sends all it flushed
			// first): what was received still goes to the store.
			if uerr := s.upload(ctx, st); uerr != nil && !errors.Is(uerr, ErrNotStreaming) {
				log.Warn("upload the last streamed WAL", "err", uerr)
			}
			return err
		}
		if len(st.pending) > 0 && time.Since(lastUpload) >= every {
			lastUpload = time.Now()
			err := s.upload(ctx, st)
			switch {
			case errors.Is(err, ErrNotStreaming):
				return err
			case err != nil && !failing:
				log.Warn("upload streamed WAL; retrying", "err", err)
			case err != nil:
				log.Debug("upload streamed WAL; retrying", "err", err)
			case failing:
				log.Info("streamed WAL reaches the store again")
			}
			failing = err != nil
		}
		if len(st.toClean) > 0 && time.Since(lastClean) >= streamCleanEvery {
			lastClean = time.Now()
			s.clean(ctx, st, log)
		}
	}
}

func isTimeout(err error) bool {
	var to interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &to) && to.Timeout()
}

// upload stores the pending WAL as increments, one per segment it touches.
func (s *Streamer) upload(ctx context.Context, st *streamState) error {
	for len(st.pending) > 0 {
		deadline, ok := s.uploadDeadline()
		if !ok {
			return ErrNotStreaming
		}
		segNo := uint64(st.pendingAt) / st.segSize
		from := uint64(st.pendingAt) - segNo*st.segSize
		n := min(uint64(len(st.pending)), st.segSize-from)
		inc := WALIncrement{Segment: segmentName(st.tli, segNo, st.segSize), From: uint32(from), To: uint32(from + n)}
		uctx, cancel := context.WithDeadline(ctx, deadline)
		err := s.Archive.PutWALIncrement(uctx, inc, st.pending[:n])
		cancel()
		if err != nil {
			return err
		}
		st.pending = st.pending[n:]
		st.pendingAt += LSN(n)
		if uint64(inc.To) == st.segSize {
			st.toClean = append(st.toClean, inc.Segment)
		}
		if s.OnUpload != nil {
			s.OnUpload(st.tli, st.pendingAt)
		}
	}
	st.pending = st.pending[:0:0]
	return nil
}

// clean drops the increments of completed segments the archive now holds.
func (s *Streamer) clean(ctx context.Context, st *streamState, log *slog.Logger) {
	keep := st.toClean[:0]
	for _, seg := range st.toClean {
		archived, err := s.Archive.DropStreamedIfArchived(ctx, seg)
		if err != nil {
			log.Debug("drop streamed WAL of an archived segment", "segment", seg, "err", err)
		}
		if !archived || err != nil {
			keep = append(keep, seg)
		}
	}
	// Retention drops what a long outage leaves behind.
	st.toClean = keep[max(0, len(keep)-64):]
}
