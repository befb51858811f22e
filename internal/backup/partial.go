package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Streamed WAL. The archive gets a WAL segment once postgres has filled it
// (or archive_timeout cut it short), so what a lost primary takes with it is
// up to a segment's worth of commits. The primary's agent therefore also
// streams the WAL as it is flushed (Streamer) and stores it in increments:
// each a byte range of one segment, an object of its own in the object
// format, named by timeline, segment and range:
//
//	<cluster>/wal-stream/<timeline>/<segment>.<from>-<to>.zst   e.g. demo/wal-stream/00000001/000000010000000000000003.00000000-0001A2F0.zst
//
// from and to are byte offsets in the segment (to exclusive), 8 hex digits.
// Objects are never rewritten, so a growing segment is a series of
// increments, each holding only WAL the ones before did not: what is
// uploaded is what postgres wrote, once.
//
// A restore (and only a restore: a live standby streams from its primary)
// that asks for a segment the archive does not hold gets it assembled from
// its increments (ReadStreamedWAL): they must cover the segment from its
// first byte without a hole, overlapping bytes must agree, each object is
// checked as every object is, and the segment is padded with zeros past the
// last streamed byte, so recovery stops at the last whole record, as with a
// renamed .partial of pg_receivewal. Once the archive holds a segment, its
// increments are dropped (by the streamer, and by ApplyRetention).

// ErrNotStreamed is wrapped into ReadStreamedWAL's error when no
// increment covers the segment's first byte; it wraps ErrNotFound.
var ErrNotStreamed = fmt.Errorf("no streamed WAL: %w", ErrNotFound)

// WALIncrement is a byte range of one WAL segment, as streamed.
type WALIncrement struct {
	Segment  string // the segment's name, e.g. 000000010000000000000003
	From, To uint32 // offsets in the segment; To is exclusive
}

func (i WALIncrement) String() string { return fmt.Sprintf("%s.%08X-%08X", i.Segment, i.From, i.To) }

// Timeline is the timeline of the increment's segment.
func (i WALIncrement) Timeline() uint32 {
	f, _ := parseWALName(i.Segment)
	return f.tli
}

func (a *Archive) streamPrefix() string { return a.cluster + "/wal-stream/" }

// segmentStreamPrefix is what the keys of segment's increments start with.
func (a *Archive) segmentStreamPrefix(segment string) string {
	return a.streamPrefix() + segment[:8] + "/" + segment + "."
}

func (a *Archive) incrementKey(i WALIncrement) string {
	return a.streamPrefix() + i.Segment[:8] + "/" + i.String() + ".zst"
}

// parseIncrementKey returns the increment a key of the archive names.
func (a *Archive) parseIncrementKey(key string) (WALIncrement, bool) {
	rest, ok := strings.CutPrefix(key, a.streamPrefix())
	if !ok {
		return WALIncrement{}, false
	}
	dir, file, ok := strings.Cut(rest, "/")
	name, zst := strings.CutSuffix(file, ".zst")
	if !ok || !zst || len(name) != 24+1+8+1+8 || name[24] != '.' || name[33] != '-' {
		return WALIncrement{}, false
	}
	f, err := parseWALName(name[:24])
	if err != nil || f.kind != walSegment || dir != name[:8] {
		return WALIncrement{}, false
	}
	from, err1 := strconv.ParseUint(name[25:33], 16, 32)
	to, err2 := strconv.ParseUint(name[34:], 16, 32)
	if err1 != nil || err2 != nil || from >= to || strings.ToUpper(name[25:]) != name[25:] {
		return WALIncrement{}, false
	}
	return WALIncrement{Segment: name[:24], From: uint32(from), To: uint32(to)}, true
}

// PutWALIncrement stores data as the increment i, durably, create-only.
// An increment already stored with the same content is success (an upload
// retried after an answer was lost); a different one is an error wrapping
// ErrConflict.
func (a *Archive) PutWALIncrement(ctx context.Context, i WALIncrement, data []byte) error {
	f, err := parseWALName(i.Segment)
	if err != nil || f.kind != walSegment {
		return fmt.Errorf("stream WAL: %q is not a segment name", i.Segment)
	}
	if int(i.To-i.From) != len(data) || i.From >= i.To || i.To > 1<<30 {
		return fmt.Errorf("stream WAL %s: %d bytes do not fill the range", i, len(data))
	}
	var buf bytes.Buffer
	w, err := newObjectWriterLevel(&buf, a.key, 1, zstd.SpeedFastest)
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	key := a.incrementKey(i)
	err = a.store.Put(ctx, key, bytes.NewReader(buf.Bytes()), int64(buf.Len()), PutOptions{CreateOnly: true})
	if !errors.Is(err, ErrExists) {
		if err != nil {
			return fmt.Errorf("stream WAL %s: %w", i, err)
		}
		return nil
	}
	have, _, err := a.objectSum(ctx, key)
	if err != nil {
		return fmt.Errorf("stream WAL %s: already stored, and reading it back failed: %w", i, err)
	}
	if have != w.Sum() {
		return fmt.Errorf("stream WAL %s: %w", i, ErrConflict)
	}
	return nil
}

