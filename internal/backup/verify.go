package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// HistoryEntry is one line of a timeline history file: timeline Timeline
// ended at End, where its child branched off.
type HistoryEntry struct {
	Timeline uint32
	End      LSN
}

// ParseHistory parses a timeline history file (00000003.history):
//
//	1	0/3000060	no recovery target specified
//	2	0/5000000	before 2024-05-01 12:00:00+00
//
// Each line names an ancestor timeline and where it ended; the file of
// timeline N lists all of N's ancestors, oldest first.
func ParseHistory(b []byte) ([]HistoryEntry, error) {
	var out []HistoryEntry
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("history line %d: %q: want TIMELINE LSN [REASON]", i+1, line)
		}
		tli, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("history line %d: timeline %q", i+1, fields[0])
		}
		end, err := ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("history line %d: %w", i+1, err)
		}
		if n := len(out); n > 0 && (uint32(tli) <= out[n-1].Timeline || end < out[n-1].End) {
			return nil, fmt.Errorf("history line %d: timelines and LSNs must increase", i+1)
		}
		out = append(out, HistoryEntry{Timeline: uint32(tli), End: end})
	}
	return out, nil
}

// Gap is a run of missing WAL segments.
type Gap struct {
	First string `json:"first"` // first missing segment
	Last  string `json:"last"`  // last missing segment
	Count uint64 `json:"count"` // segments missing
}

// WALCheck is whether the archive holds the WAL to restore a backup.
type WALCheck struct {
	// Timeline is the timeline recovery would end on: the newest one that
	// descends from the backup's (recovery_target_timeline = latest).
	Timeline uint32 `json:"timeline"`
	From     string `json:"from"`         // first segment needed: the backup's start segment
	To       string `json:"to,omitempty"` // newest archived segment on the way to Timeline; "" if none
	// Gaps are the segments missing between From and To, each run named by
	// its first and last segment. A restore cannot pass the first gap.
	Gaps []Gap `json:"gaps,omitempty"`
	// MissingHistory lists history files of timelines that have archived
	// WAL but no history file, so recovery cannot follow them.
	MissingHistory []string `json:"missing_history,omitempty"`
	// Streamed are the segments taken from streamed increments rather
	// than the archive (StreamedWAL): the newest WAL, not archived yet.
	Streamed []string `json:"streamed,omitempty"`
	// Consistent reports whether the WAL up to the backup's stop LSN is
	// archived without a gap: whether the backup can be restored at all.
	Consistent bool `json:"consistent"`
}

// OK reports whether the chain is complete: no gap, no missing history,
// and the backup restorable.
func (c WALCheck) OK() bool { return len(c.Gaps) == 0 && len(c.MissingHistory) == 0 && c.Consistent }

