package agent

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/ha"
	"github.com/pgfleet/pgfleet/internal/store"
)

// diskUsage is the state of the filesystem that holds a member's data.
type diskUsage struct {
	free int64 // bytes postgres can still use (not the root reserve)
	used int64
	size int64
}

// diskSpace measures the filesystem of the member's data directory, as
// statfs tells, which costs nothing, unlike walking the directory. Before
// the data directory exists the member's directory stands in: it is on the
// same filesystem.
func (s *supervisor) diskSpace() (diskUsage, error) {
	dir := s.pgdata()
	if _, err := os.Stat(dir); err != nil {
		dir = s.dir
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return diskUsage{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	bs := int64(fs.Bsize)
	return diskUsage{free: int64(fs.Bavail) * bs, used: int64(fs.Blocks-fs.Bfree) * bs, size: int64(fs.Blocks) * bs}, nil
}

// roundFree rounds free space down to a thousandth of the disk (at least
// 1 MiB): plenty for the disk guard, and an idle member's status, whose
// free space moves by a few kilobytes with every log line, stays the same
// and is not written again (statusHeartbeat).
func roundFree(free, size int64) int64 {
	g := max(size/1000, 1<<20)
	return free / g * g
}

// guarded reports whether this member, as a primary, takes no writes
// because of the disk guard.
func (s *supervisor) guarded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readOnly != ""
}

// guardDisk runs the disk guard on the primary (ha.DiskGuard): once a
// member's data filesystem is nearly full, every new transaction becomes
// read-only, by configuration and reload, so that no member's postgres
// reaches a PANIC for want of room for WAL; once every member has room
// again, writes resume. Each change is an event; the reason stays in the
// primary's status for as long as it holds.
func (s *supervisor) guardDisk(ctx context.Context, c store.ClusterState) {
	if s.written == nil || s.inst.Pid() == 0 {
		return
	}
	active := s.written.ReadOnly
	v := ha.DiskGuard(ha.DiskInput{Guard: c.Spec.DiskGuardPercent(), Active: active, Members: c.Members, Status: c.Status})
	s.mu.Lock()
	s.readOnly = v.Reason
	s.mu.Unlock()
	if v.ReadOnly == active {
		return
	}
	next := *s.written
	next.ReadOnly = v.ReadOnly
	if err := s.configure(next); err != nil {
		s.log.Warn("disk guard: write the configuration", "read_only", v.ReadOnly, "err", err)
		return
	}
	if err := s.inst.Reload(); err != nil {
		s.log.Warn("disk guard: reload postgres", "read_only", v.ReadOnly, "err", err)
		return
	}
	if v.ReadOnly {
		s.event(ctx, "read-only", "cluster "+c.Spec.Name+" takes no writes: "+v.Reason)
	} else {
		s.event(ctx, "read-write", fmt.Sprintf("cluster %s takes writes again: every member has more than %d %% of its disk free", c.Spec.Name, c.Spec.DiskGuardPercent()+fleet.DiskGuardResume))
	}
	s.publishSoon()
}
