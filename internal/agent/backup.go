package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/store"
)

// backupCheckEvery is how often a primary looks at its backups: whether the
// schedule wants a new one, and whether archiving fails.
const backupCheckEvery = 30 * time.Second

// keyFile is where earlier versions kept a member's copy of its cluster's
// backup key, for wal-push and wal-fetch run by postgres.
func (s *supervisor) keyFile() string { return filepath.Join(s.dir, "backup.key") }

// writeKey makes sure no backup key is on disk for the postgres OS user to
// read: WAL goes through the agent's socket (walserver.go), and the agent
// keeps the key in memory, from the state store. A key file an earlier
// version left beside the data directory, which that user owned, is removed.
func (s *supervisor) writeKey() error {
	for _, p := range []string{s.keyFile(), s.keyFile() + ".tmp"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove the backup key file of an earlier version: %w", err)
		} else if err == nil {
			s.log.Info("removed the backup key file of an earlier version: the agent archives WAL itself now", "path", p)
		}
	}
	return nil
}

// walSocket is the agent's WAL socket. Member directories are
// <data-dir>/members/<id> (startSupervisor).
func (s *supervisor) walSocket() string {
	return WALSocketPath(filepath.Dir(filepath.Dir(s.dir)))
}

// archiveSettings are the archiving settings of a cluster with backups:
// every member archives when it is primary (archive_mode = on) and can
// fetch WAL it missed from the archive (restore_command), so a standby that
// fell too far behind catches up from the store rather than be re-cloned.
// archive_timeout bounds how long a commit may wait to be archived, which
// bounds what a lost region takes with it. Both commands go through the
// agent's WAL socket, which holds the store's credentials and the key.
func (s *supervisor) archiveSettings() map[string]string {
	b := s.cluster.Backup
	if b == nil {
		return nil
	}
	return map[string]string{
		"archive_mode":    "on",
		"archive_command": backup.AgentArchiveCommand(s.exe, s.walSocket(), s.spec.Cluster, s.spec.ID, archivedMarksDir(s.walSocket(), s.spec.ID)),
		"archive_timeout": fmt.Sprintf("%ds", int(b.ArchiveTimeout().Seconds())),
		"restore_command": backup.AgentRestoreCommand(s.exe, s.walSocket(), s.spec.Cluster, s.spec.ID, ""),
	}
}

func (s *supervisor) archive(ctx context.Context) (*backup.Archive, error) {
	b := s.cluster.Backup
	if b == nil {
		return nil, errors.New("the cluster has no backups configured")
	}
	key := ""
	if b.Encrypted {
		key = s.secrets.BackupKey
	}
	return backup.OpenArchiveKey(ctx, b.Store, s.spec.Cluster, key)
}

// serveBackupRequest starts the base backup the store asks this member for,
// unless one runs already.
func (s *supervisor) serveBackupRequest(ctx context.Context, c store.ClusterState) {
	req := c.Backup
	if req == nil || req.Member != s.spec.ID || c.Spec.Backup == nil || !s.backingUp.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.backingUp.Store(false)
		s.runBackup(context.WithoutCancel(ctx), *req)
	}()
}

// runBackup streams a base backup of this member's postgres into the store:
// pg_basebackup's tar goes through zstd (and encryption) to the store
// without touching the local disk, and the manifest is written last. Then
// the retention policy drops what the window no longer needs.
func (s *supervisor) runBackup(ctx context.Context, req fleet.BackupRequest) {
	defer func() {
		if err := s.store.FinishBackup(ctx, s.spec.Cluster, req.ID); err != nil {
			s.log.Warn("clear backup request", "err", err)
		}
	}()
	start := time.Now()
	m, err := s.takeBackup(ctx, req)
	if err != nil {
		s.event(ctx, "backup-failed", fmt.Sprintf("backup %s of %s on %s failed: %v", req.ID, s.spec.Cluster, s.spec.ID, err))
		return
	}
	s.event(ctx, "backup", fmt.Sprintf("backup %s taken on %s in %s: %s, %s stored (%s to %s, timeline %d)",
		m.ID, s.spec.ID, time.Since(start).Round(time.Millisecond), fleet.FormatBytes(m.RawBytes), fleet.FormatBytes(m.StoredBytes), m.StartLSN, m.StopLSN, m.Timeline))
	a, err := s.archive(ctx)
	if err != nil {
		return
	}
	b := s.cluster.Backup
	plan, err := a.ApplyRetention(ctx, backup.Policy{Window: b.Window(), MinBackups: b.MinBackups()}, time.Now())
	if err != nil {
		s.log.Warn("apply backup retention", "err", err)
		return
	}
	var dropped []string
	if n := len(plan.DeleteBackups); n > 0 {
		dropped = append(dropped, fmt.Sprintf("%d backup(s) (%s)", n, strings.Join(plan.DeleteBackups, ", ")))
	}
	if n := len(plan.DeleteWAL); n > 0 {
		dropped = append(dropped, fmt.Sprintf("%d WAL file(s)", n))
	}
	if len(dropped) > 0 {
		s.event(ctx, "retention", fmt.Sprintf("retention dropped %s no longer needed for the %s window", strings.Join(dropped, " and "), b.Window()))
	}
}

