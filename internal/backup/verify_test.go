package backup

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseHistory(t *testing.T) {
	h, err := ParseHistory([]byte("1\t0/3000060\tno recovery target specified\n\n# comment\n2\t0/5000000\tbefore 2024-05-01 12:00:00+00\n"))
	want := []HistoryEntry{{1, 0x3000060}, {2, 0x5000000}}
	if err != nil || !reflect.DeepEqual(h, want) {
		t.Errorf("ParseHistory = %v, %v; want %v", h, err, want)
	}
	for _, bad := range []string{"1", "x 0/1", "1 zz", "2 0/5\n1 0/6", "1 0/6\n2 0/5", "0 0/1"} {
		if _, err := ParseHistory([]byte(bad)); err == nil {
			t.Errorf("ParseHistory(%q) succeeded", bad)
		}
	}
}

// seg names segment n of timeline tli with 16 MiB segments.
func seg(tli uint32, n uint64) string { return segmentName(tli, n, DefaultWALSegmentSize) }

// segs names segments from..to of timeline tli.
func segs(tli uint32, from, to uint64) []string {
	var out []string
	for n := from; n <= to; n++ {
		out = append(out, seg(tli, n))
	}
	return out
}

func join(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestCheckWAL(t *testing.T) {
	// A backup on timeline 1 from segment 2 (0/2000028) to segment 3.
	b1 := Manifest{ID: "b", Timeline: 1, StopTimeline: 1, StartLSN: 0x2000028, StopLSN: 0x3000100, StartWAL: seg(1, 2), WALSegmentSize: DefaultWALSegmentSize}
	// One on timeline 2.
	b2 := Manifest{ID: "b", Timeline: 2, StopTimeline: 2, StartLSN: 0x6000028, StopLSN: 0x6000100, StartWAL: seg(2, 6), WALSegmentSize: DefaultWALSegmentSize}
	// One just before the end of log file 0, to cross into log file 1.
	segsPerLog := uint64(0x100)
	bLog := Manifest{ID: "b", Timeline: 1, StopTimeline: 1, StartLSN: 0xFE000028, StopLSN: 0xFE000100, StartWAL: seg(1, segsPerLog-2), WALSegmentSize: DefaultWALSegmentSize}

	h2 := []HistoryEntry{{1, 0x5800000}}                 // timeline 2 branched off 1 in segment 5
	h3 := []HistoryEntry{{1, 0x5800000}, {2, 0x8000000}} // and 3 off 2 at the start of segment 8
	hOld := []HistoryEntry{{1, 0x1000000}}               // a timeline that branched off before b1 started

	gap := func(first, last string, n uint64) Gap { return Gap{First: first, Last: last, Count: n} }
	cases := []struct {
		name      string
		m         Manifest
		wal       []string
		hist      map[uint32][]HistoryEntry
		want      WALCheck
		wantCheck bool
	}{
		{
			name: "complete chain",
			m:    b1, wal: segs(1, 1, 6),
			want: WALCheck{Timeline: 1, From: seg(1, 2), To: seg(1, 6), Consistent: true},
		},
		{
			name: "one segment missing after the backup's end",
			m:    b1, wal: join(segs(1, 2, 4), segs(1, 6, 7)),
			want: WALCheck{Timeline: 1, From: seg(1, 2), To: seg(1, 7), Gaps: []Gap{gap(seg(1, 5), seg(1, 5), 1)}, Consistent: true},
		},
		{
			name: "two gaps",
			m:    b1, wal: join(segs(1, 2, 3), segs(1, 6, 6), segs(1, 9, 9)),
			want: WALCheck{Timeline: 1, From: seg(1, 2), To: seg(1, 9), Gaps: []Gap{gap(seg(1, 4), seg(1, 5), 2), gap(seg(1, 7), seg(1, 8), 2)}, Consistent: true},
		},
		{
			name: "a gap inside the backup: not restorable",
			m:    b1, wal: join(segs(1, 2, 2), segs(1, 4, 5)),
			want: WALCheck{Timeline: 1, From: seg(1, 2), To: seg(1, 5), Gaps: []Gap{gap(seg(1, 3), seg(1, 3), 1)}},
		},
		{
			name: "nothing archived",
			m:    b1, wal: segs(1, 0, 1),
			want: WALCheck{Timeline: 1, From: seg(1, 2), Gaps: []Gap{gap(seg(1, 2), seg(1, 3), 2)}},
		},
		{
			name: "the backup's end is not archived yet",
			m:    b1, wal: segs(1, 2, 2),
			want: WALCheck{Timeline: 1, From: seg(1, 2), To: seg(1, 2), Gaps: []Gap{gap(seg(1, 3), seg(1, 3), 1)}},
		},
		{
			name: "timeline switch followed",
			m:    b1, wal: join(segs(1, 2, 5), []string{seg(1, 5) + ".partial", "00000002.history"}, segs(2, 5, 7)),
			hist: map[uint32][]HistoryEntry{2: h2},
			want: WALCheck{Timeline: 2, From: seg(1, 2), To: seg(2, 7), Consistent: true},
		},
		{
			name: "the new timeline's first segment is missing: the old timeline's does not fill it",
			m:    b1, wal: join(segs(1, 2, 5), segs(2, 6, 7)),
			hist: map[uint32][]HistoryEntry{2: h2},
			want: WALCheck{Timeline: 2, From: seg(1, 2), To: seg(2, 7), Gaps: []Gap{gap(seg(2, 5), seg(2, 5), 1)}, Consistent: true},
		},
		{
			name: "two switches",
			m:    b1, wal: join(segs(1, 2, 4), segs(2, 5, 7), segs(3, 8, 9)),
			hist: map[uint32][]HistoryEntry{2: h2, 3: h3},
			want: WALCheck{Timeline: 3, From: seg(1, 2), To: seg(3, 9), Consistent: true},
		},
		{
			name: "a gap on the middle timeline",
			m:    b1, wal: join(segs(1, 2, 4), segs(2, 5, 5), segs(2, 7, 7), segs(3, 8, 9)),
			hist: map[uint32][]HistoryEntry{2: h2, 3: h3},
			want: WALCheck{Timeline: 3, From: seg(1, 2), To: seg(3, 9), Gaps: []Gap{gap(seg(2, 6), seg(2, 6), 1)}, Consistent: true},
		},
		{
			name: "WAL of a timeline without its history file",
			m:    b1, wal: join(segs(1, 2, 5), segs(2, 5, 7)),
			want: WALCheck{Timeline: 1, From: seg(1, 2), To: seg(1, 5), MissingHistory: []string{"00000002.history"}, Consistent: true},
		},
		{
			name: "a timeline that branched off before the backup is another history",
			m:    b1, wal: join(segs(1, 2, 4), segs(2, 1, 9)),
			hist: map[uint32][]HistoryEntry{2: hOld},
			want: WALCheck{Timeline: 1, From: seg(1, 2), To: seg(1, 4), Consistent: true},
		},
		{
			name: "a backup on a later timeline ignores older timelines",
			m:    b2, wal: join(segs(1, 1, 9), segs(2, 5, 8), segs(3, 8, 8)),
			hist: map[uint32][]HistoryEntry{2: h2, 3: h3},
			want: WALCheck{Timeline: 3, From: seg(2, 6), To: seg(3, 8), Consistent: true},
		},
		{
			name: "across the end of a log file",
			m:    bLog, wal: join(segs(1, segsPerLog-2, segsPerLog), segs(1, segsPerLog+2, segsPerLog+2)),
			want: WALCheck{Timeline: 1, From: "0000000100000000000000FE", To: "000000010000000100000002", Gaps: []Gap{gap("000000010000000100000001", "000000010000000100000001", 1)}, Consistent: true},
		},
	}
	for _, c := range cases {
		got := CheckWAL(c.m, c.wal, c.hist)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: CheckWAL =\n%+v\nwant\n%+v", c.name, got, c.want)
		}
		if got.OK() != (len(c.want.Gaps) == 0 && len(c.want.MissingHistory) == 0 && c.want.Consistent) {
			t.Errorf("%s: OK() = %v", c.name, got.OK())
		}
	}
}

