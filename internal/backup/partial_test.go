package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func inc(segment string, from, to uint32) WALIncrement {
	return WALIncrement{Segment: segment, From: from, To: to}
}

func TestIncrementKeys(t *testing.T) {
	a, err := NewArchive(nil, "demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	i := inc(seg(2, 3), 0x1A2F0, 0x20000)
	key := a.incrementKey(i)
	if want := "demo/wal-stream/00000002/000000020000000000000003.0001A2F0-00020000.zst"; key != want {
		t.Errorf("incrementKey(%v) = %q, want %q", i, key, want)
	}
	if got, ok := a.parseIncrementKey(key); !ok || got != i {
		t.Errorf("parseIncrementKey(%q) = %v, %v; want %v", key, got, ok, i)
	}
	for _, bad := range []string{
		"demo/wal-stream/00000001/000000020000000000000003.00000000-00000010.zst", // wrong timeline directory
		"demo/wal-stream/00000002/000000020000000000000003.00000010-00000010.zst", // empty range
		"demo/wal-stream/00000002/000000020000000000000003.00000020-00000010.zst", // backwards
		"demo/wal-stream/00000002/000000020000000000000003.0000000a-00000010.zst", // lower case
		"demo/wal-stream/00000002/000000020000000000000003.00000000-00000010",     // no .zst
		"demo/wal-stream/00000002/00000002.history.00000000-00000010.zst",
		"demo/wal/00000002/000000020000000000000003.zst",
		"other/wal-stream/00000002/000000020000000000000003.00000000-00000010.zst",
	} {
		if got, ok := a.parseIncrementKey(bad); ok {
			t.Errorf("parseIncrementKey(%q) = %v, want refused", bad, got)
		}
	}
}

func TestAssembleIncrements(t *testing.T) {
	s := seg(1, 5)
	cases := []struct {
		name string
		incs []WALIncrement
		end  uint32
		used []WALIncrement
	}{
		{"none", nil, 0, nil},
		{"not from the start", []WALIncrement{inc(s, 100, 200)}, 0, nil},
		{"contiguous", []WALIncrement{inc(s, 100, 300), inc(s, 0, 100)}, 300, []WALIncrement{inc(s, 0, 100), inc(s, 100, 300)}},
		{"hole", []WALIncrement{inc(s, 0, 100), inc(s, 101, 300)}, 100, []WALIncrement{inc(s, 0, 100)}},
		{"restarted stream overlaps", []WALIncrement{inc(s, 0, 100), inc(s, 100, 200), inc(s, 0, 150), inc(s, 150, 400)},
			400, []WALIncrement{inc(s, 0, 150), inc(s, 150, 400)}},
		{"other segment ignored", []WALIncrement{inc(s, 0, 100), inc(seg(1, 6), 0, 16<<20), inc(seg(2, 5), 100, 300)}, 100, []WALIncrement{inc(s, 0, 100)}},
		{"contained increment skipped", []WALIncrement{inc(s, 0, 300), inc(s, 50, 100), inc(s, 300, 310)}, 310, []WALIncrement{inc(s, 0, 300), inc(s, 300, 310)}},
	}
	for _, c := range cases {
		got := AssembleIncrements(s, c.incs)
		if got.End != c.end || !reflect.DeepEqual(got.Parts, c.used) {
			t.Errorf("%s: AssembleIncrements(%v) = end %d, parts %v; want end %d, parts %v", c.name, c.incs, got.End, got.Parts, c.end, c.used)
		}
	}
}

func TestCutAtBranch(t *testing.T) {
	const segSize = DefaultWALSegmentSize
	segStart := uint64(5 * segSize)
	hist := []HistoryEntry{{Timeline: 1, End: LSN(segStart + 0x1000)}, {Timeline: 2, End: LSN(segStart + 3*segSize)}}
	cases := []struct {
		tli      uint32
		segStart uint64
		end      uint32
		want     uint32
	}{
		{1, segStart, 0x8000, 0x1000},             // timeline 1 ended inside: cut there
		{1, segStart, 0x800, 0x800},               // all streamed is before the branch
		{1, segStart + segSize, 0x8000, 0},        // timeline 1 ended before this segment
		{1, segStart - segSize, segSize, segSize}, // a segment before the branch
		{2, segStart + segSize, 0x8000, 0x8000},   // timeline 2 goes on past it
		{3, segStart, 0x8000, 0x8000},             // not in this history
	}
	for _, c := range cases {
		if got := cutAtBranch(c.tli, c.segStart, c.end, hist); got != c.want {
			t.Errorf("cutAtBranch(%d, %#x, %#x) = %#x, want %#x", c.tli, c.segStart, c.end, got, c.want)
		}
	}
}

func TestStreamedWAL(t *testing.T) {
	const full = DefaultWALSegmentSize
	archived := []string{seg(1, 1), seg(1, 2), "00000002.history"}
	incs := []WALIncrement{
		inc(seg(1, 2), 0, full),         // archived since: the archive's
		inc(seg(1, 3), 0, 100),          // part of 3, but 4 follows: a hole, left out
		inc(seg(1, 4), 0, full),         // whole
		inc(seg(1, 5), 0, 100),          // the tip of timeline 1
		inc(seg(1, 5), 100, 200),        //
		inc(seg(2, 5), 0x10, 0x20),      // not from the segment's start
		inc(seg(2, 6), 0, 300),          // the tip of timeline 2
		inc(seg(2, 7), 300, 400),        // not from the start either
		inc(seg(3, 9), 0, full/2),       // alone on its timeline: the tip
		inc(seg(3, 8), full/2, full-10), //
	}
	got := StreamedWAL(incs, archived, full)
	want := []string{seg(1, 4), seg(1, 5), seg(2, 6), seg(3, 9)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("StreamedWAL = %v, want %v", got, want)
	}

	// What verify makes of it: no gap for what increments cover.
	m := bk("b1", day, seg(1, 1))
	check := CheckWAL(m, append(archived[:len(archived):len(archived)], StreamedWAL([]WALIncrement{inc(seg(1, 3), 0, full), inc(seg(1, 4), 0, 5)}, archived, full)...), nil)
	if !check.OK() || check.To != seg(1, 4) {
		t.Errorf("CheckWAL with streamed segments 3 and part of 4 = %+v, want OK up to %s", check, seg(1, 4))
	}
	check = CheckWAL(m, append(archived[:len(archived):len(archived)], StreamedWAL([]WALIncrement{inc(seg(1, 3), 0, 5), inc(seg(1, 4), 0, 5)}, archived, full)...), nil)
	if len(check.Gaps) != 1 || check.Gaps[0].First != seg(1, 3) {
		t.Errorf("CheckWAL with part of streamed segment 3 before 4 = %+v, want segment 3 a gap", check)
	}
}

func TestPlanStreamRetention(t *testing.T) {
	archived := []string{seg(1, 4), seg(1, 5), seg(2, 6)}
	incs := []WALIncrement{
		inc(seg(1, 3), 0, 100), // before the oldest kept backup's start
		inc(seg(1, 5), 0, 100), // archived
		inc(seg(1, 6), 0, 100), // timeline 1 after a branch at 6: kept until retention passes it
		inc(seg(2, 6), 0, 100), // archived
		inc(seg(2, 7), 0, 100), // the tip
	}
	got := planStreamRetention(incs, archived, seg(1, 4))
	want := []WALIncrement{incs[0], incs[1], incs[3]}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("planStreamRetention(keep from %s) = %v, want %v", seg(1, 4), got, want)
	}
	if got := planStreamRetention(incs, nil, ""); len(got) != 0 {
		t.Errorf("planStreamRetention(nothing archived, no backup) = %v, want none", got)
	}
}

