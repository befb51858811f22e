package fleet

import (
	"fmt"
	"strconv"
	"strings"
)

// The disk guard stops a cluster's writes before a member's disk fills:
// postgres that cannot write WAL stops with a PANIC and stays down until
// someone frees space by hand, while a read-only cluster keeps serving
// reads and takes writes again by itself once there is room.
const (
	// DefaultDiskGuard is the free space, in percent of a member's data
	// filesystem, below which a cluster stops taking writes.
	DefaultDiskGuard = 10
	// MaxDiskGuard bounds the threshold: above it a cluster would stop
	// writing with half its disk still free.
	MaxDiskGuard = 50
	// DiskGuardOff, as ClusterSpec.DiskGuard, turns the guard off.
	DiskGuardOff = -1
	// DiskGuardResume is how many percentage points above the threshold
	// every member must be before writes resume, so that a cluster right at
	// the threshold does not flip between read-only and read-write with
	// every checkpoint.
	DiskGuardResume = 2
)

// DiskGuardPercent is the threshold in effect: 0 when the guard is off.
func (s ClusterSpec) DiskGuardPercent() int {
	switch {
	case s.DiskGuard == DiskGuardOff:
		return 0
	case s.DiskGuard == 0:
		return DefaultDiskGuard
	}
	return s.DiskGuard
}

// ValidateDiskGuard checks a stored or requested threshold.
func ValidateDiskGuard(pct int) error {
	if pct == DiskGuardOff || (pct >= 0 && pct <= MaxDiskGuard) {
		return nil
	}
	return fmt.Errorf("disk guard %d %%: give a percentage of free space from 1 to %d, or off", pct, MaxDiskGuard)
}

// ParseDiskGuard reads the --disk-guard flag: a percentage ("10" or
// "10%") or "off".
func ParseDiskGuard(s string) (int, error) {
	v := strings.TrimSpace(s)
	if strings.EqualFold(v, "off") {
		return DiskGuardOff, nil
	}
	n, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
	if err != nil || n < 1 || n > MaxDiskGuard {
		return 0, fmt.Errorf("disk guard %q: give a percentage of free space from 1 to %d (e.g. %d), or off", s, MaxDiskGuard, DefaultDiskGuard)
	}
	return n, nil
}

// FormatDiskGuard writes a threshold for people: "10 %" or "off".
func FormatDiskGuard(s ClusterSpec) string {
	if p := s.DiskGuardPercent(); p > 0 {
		return fmt.Sprintf("%d %%", p)
	}
	return "off"
}