func TestSegmentNames(t *testing.T) {
	for _, c := range []struct {
		tli     uint32
		n       uint64
		segSize uint64
		want    string
	}{
		{1, 0, 16 << 20, "000000010000000000000000"},
		{1, 0xFF, 16 << 20, "0000000100000000000000FF"},
		{1, 0x100, 16 << 20, "000000010000000100000000"},
		{0x1A, 0x1234, 16 << 20, "0000001A0000001200000034"},
		{2, 0x1001, 1 << 20, "000000020000000100000001"},
		{2, 0x1001, 1 << 30, "000000020000040000000001"},
	} {
		got := segmentName(c.tli, c.n, c.segSize)
		if got != c.want {
			t.Errorf("segmentName(%d, %#x, %d) = %s, want %s", c.tli, c.n, c.segSize, got, c.want)
		}
		f, err := parseWALName(got)
		if err != nil || f.tli != c.tli || f.segNo(c.segSize) != c.n || f.kind != walSegment {
			t.Errorf("parseWALName(%s) = %+v, %v", got, f, err)
		}
	}
	for _, name := range []string{"00000002.history", "000000010000000000000003.partial", "000000010000000000000003.00000028.backup"} {
		if _, err := parseWALName(name); err != nil {
			t.Errorf("parseWALName(%s): %v", name, err)
		}
	}
	for _, name := range []string{"", "00000001000000000000000", "0000000100000000000000zz", "000000010000000000000003.zst",
		"../../etc/passwd", "00000000.history", "000000000000000000000001", "0000000a0000000000000001", "RECOVERYXLOG",
		"000000010000000000000003.0000002X.backup", "00000001.history.x"} {
		if _, err := parseWALName(name); err == nil {
			t.Errorf("parseWALName(%q) succeeded", name)
		}
	}
}