// ListWALIncrements returns every streamed increment in the archive.
func (a *Archive) ListWALIncrements(ctx context.Context) ([]WALIncrement, error) {
	return a.listIncrements(ctx, a.streamPrefix())
}

// SegmentIncrements returns the streamed increments of one segment.
func (a *Archive) SegmentIncrements(ctx context.Context, segment string) ([]WALIncrement, error) {
	if f, err := parseWALName(segment); err != nil || f.kind != walSegment {
		return nil, fmt.Errorf("%q is not a WAL segment name", segment)
	}
	return a.listIncrements(ctx, a.segmentStreamPrefix(segment))
}

func (a *Archive) listIncrements(ctx context.Context, prefix string) ([]WALIncrement, error) {
	objs, err := a.store.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []WALIncrement
	for _, o := range objs {
		if i, ok := a.parseIncrementKey(o.Key); ok {
			out = append(out, i)
		}
	}
	return out, nil
}

// DeleteWALIncrements removes increments from the store.
func (a *Archive) DeleteWALIncrements(ctx context.Context, incs []WALIncrement) error {
	for _, i := range incs {
		if err := a.store.Delete(ctx, a.incrementKey(i)); err != nil {
			return fmt.Errorf("delete streamed WAL %s: %w", i, err)
		}
	}
	return nil
}