// CheckWAL checks that the WAL files wal (archived names) hold an unbroken
// chain from backup m's start segment to the newest archived segment,
// following timeline switches the way recovery does: histories holds the
// parsed history file of each timeline after the first that has one.
//
// Recovery to the latest timeline reads each segment from the newest
// timeline of the target's history that had begun by that segment (the
// segment in which a timeline began is read from the new timeline, which has
// a copy of the old one's part). A segment missing there is a gap, even if
// the parent timeline has a segment of that number: that one holds the
// parent's history, not the new timeline's.
func CheckWAL(m Manifest, wal []string, histories map[uint32][]HistoryEntry) WALCheck {
	segSize := m.WALSegmentSize
	if !validSegSize(segSize) {
		segSize = DefaultWALSegmentSize
	}
	check := WALCheck{Timeline: m.Timeline, From: m.StartWAL}
	segs := map[uint32]map[uint64]bool{}
	hasWAL := map[uint32]bool{}
	for _, name := range wal {
		f, err := parseWALName(name)
		if err != nil {
			continue
		}
		if f.kind == walSegment {
			if segs[f.tli] == nil {
				segs[f.tli] = map[uint64]bool{}
			}
			segs[f.tli][f.segNo(segSize)] = true
		}
		if f.kind != walHistory {
			hasWAL[f.tli] = true
		}
	}

	// The target: the newest timeline that descends from the backup's at a
	// point after the backup started.
	path := []pathStep{{m.Timeline, 0}}
	var tlis []uint32
	for t := range hasWAL {
		tlis = append(tlis, t)
	}
	for t := range histories {
		if !hasWAL[t] {
			tlis = append(tlis, t)
		}
	}
	sort.Slice(tlis, func(i, j int) bool { return tlis[i] < tlis[j] })
	for _, t := range tlis {
		if t <= m.Timeline {
			continue
		}
		h, ok := histories[t]
		if !ok {
			check.MissingHistory = append(check.MissingHistory, historyName(t))
			continue
		}
		p, ok := pathTo(t, h, m.Timeline, m.StartLSN, segSize)
		if !ok {
			continue // another branch
		}
		path = p
		check.Timeline = t
	}
	expected := func(seg uint64) uint32 {
		for i := len(path) - 1; i >= 0; i-- {
			if seg >= path[i].beginSeg {
				return path[i].tli
			}
		}
		return path[0].tli
	}

	start := lsnSegNo(m.StartLSN, segSize)
	// The newest archived segment on the path.
	end, haveEnd := uint64(0), false
	for i, s := range path {
		for seg := range segs[s.tli] {
			inRange := seg >= start && seg >= s.beginSeg && (i == len(path)-1 || seg < path[i+1].beginSeg)
			if inRange && (!haveEnd || seg > end) {
				end, haveEnd = seg, true
			}
		}
	}
	stopSeg := start
	if m.StopLSN > 0 {
		stopSeg = max(start, lsnSegNo(m.StopLSN-1, segSize))
	}
	if !haveEnd {
		check.Gaps = append(check.Gaps, Gap{First: segmentName(expected(start), start, segSize), Last: segmentName(expected(stopSeg), stopSeg, segSize), Count: stopSeg - start + 1})
		return check
	}
	check.To = segmentName(expected(end), end, segSize)
	var cur *Gap
	for seg := start; seg <= end; seg++ {
		tli := expected(seg)
		if segs[tli][seg] {
			cur = nil
			continue
		}
		name := segmentName(tli, seg, segSize)
		if cur == nil {
			check.Gaps = append(check.Gaps, Gap{First: name})
			cur = &check.Gaps[len(check.Gaps)-1]
		}
		cur.Last = name
		cur.Count++
	}
	if end < stopSeg {
		// Not archived yet (or lost): the backup is not restorable until
		// it is. Reported as a gap too, since it is one for the backup.
		check.Gaps = append(check.Gaps, Gap{First: segmentName(expected(end+1), end+1, segSize), Last: segmentName(expected(stopSeg), stopSeg, segSize), Count: stopSeg - end})
	}
	check.Consistent = end >= stopSeg && (len(check.Gaps) == 0 || segFromName(check.Gaps[0].First, segSize) > stopSeg)
	return check
}

func segFromName(name string, segSize uint64) uint64 {
	f, _ := parseWALName(name)
	return f.segNo(segSize)
}

// pathStep is a timeline on the way from a backup's timeline to a target,
// and the first segment recovery reads from it.
type pathStep struct {
	tli      uint32
	beginSeg uint64
}

// pathTo returns the timelines recovery walks from timeline from (at LSN
// at) to target, whose history is h; false if target does not descend from
// from after at.
func pathTo(target uint32, h []HistoryEntry, from uint32, at LSN, segSize uint64) ([]pathStep, bool) {
	idx := -1
	for i, e := range h {
		if e.Timeline == from {
			idx = i
		}
	}
	if idx < 0 || h[idx].End <= at {
		return nil, false
	}
	p := []pathStep{{from, 0}}
	for i := idx + 1; i < len(h); i++ {
		p = append(p, pathStep{h[i].Timeline, lsnSegNo(h[i-1].End, segSize)})
	}
	p = append(p, pathStep{target, lsnSegNo(h[len(h)-1].End, segSize)})
	return p, true
}

// BackupReport is what Verify found about one backup.
type BackupReport struct {
	Manifest Manifest `json:"manifest"`
	// DataError is why the backup's data failed its checks; "" when it
	// read back complete and matching its checksums.
	DataError string   `json:"data_error,omitempty"`
	WAL       WALCheck `json:"wal"`
}

// OK reports whether the backup is intact and restorable to the newest
// archived WAL.
func (r BackupReport) OK() bool { return r.DataError == "" && r.WAL.OK() }

// VerifyReport is what Verify found.
type VerifyReport struct {
	Cluster string         `json:"cluster"`
	Backups []BackupReport `json:"backups"`
	// Problems are findings about the archive as a whole, such as a history
	// file that cannot be read.
	Problems []string `json:"problems,omitempty"`
}