// A base backup may take hours, but never forever: backupMax bounds it, and
// one that moves no byte for backupStall (a hung upload, a stuck
// pg_basebackup) is cancelled, so the next scheduled backup can run.
const (
	backupMax   = 24 * time.Hour
	backupStall = 5 * time.Minute
)

var (
	errBackupTooLong = fmt.Errorf("the backup took longer than %s", backupMax)
	errBackupStalled = fmt.Errorf("the backup moved no data for %s", backupStall)
)

// stallGuard cancels ctx with errBackupStalled when moved has not grown for
// stall.
func stallGuard(ctx context.Context, cancel context.CancelCauseFunc, moved *atomic.Int64, stall time.Duration) {
	check := time.NewTicker(min(stall/10, 10*time.Second))
	defer check.Stop()
	last, since := moved.Load(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-check.C:
		}
		if n := moved.Load(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > stall {
			cancel(errBackupStalled)
			return
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (s *supervisor) takeBackup(ctx context.Context, req fleet.BackupRequest) (backup.Manifest, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx, cancelMax := context.WithTimeoutCause(ctx, backupMax, errBackupTooLong)
	defer cancelMax()
	var moved atomic.Int64
	go stallGuard(ctx, cancel, &moved, backupStall)
	m, err := s.streamBackup(ctx, req, &moved)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = fmt.Errorf("%w: %w", cause, err)
	}
	return m, err
}

func (s *supervisor) streamBackup(ctx context.Context, req fleet.BackupRequest, moved *atomic.Int64) (backup.Manifest, error) {
	a, err := s.archive(ctx)
	if err != nil {
		return backup.Manifest{}, err
	}
	var segSize uint64
	err = s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
		var v string
		if err := conn.QueryRow(ctx, "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'").Scan(&v); err != nil {
			return err
		}
		_, err := fmt.Sscan(v, &segSize)
		return err
	})
	if err != nil {
		return backup.Manifest{}, fmt.Errorf("read wal_segment_size: %w", err)
	}
	src := postgres.ConnInfo{Host: s.host.Addr, Port: s.spec.Port, User: fleet.ReplicationUser, Password: s.secrets.ReplicationPassword, Database: "postgres", RootCert: s.inst.RootCertPath()}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := s.inst.StreamBackup(ctx, src, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	m, err := a.PutBackup(ctx, req.ID, countingReader{r: pr, n: moved}, backup.BackupInfo{
		Member: s.spec.ID, StartTime: time.Now(), WALSegmentSize: segSize,
		Wait: func() error { return <-done },
	})
	pr.CloseWithError(err)
	return m, err
}

// scheduleBackups is the primary's part of the backup schedule: when the
// newest complete backup is older than the cluster's interval (or there is
// none), it asks a member for one, a streaming standby if there is one so
// the primary is not loaded. It also clears a request whose member is gone.
func (s *supervisor) scheduleBackups(ctx context.Context, c store.ClusterState) {
	b := c.Spec.Backup
	if b == nil {
		return
	}
	if req := c.Backup; req != nil {
		if _, ok := c.Status[req.Member]; !ok && time.Since(req.Requested) > time.Minute {
			s.event(ctx, "backup-failed", fmt.Sprintf("backup %s: %s is gone; request dropped", req.ID, req.Member))
			s.store.FinishBackup(ctx, s.spec.Cluster, req.ID)
		}
		return
	}
	a, err := s.archive(ctx)
	if err != nil {
		s.log.Warn("backup schedule", "err", err)
		return
	}
	list, err := a.ListBackups(ctx)
	if err != nil {
		s.log.Warn("backup schedule: list backups", "err", err)
		return
	}
	if n := len(list); n > 0 && time.Since(list[n-1].StopTime) < b.Every() {
		return
	}
	req := fleet.BackupRequest{ID: backup.NewBackupID(time.Now()), Member: c.BackupMember(), Requested: time.Now().UTC(), Scheduled: true}
	if err := s.store.RequestBackup(ctx, s.spec.Cluster, req); err != nil {
		s.log.Warn("backup schedule: request", "err", err)
	}
}

// watchArchiving reports, as an event, when archiving starts failing and
// when it recovers: WAL then piles up in pg_wal instead of reaching the
// store, and no point-in-time restore can reach past the last archived
// segment.
func (s *supervisor) watchArchiving(ctx context.Context) {
	if s.cluster.Backup == nil {
		return
	}
	var st postgres.ArchiverStatus
	err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) (err error) {
		st, err = postgres.QueryArchiver(ctx, conn)
		return err
	})
	if err != nil {
		return
	}
	failing := st.Failing()
	if failing && !s.archiveFailing {
		s.event(ctx, "archive-failing", fmt.Sprintf("%s cannot archive WAL to %s: %s failed (%d failures); WAL is kept in pg_wal (%s) until the store takes it",
			s.spec.ID, s.cluster.Backup.Store, st.LastFailedWAL, st.FailedCount, fleet.FormatBytes(st.PendingBytes)))
	} else if !failing && s.archiveFailing {
		s.event(ctx, "archive-ok", fmt.Sprintf("%s archives WAL again (last %s)", s.spec.ID, st.LastArchivedWAL))
	}
	s.archiveFailing = failing
}

