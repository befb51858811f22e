package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// Streaming WAL to the store. archive_command archives a segment once it is
// full, or archive_timeout cuts it short, so a region lost with its primary
// would take up to that much of the acknowledged commits with it. The
// primary's agent therefore also streams its own postgres' WAL over the
// replication protocol and uploads it as increments at most every
// backup.DefaultStreamEvery (backup.Streamer), and a restore reads a
// segment the archive lacks from them (fetchStreamed).
//
// The primary's own agent streams, rather than a standby's: it follows every
// failover and switchover (each new primary starts its own stream, on its
// new timeline), it needs no standby, and on the primary it costs one more
// walsender, which reads WAL postgres just wrote from the page cache. The
// stream lives exactly as long as the member's term as primary
// (servePrimary), and uploads only while the member surely holds the leader
// key, each upload ending by the fence deadline (leaderHold.uploadUntil): a
// primary that lost the key adds nothing to the store after that deadline,
// before which no other member can have taken over.

// startWALStream starts streaming the member's WAL to its cluster's
// archive, when the cluster has backups, and returns what stops it and
// waits for it to end.
func (s *supervisor) startWALStream(ctx context.Context) (stop func()) {
	h := s.hold
	if s.cluster.Backup == nil || h == nil {
		return func() {}
	}
	a, err := s.archive(ctx)
	if err != nil {
		s.log.Warn("stream WAL to the store", "err", err)
		return func() {}
	}
	st := &backup.Streamer{
		Source:      postgres.ConnInfo{Host: s.host.Addr, Port: s.spec.Port, User: fleet.ReplicationUser, Password: s.secrets.ReplicationPassword, Database: "postgres", RootCert: s.inst.RootCertPath()},
		Archive:     a,
		UploadUntil: h.uploadUntil,
		Log:         s.log.With("component", "walstream"),
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := st.Run(ctx); errors.Is(err, backup.ErrNotStreaming) {
			s.log.Info("WAL stream to the store stopped: the member no longer surely holds the leader key")
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// uploadUntil returns until when the member surely still holds the leader
// key: while the hold is neither lost nor given up, its fence deadline,
// before which the store cannot have expired the lease; otherwise the zero
// time.
func (h *leaderHold) uploadUntil() time.Time {
	select {
	case <-h.lost:
		return time.Time{}
	case <-h.done:
		return time.Time{}
	default:
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.deadline
}

// fetchStreamed is a restore's fetch of a segment the archive does not
// hold: assembled from the increments its primary streamed, padded with
// zeros past the last streamed byte, into a new file at path. Only a
// restore gets it (a fetch from another cluster's archive): a live standby
// streams from its primary instead, and must not replay a segment that
// may still grow. A segment the archive took over while it was read is
// fetched from the archive.
func (w *walServer) fetchStreamed(ctx context.Context, t walTarget, name, path string) error {
	var end uint32
	err := intoSpool(ctx, t, path, func(a *backup.Archive, f io.Writer) (err error) {
		end, err = a.ReadStreamedWAL(ctx, name, backup.DefaultWALSegmentSize, f)
		return err
	})
	if errors.Is(err, backup.ErrNotFound) && !errors.Is(err, backup.ErrNotStreamed) {
		if ferr := w.fetchInto(ctx, t, name, path); ferr == nil || !errors.Is(ferr, backup.ErrNotFound) {
			return ferr
		}
	}
	if err != nil {
		return err
	}
	w.log.Info("restored a segment from streamed WAL", "archive", t.archive, "name", name, "streamed", fmt.Sprintf("%d of %d bytes", end, backup.DefaultWALSegmentSize))
	return nil
}
