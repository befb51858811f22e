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

// streamState is one session's WAL received and not yet in the store.
type streamState struct {
	tli     uint32
	segSize uint64
	// uploaded is where the WAL the store does not hold yet starts.
	uploaded LSN
	// inflight is the WAL from uploaded on that is being uploaded, and
	// pending what was received after it.
	inflight, pending []byte
	// toClean are segments completed this session whose increments go
	// once the archive holds them.
	toClean []string
}

// end is where the WAL received ends.
func (st *streamState) end() LSN { return st.uploaded + LSN(len(st.inflight)+len(st.pending)) }

// uploadJob is WAL from at on, for the uploader.
type uploadJob struct {
	at   LSN
	data []byte
}

// uploadResult is what the uploader did with a job: n bytes from its start
// are in the store, completing the segments done.
type uploadResult struct {
	n    int
	done []string
	err  error
}

// session streams from the newest segment of the primary's WAL, resuming
// after what the store already holds of it, until the stream fails. Uploads
// run beside the receiving, so that the server is always answered: a
// server shutting down (a switchover) waits for its WAL to be received,
// never for an upload.
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
	st.uploaded = segStart
	if incs, err := s.Archive.SegmentIncrements(ctx, seg); err == nil {
		if end := AssembleIncrements(seg, incs).End; end > 0 && segStart+LSN(end) <= sys.Flush {
			st.uploaded = segStart + LSN(end)
		}
	}
	if err := conn.Start(ctx, st.uploaded, st.tli); err != nil {
		return err
	}
	log.Info("streaming WAL to the store", "timeline", st.tli, "from", st.uploaded, "store", s.Archive.Store().String())
	every := s.Every
	if every <= 0 {
		every = DefaultStreamEvery
	}

	jobs := make(chan uploadJob)
	results := make(chan uploadResult, 1)
	uctx, stopUploads := context.WithCancel(ctx)
	uploaderDone := make(chan struct{})
	go func() {
		defer close(uploaderDone)
		for j := range jobs {
			n, done, err := s.upload(uctx, st.tli, st.segSize, j.at, j.data)
			results <- uploadResult{n, done, err}
		}
	}()
	defer func() {
		stopUploads()
		close(jobs)
		<-uploaderDone
	}()
	busy := false    // an upload is under way
	failing := false // the last upload failed: retries log quietly
	// finished takes an upload's result in.
	finished := func(r uploadResult) error {
		busy = false
		st.uploaded += LSN(r.n)
		st.toClean = append(st.toClean, r.done...)
		if rest := st.inflight[r.n:]; len(rest) > 0 {
			// Not uploaded: first in line for the next try.
			st.pending = append(rest[:len(rest):len(rest)], st.pending...)
		}
		st.inflight = nil
		switch {
		case errors.Is(r.err, ErrNotStreaming):
			return r.err
		case r.err != nil && !failing:
			log.Warn("upload streamed WAL; retrying", "err", r.err)
		case r.err != nil:
			log.Debug("upload streamed WAL; retrying", "err", r.err)
		case failing:
			log.Info("streamed WAL reaches the store again")
		}
		failing = r.err != nil
		return nil
	}
	var lastUpload, lastClean time.Time
	for {
		if busy {
			select {
			case r := <-results:
				if err := finished(r); err != nil {
					return err
				}
			default:
			}
		}
		if !busy && len(st.pending) > 0 && time.Since(lastUpload) >= every {
			lastUpload = time.Now()
			st.inflight, st.pending = st.pending, nil
			busy = true
			jobs <- uploadJob{at: st.uploaded, data: st.inflight}
		}
		if !busy && len(st.toClean) > 0 && time.Since(lastClean) >= streamCleanEvery {
			lastClean = time.Now()
			s.clean(ctx, st, log)
		}
		// Wait for WAL until the next upload is due, a moment while one
		// is under way, or a while when nothing waits to be uploaded (an
		// idle cluster costs a wake-up every few seconds, and no upload).
		wait := 5 * time.Second
		switch {
		case busy:
			wait = 20 * time.Millisecond
		case len(st.pending) > 0:
			wait = max(time.Until(lastUpload.Add(every)), time.Millisecond)
		}
		rctx, cancel := context.WithTimeout(ctx, wait)
		// Received is reported as written, and nothing as flushed, as
		// pg_receivewal does: a server shutting down waits only until all
		// its WAL was received.
		d, err := conn.Receive(rctx, st.end(), 0)
		cancel()
		switch {
		case err == nil:
			if d.Start != st.end() {
				return fmt.Errorf("the stream sent WAL from %s, want %s", d.Start, st.end())
			}
			st.pending = append(st.pending, d.Data...)
			if len(st.inflight)+len(st.pending) > streamMaxPending {
				return fmt.Errorf("%d bytes of WAL received and not yet in the store: starting over from the newest segment", len(st.inflight)+len(st.pending))
			}
		case ctx.Err() == nil && isTimeout(err):
		default:
			// The stream ended (postgres stopping sends all it flushed
			// first): what was received still goes to the store.
			if busy {
				if ferr := finished(<-results); ferr != nil {
					return ferr
				}
			}
			if len(st.pending) > 0 {
				st.inflight, st.pending = st.pending, nil
				n, _, uerr := s.upload(ctx, st.tli, st.segSize, st.uploaded, st.inflight)
				st.uploaded += LSN(n)
				if uerr != nil && !errors.Is(uerr, ErrNotStreaming) {
					log.Warn("upload the last streamed WAL", "err", uerr)
				}
			}
			return err
		}
	}
}

func isTimeout(err error) bool {
	var to interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &to) && to.Timeout()
}

// upload stores data, the WAL from at on, as increments, one per segment it
// touches, and returns how many of its bytes the store holds and which
// segments that completed.
func (s *Streamer) upload(ctx context.Context, tli uint32, segSize uint64, at LSN, data []byte) (int, []string, error) {
	n := 0
	var done []string
	for n < len(data) {
		deadline, ok := s.uploadDeadline()
		if !ok {
			return n, done, ErrNotStreaming
		}
		pos := at + LSN(n)
		segNo := uint64(pos) / segSize
		from := uint64(pos) - segNo*segSize
		k := int(min(uint64(len(data)-n), segSize-from))
		inc := WALIncrement{Segment: segmentName(tli, segNo, segSize), From: uint32(from), To: uint32(from) + uint32(k)}
		uctx, cancel := context.WithDeadline(ctx, deadline)
		err := s.Archive.PutWALIncrement(uctx, inc, data[n:n+k])
		cancel()
		if err != nil {
			return n, done, err
		}
		n += k
		if uint64(inc.To) == segSize {
			done = append(done, inc.Segment)
		}
		if s.OnUpload != nil {
			s.OnUpload(tli, at+LSN(n))
		}
	}
	return n, done, nil
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