// walPages is n bytes of WAL-like content for the segment starting at
// segStart: every 8 KiB page names its own address.
func walPages(segStart uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 1)
	}
	for p := 0; p+16 <= n; p += 8192 {
		copy(b[p+8:], fmt.Sprintf("%08X", segStart+uint64(p)))
	}
	return b
}

// TestReadStreamedWAL: a segment assembled from increments in a real store,
// encrypted, is the streamed bytes padded with zeros; a hole, an increment
// that disagrees, or a conflicting upload are refused; the archive's copy
// takes over and retention drops the increments.
func TestReadStreamedWAL(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key, err := NewKey(bytes.Repeat([]byte{7}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewArchive(openStore(t, fileURL(filepath.Join(dir, "store"))), "demo", key)
	if err != nil {
		t.Fatal(err)
	}
	const segSize = DefaultWALSegmentSize
	name := seg(1, 3)
	content := walPages(3*segSize, 50000)
	for _, r := range [][2]uint32{{0, 20000}, {20000, 20001}, {20001, 50000}, {0, 30000}} { // the last: a stream that started over
		if err := a.PutWALIncrement(ctx, inc(name, r[0], r[1]), content[r[0]:r[1]]); err != nil {
			t.Fatalf("PutWALIncrement(%v): %v", r, err)
		}
	}
	// The same upload again succeeds; another content under the name does not.
	if err := a.PutWALIncrement(ctx, inc(name, 0, 20000), content[:20000]); err != nil {
		t.Errorf("PutWALIncrement of the same increment again: %v", err)
	}
	if err := a.PutWALIncrement(ctx, inc(name, 0, 20000), make([]byte, 20000)); !errors.Is(err, ErrConflict) {
		t.Errorf("PutWALIncrement of different content under a stored name: %v, want ErrConflict", err)
	}
	if err := a.PutWALIncrement(ctx, inc(name, 0, 10), content[:11]); err == nil {
		t.Errorf("PutWALIncrement of 11 bytes as a range of 10 succeeded")
	}

	var out bytes.Buffer
	end, err := a.ReadStreamedWAL(ctx, name, segSize, &out)
	if err != nil {
		t.Fatalf("ReadStreamedWAL(%s): %v", name, err)
	}
	if end != 50000 || out.Len() != segSize || !bytes.Equal(out.Bytes()[:50000], content) || bytes.Count(out.Bytes()[50000:], []byte{0}) != segSize-50000 {
		t.Errorf("ReadStreamedWAL(%s) = %d bytes streamed, %d written; want the 50000 streamed bytes, then zeros to %d", name, end, out.Len(), segSize)
	}
	if _, err := a.ReadStreamedWAL(ctx, seg(1, 4), segSize, &out); !errors.Is(err, ErrNotStreamed) || !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadStreamedWAL of a segment never streamed: %v, want ErrNotStreamed, an ErrNotFound", err)
	}

	// A later timeline that branched inside the segment cuts it there.
	hist := "1\t0/3004000\tno recovery target specified\n"
	if _, err := a.PushWALFrom(ctx, "00000002.history", strings.NewReader(hist)); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if end, err := a.ReadStreamedWAL(ctx, name, segSize, &out); err != nil || end != 0x4000 || !bytes.Equal(out.Bytes()[:0x4000], content[:0x4000]) || out.Bytes()[0x4000] != 0 {
		t.Errorf("ReadStreamedWAL after timeline 2 branched at 0/3004000 = %#x, %v; want cut at 0x4000", end, err)
	}

	// An increment that disagrees with the one before it is refused.
	other := seg(2, 7)
	a.PutWALIncrement(ctx, inc(other, 0, 100), content[:100])
	bad := append([]byte(nil), content[50:150]...)
	bad[10] ^= 0xFF
	a.PutWALIncrement(ctx, inc(other, 50, 150), bad)
	if _, err := a.ReadStreamedWAL(ctx, other, segSize, &out); !errors.Is(err, ErrCorrupt) {
		t.Errorf("ReadStreamedWAL of overlapping increments that disagree: %v, want ErrCorrupt", err)
	}

	// Once the archive holds the segment, its increments go.
	if dropped, err := a.DropStreamedIfArchived(ctx, name); err != nil || dropped {
		t.Errorf("DropStreamedIfArchived(%s) before it is archived = %v, %v; want false", name, dropped, err)
	}
	if _, err := a.PushWALFrom(ctx, name, bytes.NewReader(append(content, make([]byte, segSize-len(content))...))); err != nil {
		t.Fatal(err)
	}
	if dropped, err := a.DropStreamedIfArchived(ctx, name); err != nil || !dropped {
		t.Errorf("DropStreamedIfArchived(%s) once archived = %v, %v; want true", name, dropped, err)
	}
	left, err := a.SegmentIncrements(ctx, name)
	if err != nil || len(left) != 0 {
		t.Errorf("increments of %s after it was archived: %v, %v; want none", name, left, err)
	}

	// Retention drops the increments of archived segments too.
	a.PutWALIncrement(ctx, inc(seg(1, 4), 0, 100), content[:100])
	a.PushWALFrom(ctx, seg(1, 4), bytes.NewReader(make([]byte, 100)))
	plan, err := a.ApplyRetention(ctx, Policy{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.DeleteStreamed) != 1 || plan.DeleteStreamed[0].Segment != seg(1, 4) {
		t.Errorf("ApplyRetention dropped streamed %v, want the increment of the archived %s", plan.DeleteStreamed, seg(1, 4))
	}
}