// DropStreamedIfArchived deletes the increments of segment once the archive
// holds the segment itself, and reports whether it does.
func (a *Archive) DropStreamedIfArchived(ctx context.Context, segment string) (bool, error) {
	f, err := parseWALName(segment)
	if err != nil || f.kind != walSegment {
		return false, fmt.Errorf("%q is not a WAL segment name", segment)
	}
	if _, err := a.store.Stat(ctx, a.walKey(f)); errors.Is(err, ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	incs, err := a.SegmentIncrements(ctx, segment)
	if err != nil {
		return true, err
	}
	return true, a.DeleteWALIncrements(ctx, incs)
}

// Assembly is how a segment's increments put it together.
type Assembly struct {
	Segment string
	// Parts are the increments read, in order: each starts at or before
	// the end of the one before, and ends after it.
	Parts []WALIncrement
	// End is how far from the segment's start the parts cover without a
	// hole; 0 when no increment starts at the segment's first byte.
	End uint32
}

// AssembleIncrements decides which of a segment's increments cover it from
// its first byte, and how far. Increments of other segments are ignored.
// Overlaps are allowed (a stream restarted from what the store already
// held): the parts are read in order, and only bytes past the end so far
// are new.
func AssembleIncrements(segment string, incs []WALIncrement) Assembly {
	var own []WALIncrement
	for _, i := range incs {
		if i.Segment == segment && i.From < i.To {
			own = append(own, i)
		}
	}
	// By start, the longest first among those starting together.
	sort.Slice(own, func(x, y int) bool {
		if own[x].From != own[y].From {
			return own[x].From < own[y].From
		}
		return own[x].To > own[y].To
	})
	as := Assembly{Segment: segment}
	for {
		// Of the increments starting within what is covered, the one
		// reaching furthest.
		best := -1
		for k, i := range own {
			if i.From > as.End {
				break
			}
			if i.To > as.End && (best < 0 || i.To > own[best].To) {
				best = k
			}
		}
		if best < 0 {
			return as
		}
		as.Parts = append(as.Parts, own[best])
		as.End = own[best].To
	}
}

// ReadStreamedWAL writes the segment name, assembled from its streamed
// increments and padded with zeros to segSize, to dst, and returns how many
// of its bytes were streamed. No increment from the segment's first byte is
// an error wrapping ErrNotStreamed; an increment that vanished while it was
// read (the archive took the segment over meanwhile: fetch it from there)
// one wrapping ErrNotFound. If a newer timeline's history says that the segment's timeline
// ended within it, the segment is cut there: what the old timeline's
// primary wrote after the branch is not on the timeline a restore follows.
// The caller must discard what was written to dst on an error.
func (a *Archive) ReadStreamedWAL(ctx context.Context, name string, segSize uint64, dst io.Writer) (uint32, error) {
	f, err := parseWALName(name)
	if err != nil {
		return 0, err
	}
	if f.kind != walSegment || !validSegSize(segSize) {
		return 0, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	incs, err := a.SegmentIncrements(ctx, name)
	if err != nil {
		return 0, err
	}
	as := AssembleIncrements(name, incs)
	if as.End == 0 {
		return 0, fmt.Errorf("%s: %w", name, ErrNotStreamed)
	}
	if uint64(as.End) > segSize {
		return 0, fmt.Errorf("streamed WAL %s: increments reach past the segment's %d bytes: %w", name, segSize, ErrCorrupt)
	}
	end, err := a.branchCut(ctx, f, segSize, as.End)
	if err != nil {
		return 0, err
	}
	if end == 0 {
		return 0, fmt.Errorf("%s: its timeline ended before it: %w", name, ErrNotStreamed)
	}
	seg := make([]byte, segSize)
	var have uint32
	for _, p := range as.Parts {
		if p.From >= end {
			break
		}
		var buf bytes.Buffer
		if err := a.readIncrement(ctx, p, &buf); err != nil {
			return 0, err
		}
		b := buf.Bytes()
		if uint32(len(b)) != p.To-p.From {
			return 0, fmt.Errorf("streamed WAL %s holds %d bytes: %w", p, len(b), ErrCorrupt)
		}
		if overlap := have - p.From; have > p.From && !bytes.Equal(seg[p.From:have], b[:overlap]) {
			return 0, fmt.Errorf("streamed WAL %s disagrees with the increment before it: %w", p, ErrCorrupt)
		}
		copy(seg[p.From:], b)
		have = p.To
	}
	end = min(end, have)
	clear(seg[end:])
	if _, err := dst.Write(seg); err != nil {
		return 0, err
	}
	return end, nil
}

func (a *Archive) readIncrement(ctx context.Context, i WALIncrement, dst *bytes.Buffer) error {
	key := a.incrementKey(i)
	rc, err := a.store.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("streamed WAL %s: %w", i, err)
	}
	defer rc.Close()
	if _, _, err := copyObject(rc, a.key, dst); err != nil {
		return fmt.Errorf("store %s: %s: %w", a.store, key, err)
	}
	return nil
}

// branchCut returns where, at most end bytes into segment f, f's timeline
// goes on: the whole of end, unless the newest timeline's history says f's
// timeline ended before.
func (a *Archive) branchCut(ctx context.Context, f walFile, segSize uint64, end uint32) (uint32, error) {
	names, err := a.ListWAL(ctx)
	if err != nil {
		return 0, err
	}
	newest := uint32(0)
	for _, n := range names {
		h, err := parseWALName(n)
		if err == nil && h.kind == walHistory && h.tli > f.tli && h.tli > newest {
			newest = h.tli
		}
	}
	if newest == 0 {
		return end, nil
	}
	b, err := a.readWALFile(ctx, historyName(newest))
	if err != nil {
		return 0, err
	}
	hist, err := ParseHistory(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", historyName(newest), err)
	}
	return cutAtBranch(f.tli, f.segNo(segSize)*segSize, end, hist), nil
}

// cutAtBranch returns how much of the end bytes of tli's segment starting at
// LSN segStart are on the history hist describes: all, unless hist ends tli
// before.
func cutAtBranch(tli uint32, segStart uint64, end uint32, hist []HistoryEntry) uint32 {
	for _, e := range hist {
		if e.Timeline != tli {
			continue
		}
		switch {
		case uint64(e.End) <= segStart:
			return 0
		case uint64(e.End) < segStart+uint64(end):
			return uint32(uint64(e.End) - segStart)
		}
	}
	return end
}

// StreamedWAL returns the segments that recovery can read from streamed
// increments rather than from the archive: each segment not archived whose
// increments cover it from its first byte, wholly, or partly when it is the
// newest segment of its timeline (where recovery ends anyway). A partly
// covered segment with a newer one after it is a hole, and is left out.
func StreamedWAL(incs []WALIncrement, archived []string, segSize uint64) []string {
	have := map[string]bool{}
	newest := map[uint32]uint64{}
	note := func(f walFile) {
		if n := f.segNo(segSize); n > newest[f.tli] {
			newest[f.tli] = n
		}
	}
	for _, n := range archived {
		if f, err := parseWALName(n); err == nil && f.kind == walSegment {
			have[n] = true
			note(f)
		}
	}
	bySeg := map[string][]WALIncrement{}
	for _, i := range incs {
		bySeg[i.Segment] = append(bySeg[i.Segment], i)
	}
	var out []string
	full := map[string]uint32{}
	for seg, list := range bySeg {
		f, err := parseWALName(seg)
		if have[seg] || err != nil {
			continue
		}
		if as := AssembleIncrements(seg, list); as.End > 0 {
			full[seg] = as.End
			note(f)
		}
	}
	for seg, end := range full {
		f, _ := parseWALName(seg)
		if uint64(end) >= segSize || f.segNo(segSize) == newest[f.tli] {
			out = append(out, seg)
		}
	}
	sort.Strings(out)
	return out
}

// planStreamRetention returns the increments retention drops: those of a
// segment the archive holds, and those of segments before keepFrom (the
// oldest segment a kept backup needs; "" keeps them all), on any timeline.
func planStreamRetention(incs []WALIncrement, archived []string, keepFrom string) []WALIncrement {
	have := map[string]bool{}
	for _, n := range archived {
		have[n] = true
	}
	from, err := parseWALName(keepFrom)
	old := err == nil && from.kind == walSegment
	var out []WALIncrement
	for _, i := range incs {
		f, err := parseWALName(i.Segment)
		if err != nil {
			continue
		}
		if have[i.Segment] || old && f.segPos() < from.segPos() {
			out = append(out, i)
		}
	}
	return out
}