// restore builds the first primary of a cluster made by `pgfleet restore`:
// the chosen base backup of the source cluster is fetched into the data
// directory, postgres replays the source's archived WAL up to the target
// and pauses there (or, for the latest state, runs out of WAL), and only
// then does the member take the leader key and promote. A restore that fails
// leaves no data behind, so the next round starts it over; the cluster is
// marked initialized only once its first primary runs.
func (s *supervisor) restore(ctx context.Context) error {
	s.forgetArchived()
	r := s.cluster.Restore
	key := ""
	if r.Encrypted {
		key = s.secrets.BackupKey
	}
	a, err := backup.OpenArchiveKey(ctx, r.Store, r.From, key)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	target, err := backup.NewTarget(r.Time, r.LSN, r.Latest)
	if err != nil {
		return fmt.Errorf("restore target: %w", err)
	}
	rec, err := backup.RecoverySettings(target, backup.AgentRestoreCommand(s.exe, s.walSocket(), s.spec.Cluster, s.spec.ID, r.From))
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if !r.Latest {
		// Stop at the target without promoting: the member promotes itself
		// once it holds the leader key.
		rec["recovery_target_action"] = "pause"
	}
	why := fmt.Sprintf("restoring backup %s of %s to %s", r.BackupID, r.From, target)
	s.event(ctx, "restore", fmt.Sprintf("%s: %s", s.spec.ID, why))
	s.set(fleet.StateInitializing, fleet.RolePrimary, why)
	start := time.Now()
	err = s.restoreData(ctx, a, rec)
	if err != nil && r.Time != nil && strings.Contains(err.Error(), recoveryTargetMissed) {
		// Nothing in the archive was committed at or after the target: every
		// archived commit is before it, so the target is the archive's end.
		s.stopPostgres()
		os.RemoveAll(s.pgdata())
		s.event(ctx, "restore", fmt.Sprintf("%s: the archive of %s ends before %s; restoring everything archived", s.spec.ID, r.From, target))
		delete(rec, "recovery_target_time")
		delete(rec, "recovery_target_inclusive")
		delete(rec, "recovery_target_action")
		err = s.restoreData(ctx, a, rec)
	}
	if err != nil {
		s.stopPostgres()
		if rerr := os.RemoveAll(s.pgdata()); rerr != nil {
			s.log.Error("remove a failed restore", "err", rerr)
		}
		return fmt.Errorf("restore %s of %s: %w", r.BackupID, r.From, err)
	}
	ok, err := s.takeLeader(ctx)
	if err != nil {
		return fmt.Errorf("take leader key after restore: %w", err)
	}
	if !ok {
		return errors.New("take leader key after restore: another member holds it")
	}
	if err := s.inst.Promote(ctx, s.superuser()); err != nil {
		return err
	}
	if err := s.configure(s.settings(nil, false)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	return s.servePrimary(ctx, "restored", fmt.Sprintf("%s restored from backup %s of %s to %s in %s; primary on %s (%s)",
		s.spec.ID, r.BackupID, r.From, target, time.Since(start).Round(time.Millisecond), s.host.Name, s.addr()))
}

// recoveryTargetMissed is what postgres says when the WAL ends before a
// record reaches the recovery target (xlogrecovery.c).
const recoveryTargetMissed = "recovery ended before configured recovery target was reached"

// restoreData fetches the backup and replays WAL until postgres reaches the
// target (paused) or the end of the archive (promoted).
func (s *supervisor) restoreData(ctx context.Context, a *backup.Archive, rec map[string]string) error {
	r := s.cluster.Restore
	os.RemoveAll(s.pgdata() + ".restoring") // what an interrupted attempt left
	if _, err := a.GetBackup(ctx, r.BackupID, s.pgdata(), &backup.Owner{UID: s.osUser.UID, GID: s.osUser.GID}); err != nil {
		return err
	}
	// The new cluster's own archiving is on from the start (archive_mode
	// needs a restart to change): WAL replayed from the source's archive is
	// not archived again, and from the promotion on the new timeline goes to
	// this cluster's archive. Recovery's restore_command, written after,
	// reads the source's.
	set := s.settings(nil, false)
	set.Recovery = rec
	if err := s.configure(set); err != nil {
		return fmt.Errorf("configure recovery: %w", err)
	}
	if err := s.start(ctx); err != nil {
		return err
	}
	for {
		var inRecovery, paused bool
		err := s.ctl.do(ctx, s.superuser(), func(conn *pgx.Conn) error {
			return conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'").Scan(&inRecovery, &paused)
		})
		switch {
		case err == nil && (!inRecovery || paused):
			return nil
		case err != nil:
			s.log.Debug("restore progress", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.inst.Done():
			return fmt.Errorf("postgres exited during recovery: %v", s.inst.ExitErr())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// prepareBackupStore checks the fleet's default backup store and records
// it for the fleet. A local directory store is the agent's alone (0700):
// the agent archives WAL itself, and the postgres OS user, which earlier
// versions gave the directory to, must not read or change backups.
func (a *Agent) prepareBackupStore(ctx context.Context) error {
	u := a.cfg.BackupStore
	if dir, ok := strings.CutPrefix(u, "file://"); ok && filepath.IsAbs(dir) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("--backup-store %s: %w", u, err)
		}
		if err := a.reclaimStoreDir(dir); err != nil {
			return fmt.Errorf("--backup-store %s: %w", u, err)
		}
	}
	if _, err := backup.OpenStore(ctx, u); err != nil {
		return fmt.Errorf("--backup-store: %w", err)
	}
	return a.store.SetDefaultBackupStore(ctx, u)
}

// reclaimStoreDir takes a store directory that an earlier version handed to
// the postgres OS user back for the agent, and closes it to others: what
// is inside stays as it is, but that user can no longer reach it.
func (a *Agent) reclaimStoreDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != a.osUser.UID || a.osUser.UID == os.Geteuid() {
		return nil
	}
	if err := os.Chown(dir, os.Geteuid(), os.Getegid()); err != nil {
		return fmt.Errorf("take it back from %s: %w", a.osUser.Name, err)
	}
	if err := os.Chmod(dir, fi.Mode().Perm()&0o700); err != nil {
		return err
	}
	a.log.Info("took the backup store directory back from the postgres OS user", "dir", dir, "user", a.osUser.Name)
	return nil
}
