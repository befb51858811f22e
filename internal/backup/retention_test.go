package backup

import (
	"strings"
	"testing"
	"time"
)

var testNow = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// bk is a backup that ended ago before testNow and started at segment seg
// (the log and segment part of its name) on timeline 1, unless seg names a
// whole segment.
func bk(id string, ago time.Duration, seg string) Manifest {
	if len(seg) == 16 {
		seg = "00000001" + seg
	}
	f, err := parseWALName(seg)
	if err != nil {
		panic(err)
	}
	start := LSN(f.segNo(DefaultWALSegmentSize)*DefaultWALSegmentSize + 0x28)
	return Manifest{
		Version: manifestVersion, ID: id, Timeline: f.tli, StopTimeline: f.tli,
		StartLSN: start, StopLSN: start + 0x1000, StartWAL: seg, WALSegmentSize: DefaultWALSegmentSize,
		StartTime: testNow.Add(-ago - time.Minute), StopTime: testNow.Add(-ago),
	}
}

const day = 24 * time.Hour

func TestPlanRetention(t *testing.T) {
	wal := strings.Fields(`
		000000010000000000000001 000000010000000000000002 000000010000000000000003
		000000010000000000000003.00000028.backup
		000000010000000000000004 000000010000000000000005 000000010000000000000006.partial
		00000002.history
		000000020000000000000006 000000020000000000000007 000000020000000000000008
		000000020000000100000000`)
	cases := []struct {
		name       string
		backups    []Manifest
		policy     Policy
		keep, drop string // backup IDs
		dropWAL    string
	}{
		{
			name:    "no backups: nothing is deleted",
			keep:    "",
			drop:    "",
			dropWAL: "",
		},
		{
			name:    "all in the window: WAL before the oldest is deleted",
			backups: []Manifest{bk("b1", 3*day, "0000000000000003"), bk("b2", day, "0000000000000005")},
			keep:    "b1 b2",
			dropWAL: "000000010000000000000001 000000010000000000000002",
		},
		{
			name: "the newest backup before the window is kept, older ones go",
			backups: []Manifest{
				bk("b1", 20*day, "0000000000000001"), bk("b2", 10*day, "0000000000000002"),
				bk("b3", 8*day, "0000000000000003"), bk("b4", 2*day, "0000000000000005"), bk("b5", day, "0000000000000006")},
			keep:    "b3 b4 b5",
			drop:    "b1 b2",
			dropWAL: "000000010000000000000001 000000010000000000000002",
		},
		{
			name: "the backup ending exactly at the window's start is in the window",
			backups: []Manifest{
				bk("b1", 9*day, "0000000000000001"), bk("b2", 7*day, "0000000000000002"), bk("b3", 6*day, "0000000000000003"),
				bk("b4", 5*day, "0000000000000004")},
			keep:    "b1 b2 b3 b4",
			dropWAL: "",
		},
		{
			name: "min backups keeps old ones when the window has too few",
			backups: []Manifest{
				bk("b1", 30*day, "0000000000000001"), bk("b2", 20*day, "0000000000000002"), bk("b3", 10*day, "0000000000000003")},
			keep:    "b2 b3",
			drop:    "b1",
			dropWAL: "000000010000000000000001",
		},
		{
			name: "a larger min backups",
			backups: []Manifest{
				bk("b1", 30*day, "0000000000000001"), bk("b2", 20*day, "0000000000000002"), bk("b3", 10*day, "0000000000000003")},
			policy:  Policy{MinBackups: 3},
			keep:    "b1 b2 b3",
			dropWAL: "",
		},
		{
			name: "a short window",
			backups: []Manifest{
				bk("b1", 3*day, "0000000000000001"), bk("b2", 2*day, "0000000000000003"), bk("b3", 12*time.Hour, "0000000000000005")},
			policy:  Policy{Window: day},
			keep:    "b2 b3",
			drop:    "b1",
			dropWAL: "000000010000000000000001 000000010000000000000002",
		},
		{
			name: "on a later timeline: older segments of every timeline go, history files stay",
			backups: []Manifest{
				bk("b1", 20*day, "0000000000000001"), bk("b2", 10*day, "0000000000000003"),
				bk("b3", 2*day, "000000020000000000000007"), bk("b4", day, "000000020000000000000008")},
			policy:  Policy{Window: 5 * day},
			keep:    "b2 b3 b4",
			drop:    "b1",
			dropWAL: "000000010000000000000001 000000010000000000000002",
		},
		{
			name: "the anchor decides, not the oldest ID",
			backups: []Manifest{
				bk("b1", 20*day, "0000000000000001"), bk("b2", 10*day, "000000020000000000000007"),
				bk("b3", 2*day, "000000020000000100000000"), bk("b4", day, "000000020000000100000000")},
			keep: "b2 b3 b4",
			drop: "b1",
			dropWAL: "000000010000000000000001 000000010000000000000002 000000010000000000000003 " +
				"000000010000000000000003.00000028.backup 000000010000000000000004 000000010000000000000005 " +
				"000000010000000000000006.partial 000000020000000000000006",
		},
	}
	for _, c := range cases {
		plan := PlanRetention(c.backups, wal, testNow, c.policy)
		if got := strings.Join(plan.Keep, " "); got != c.keep {
			t.Errorf("%s: PlanRetention kept %q, want %q", c.name, got, c.keep)
		}
		if got := strings.Join(plan.DeleteBackups, " "); got != c.drop {
			t.Errorf("%s: PlanRetention deleted backups %q, want %q", c.name, got, c.drop)
		}
		if got := strings.Join(plan.DeleteWAL, " "); got != c.dropWAL {
			t.Errorf("%s: PlanRetention deleted WAL %q, want %q", c.name, got, c.dropWAL)
		}
		// Whatever is kept, every point in the window stays restorable:
		// some kept backup ends before the window's start, or no backup
		// ever did, and no kept backup's start segment is deleted.
		p := c.policy.withDefaults()
		ws := testNow.Add(-p.Window)
		kept := map[string]bool{}
		for _, id := range plan.Keep {
			kept[id] = true
		}
		var before, keptBefore bool
		for _, b := range c.backups {
			if b.StopTime.Before(ws) {
				before = true
				keptBefore = keptBefore || kept[b.ID]
			}
			if kept[b.ID] {
				for _, w := range plan.DeleteWAL {
					if f, _ := parseWALName(w); f.segPos() >= (walFile{name: b.StartWAL}).segPos() {
						t.Errorf("%s: deletes %s, which kept backup %s (from %s) needs", c.name, w, b.ID, b.StartWAL)
					}
				}
			}
		}
		if before && !keptBefore {
			t.Errorf("%s: no kept backup ends before the window's start %v", c.name, ws)
		}
	}
}