// OK reports whether every backup checked is intact and restorable, and
// the archive has no other problem.
func (r VerifyReport) OK() bool {
	for _, b := range r.Backups {
		if !b.OK() {
			return false
		}
	}
	return len(r.Problems) == 0
}

// Summary lists every problem in a sentence each, for people.
func (r VerifyReport) Summary() []string {
	out := append([]string(nil), r.Problems...)
	for _, b := range r.Backups {
		id := b.Manifest.ID
		if b.DataError != "" {
			out = append(out, fmt.Sprintf("backup %s: %s", id, b.DataError))
		}
		for _, h := range b.WAL.MissingHistory {
			out = append(out, fmt.Sprintf("backup %s: history file %s is missing: recovery cannot follow that timeline", id, h))
		}
		for _, g := range b.WAL.Gaps {
			if g.Count == 1 {
				out = append(out, fmt.Sprintf("backup %s: WAL segment %s is missing", id, g.First))
			} else {
				out = append(out, fmt.Sprintf("backup %s: %d WAL segments are missing, %s to %s", id, g.Count, g.First, g.Last))
			}
		}
		if !b.WAL.Consistent {
			out = append(out, fmt.Sprintf("backup %s: the WAL up to its end (%s) is not all archived: it cannot be restored yet", id, b.Manifest.StopLSN))
		}
	}
	return out
}

// Verify checks backup id, or every backup when id is "": it reads each
// backup's data in full, checking the object's trailer and the manifest's
// checksum, and checks the archived WAL from the backup's start to the
// newest archived segment for gaps (CheckWAL). Problems are in the report;
// the error is for failures to check at all (an unreachable store, a
// missing backup).
func (a *Archive) Verify(ctx context.Context, id string) (VerifyReport, error) {
	rep := VerifyReport{Cluster: a.cluster}
	var backups []Manifest
	if id != "" {
		m, err := a.Manifest(ctx, id)
		if err != nil {
			return rep, err
		}
		backups = []Manifest{m}
	} else {
		var err error
		if backups, err = a.ListBackups(ctx); err != nil {
			return rep, err
		}
	}
	wal, err := a.ListWAL(ctx)
	if err != nil {
		return rep, err
	}
	histories := map[uint32][]HistoryEntry{}
	for _, name := range wal {
		f, _ := parseWALName(name)
		if f.kind != walHistory {
			continue
		}
		b, err := a.readWALFile(ctx, name)
		if err == nil {
			histories[f.tli], err = ParseHistory(b)
		}
		if err != nil {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			rep.Problems = append(rep.Problems, fmt.Sprintf("history file %s: %v", name, err))
			delete(histories, f.tli)
		}
	}
	// Segments the archive lacks but streamed increments hold are read from
	// those by a restore (partial.go): not a gap. The stream cuts
	// segments of pgfleet's size, DefaultWALSegmentSize.
	incs, err := a.ListWALIncrements(ctx)
	if err != nil {
		return rep, err
	}
	streamed := StreamedWAL(incs, wal, DefaultWALSegmentSize)
	for _, m := range backups {
		br := BackupReport{Manifest: m, WAL: CheckWAL(m, append(wal[:len(wal):len(wal)], streamed...), histories)}
		br.WAL.Streamed = streamed
		br.DataError = a.checkBackupData(ctx, m)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		rep.Backups = append(rep.Backups, br)
	}
	return rep, nil
}

// checkBackupData reads the data of backup m back and returns what is wrong
// with it, or "".
func (a *Archive) checkBackupData(ctx context.Context, m Manifest) string {
	type object struct {
		key  string
		sum  string
		size int64
	}
	objs := []object{{a.backupDataKey(m.ID), m.SHA256, m.RawBytes}}
	if m.Version != 1 {
		objs = objs[:0]
		for i, p := range m.Parts {
			objs = append(objs, object{a.partKey(m.ID, i), p.SHA256, p.RawBytes})
		}
	}
	for _, o := range objs {
		sum, size, err := a.objectSum(ctx, o.key)
		switch {
		case errors.Is(err, ErrNotFound):
			return fmt.Sprintf("its data is missing from the store (%s)", o.key)
		case err != nil:
			return err.Error()
		case sum != o.sum || size != o.size:
			return fmt.Sprintf("its data (%s: sha256 %s, %d bytes) does not match its manifest (sha256 %s, %d bytes)", o.key, sum, size, o.sum, o.size)
		}
	}
	return ""
}
