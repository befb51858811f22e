package backup

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestPickBackup(t *testing.T) {
	b1 := bk("b1", 10*day, "0000000000000002")
	b2 := bk("b2", 5*day, "0000000000000005")
	b3 := bk("b3", day, "0000000000000009")
	backups := []Manifest{b3, b1, b2} // in no particular order
	cases := []struct {
		name   string
		target Target
		want   string // backup ID, or an error containing it
	}{
		{"latest", Target{Latest: true}, "b3"},
		{"a time between two backups", Target{Time: testNow.Add(-3 * day)}, "b2"},
		{"just after a backup ended", Target{Time: b2.StopTime.Add(time.Microsecond)}, "b2"},
		{"exactly when a backup ended: the one before", Target{Time: b2.StopTime}, "b1"},
		{"now", Target{Time: testNow}, "b3"},
		{"before the oldest", Target{Time: testNow.Add(-11 * day)}, "error: no backup ends before 2026-02-27T12:00:00Z: the oldest, b1, ends at 2026-02-28T12:00:00Z"},
		{"in the future", Target{Time: testNow.Add(time.Hour)}, "error: target time 2026-03-10T13:00:00Z is in the future (now is 2026-03-10T12:00:00Z)"},
		{"an LSN after a backup's end", Target{LSN: b2.StopLSN + 1}, "b2"},
		{"an LSN at a backup's end", Target{LSN: b2.StopLSN}, "b2"},
		{"an LSN before the oldest end", Target{LSN: b1.StopLSN - 1}, "error: no backup ends before LSN 0/2001027: the oldest, b1, ends at 0/2001028"},
		{"no target", Target{}, "error: exactly one"},
		{"two targets", Target{Latest: true, LSN: 5}, "error: exactly one"},
	}
	for _, c := range cases {
		m, err := PickBackup(backups, c.target, testNow)
		got := m.ID
		if err != nil {
			got = "error: " + err.Error()
		}
		if !strings.HasPrefix(c.want, "error: ") && got != c.want || strings.HasPrefix(c.want, "error: ") && !strings.Contains(got, c.want[7:]) {
			t.Errorf("%s: PickBackup(%v) = %q, want %q", c.name, c.target, got, c.want)
		}
	}
	if _, err := PickBackup(nil, Target{Latest: true}, testNow); err == nil || !strings.Contains(err.Error(), "no backup") {
		t.Errorf("PickBackup(no backups) = %v", err)
	}
}

func TestRecoverySettings(t *testing.T) {
	const rc = "pgfleet wal-fetch --store s3://b/p --cluster demo %f %p"
	cases := []struct {
		target Target
		want   map[string]string
	}{
		{Target{Latest: true}, map[string]string{"restore_command": rc, "recovery_target_timeline": "latest"}},
		{Target{Time: time.Date(2026, 3, 10, 12, 30, 15, 123456789, time.FixedZone("CET", 3600))}, map[string]string{
			"restore_command": rc, "recovery_target_timeline": "latest", "recovery_target_action": "promote",
			"recovery_target_time": "2026-03-10 11:30:15.123456+00:00", "recovery_target_inclusive": "off",
		}},
		{Target{LSN: 0x3000060, Inclusive: true}, map[string]string{
			"restore_command": rc, "recovery_target_timeline": "latest", "recovery_target_action": "promote",
			"recovery_target_lsn": "0/3000060", "recovery_target_inclusive": "on",
		}},
	}
	for _, c := range cases {
		got, err := RecoverySettings(c.target, rc)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("RecoverySettings(%v) = %v, %v; want %v", c.target, got, err, c.want)
		}
	}
	if _, err := RecoverySettings(Target{}, rc); err == nil {
		t.Error("RecoverySettings(no target) succeeded")
	}
	if _, err := RecoverySettings(Target{Latest: true}, ""); err == nil {
		t.Error("RecoverySettings(no restore_command) succeeded")
	}
}

func TestWALCommands(t *testing.T) {
	url := "s3://bucket/p?endpoint=127.0.0.1:9000&insecure=true"
	got := ArchiveCommand("/usr/local/bin/pgfleet", url, "demo", "/var/lib/pgfleet/key")
	want := `/usr/local/bin/pgfleet wal-push --store 's3://bucket/p?endpoint=127.0.0.1:9000&insecure=true' --cluster demo --key-file /var/lib/pgfleet/key %p`
	if got != want {
		t.Errorf("ArchiveCommand = %s\nwant %s", got, want)
	}
	got = RestoreCommand("/opt/it's here/pgfleet", "file:///srv/backups%20x", "demo", "")
	want = `'/opt/it'\''s here/pgfleet' wal-fetch --store 'file:///srv/backups%%20x' --cluster demo %f %p`
	if got != want {
		t.Errorf("RestoreCommand = %s\nwant %s", got, want)
	}
}
