package backup

import (
	"fmt"
	"strconv"
)

// DefaultWALSegmentSize is PostgreSQL's default WAL segment size (initdb
// --wal-segsize), which pgfleet clusters use.
const DefaultWALSegmentSize = 16 << 20

// walKind is what a file postgres archives is.
type walKind int

const (
	walSegment     walKind = iota // 000000010000000000000003
	walPartial                    // 000000010000000000000003.partial: the last, incomplete segment of a timeline a promotion ended
	walHistory                    // 00000002.history: how timeline 2 branched off its ancestors
	walBackupLabel                // 000000010000000000000003.00000028.backup: written by pg_backup_stop on a primary
)

// walFile is a parsed name of a file postgres archives. For every kind but
// walHistory, log and seg locate its segment: segment number =
// log * (4 GiB / segment size) + seg.
type walFile struct {
	name     string
	kind     walKind
	tli      uint32
	log, seg uint32
}

// parseWALName parses the name of a file postgres archives (%f of
// archive_command and restore_command). Anything else is refused, which also
// keeps names from reaching into other parts of the store.
func parseWALName(name string) (walFile, error) {
	bad := fmt.Errorf("%q is not the name of a WAL segment, partial segment, timeline history or backup history file", name)
	hex8 := func(s string) (uint32, bool) {
		if len(s) != 8 {
			return 0, false
		}
		for _, c := range s {
			if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
				return 0, false
			}
		}
		v, err := strconv.ParseUint(s, 16, 32)
		return uint32(v), err == nil
	}
	f := walFile{name: name}
	switch {
	case len(name) == 16 && name[8:] == ".history":
		f.kind = walHistory
	case len(name) == 24:
		f.kind = walSegment
	case len(name) == 32 && name[24:] == ".partial":
		f.kind = walPartial
	case len(name) == 40 && name[24] == '.' && name[33:] == ".backup":
		f.kind = walBackupLabel
		if _, ok := hex8(name[25:33]); !ok {
			return walFile{}, bad
		}
	default:
		return walFile{}, bad
	}
	var ok bool
	if f.tli, ok = hex8(name[:8]); !ok || f.tli == 0 {
		return walFile{}, bad
	}
	if f.kind == walHistory {
		return f, nil
	}
	if f.log, ok = hex8(name[8:16]); !ok {
		return walFile{}, bad
	}
	if f.seg, ok = hex8(name[16:24]); !ok {
		return walFile{}, bad
	}
	return f, nil
}

// segNo is f's segment number for a segment size.
func (f walFile) segNo(segSize uint64) uint64 {
	return uint64(f.log)*segsPerLog(segSize) + uint64(f.seg)
}

// segPos orders segments without knowing the segment size: the log and
// segment parts of the name, which sort as the segment number does.
func (f walFile) segPos() string { return f.name[8:24] }

func segsPerLog(segSize uint64) uint64 { return 0x100000000 / segSize }

// segmentName is the file name of segment segNo on timeline tli.
func segmentName(tli uint32, segNo, segSize uint64) string {
	return fmt.Sprintf("%08X%08X%08X", tli, segNo/segsPerLog(segSize), segNo%segsPerLog(segSize))
}

// historyName is the name of timeline tli's history file.
func historyName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

// lsnSegNo is the number of the segment holding lsn.
func lsnSegNo(lsn LSN, segSize uint64) uint64 { return uint64(lsn) / segSize }

// validSegSize reports whether n is a WAL segment size PostgreSQL allows: a
// power of two from 1 MiB to 1 GiB.
func validSegSize(n uint64) bool {
	return n >= 1<<20 && n <= 1<<30 && n&(n-1) == 0
}

// NextSegments returns the names of the n WAL segments that follow the
// segment name on its timeline, with segments of segSize bytes: what a
// recovery that asked for name asks for next, unless it switches timeline.
// For a name that is not a segment (a history file, a partial segment) it
// returns nil.
func NextSegments(name string, segSize uint64, n int) []string {
	f, err := parseWALName(name)
	if err != nil || f.kind != walSegment || !validSegSize(segSize) {
		return nil
	}
	no := f.segNo(segSize)
	names := make([]string, 0, n)
	for i := range n {
		names = append(names, segmentName(f.tli, no+uint64(i)+1, segSize))
	}
	return names
}