func TestNextSegments(t *testing.T) {
	for _, c := range []struct {
		name    string
		segSize uint64
		n       int
		want    string
	}{
		{"000000010000000000000003", 16 << 20, 2, "000000010000000000000004 000000010000000000000005"},
		{"0000000100000000000000FF", 16 << 20, 2, "000000010000000100000000 000000010000000100000001"},
		{"000000020000000000000FFF", 1 << 20, 1, "000000020000000100000000"},
		{"00000002.history", 16 << 20, 2, ""},
		{"000000010000000000000003.partial", 16 << 20, 2, ""},
		{"RECOVERYXLOG", 16 << 20, 2, ""},
		{"000000010000000000000003", 3, 2, ""},
	} {
		if got := strings.Join(NextSegments(c.name, c.segSize, c.n), " "); got != c.want {
			t.Errorf("NextSegments(%s, %d, %d) = %q, want %q", c.name, c.segSize, c.n, got, c.want)
		}
	}
}

func TestLSN(t *testing.T) {
	for s, want := range map[string]LSN{"0/0": 0, "0/3000060": 0x3000060, "16/B374D848": 0x16B374D848, "FFFFFFFF/FFFFFFFF": 1<<64 - 1} {
		got, err := ParseLSN(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("ParseLSN(%q) = %v (%s), %v; want %#x", s, uint64(got), got, err, uint64(want))
		}
	}
	for _, s := range []string{"", "0", "/1", "1/", "x/1", "1/2/3", "100000000/0", "0/-1"} {
		if _, err := ParseLSN(s); err == nil {
			t.Errorf("ParseLSN(%q) succeeded", s)
		}
	}
}

func TestParseBackupLabel(t *testing.T) {
	label := "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n" +
		"BACKUP METHOD: streamed\nBACKUP FROM: standby\nSTART TIME: 2024-05-01 12:00:00 UTC\nLABEL: pg_basebackup base backup\n" +
		"START TIMELINE: 1\n"
	lb, err := parseBackupLabel([]byte(label))
	want := backupLabel{startLSN: 0x2000028, startWAL: "000000010000000000000002", timeline: 1, from: "standby"}
	if err != nil || lb != want {
		t.Errorf("parseBackupLabel = %+v, %v; want %+v", lb, err, want)
	}
	for name, bad := range map[string]string{
		"no timeline":       "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
		"no location":       "START TIMELINE: 1\n",
		"timeline mismatch": strings.Replace(label, "START TIMELINE: 1", "START TIMELINE: 2", 1),
		"bad location":      strings.Replace(label, "0/2000028 (file", "0/zz (file", 1),
	} {
		if _, err := parseBackupLabel([]byte(bad)); err == nil {
			t.Errorf("parseBackupLabel(%s) succeeded", name)
		}
	}
	// The segment size is checked against the label.
	f := tarFacts{label: []byte(label), labelInTar: true, haveRanges: true, walRanges: []walRange{{1, 0x2000028, 0x2000100}}}
	if m, err := f.manifest(DefaultWALSegmentSize); err != nil || m.StopLSN != 0x2000100 || m.StartWAL != want.startWAL {
		t.Errorf("manifest(16 MiB) = %+v, %v", m, err)
	}
	if _, err := f.manifest(1 << 20); err == nil || !strings.Contains(err.Error(), "segment size") {
		t.Errorf("manifest(1 MiB) = %v, want a segment size error", err)
	}
	f.walRanges = []walRange{{2, 0x3000000, 0x3000200}, {1, 0x2000028, 0x3000000}}
	if m, err := f.manifest(DefaultWALSegmentSize); err != nil || m.StopLSN != 0x3000200 || m.StopTimeline != 2 || m.Timeline != 1 {
		t.Errorf("manifest(two ranges) = %+v, %v", m, err)
	}
	f.haveRanges, f.walRanges = false, nil
	if _, err := f.manifest(DefaultWALSegmentSize); err == nil || !strings.Contains(err.Error(), "backup_manifest") {
		t.Errorf("manifest(no backup_manifest) = %v", err)
	}
}

func TestVerifyReportSummary(t *testing.T) {
	r := VerifyReport{Backups: []BackupReport{{
		Manifest:  Manifest{ID: "b1", StopLSN: 0x3000000},
		DataError: "checksum mismatch",
		WAL:       WALCheck{Gaps: []Gap{{First: seg(1, 4), Last: seg(1, 4), Count: 1}, {First: seg(1, 6), Last: seg(1, 8), Count: 3}}, MissingHistory: []string{"00000003.history"}},
	}}}
	got := strings.Join(r.Summary(), "\n")
	for _, want := range []string{
		"backup b1: checksum mismatch",
		"backup b1: WAL segment 000000010000000000000004 is missing",
		"backup b1: 3 WAL segments are missing, 000000010000000000000006 to 000000010000000000000008",
		"history file 00000003.history is missing",
		"cannot be restored yet",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Summary =\n%s\nwant a line with %q", got, want)
		}
	}
	if r.OK() {
		t.Error("OK() = true")
	}
}
