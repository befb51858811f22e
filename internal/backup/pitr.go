package backup

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Target is the point a restore recovers to: exactly one of Time, LSN and
// Latest.
type Target struct {
	Time   time.Time // transactions committed before Time
	LSN    LSN       // WAL up to LSN
	Latest bool      // all archived WAL
	// Inclusive includes a transaction that committed exactly at Time, or
	// whose commit record is at LSN (recovery_target_inclusive).
	Inclusive bool
}

// NewTarget builds a restore target from what a user gives: a time, an
// LSN in PostgreSQL's form, or latest; exactly one of them.
func NewTarget(at *time.Time, lsn string, latest bool) (Target, error) {
	t := Target{Latest: latest}
	if at != nil {
		t.Time = *at
	}
	if lsn != "" {
		l, err := ParseLSN(lsn)
		if err != nil {
			return Target{}, err
		}
		if l == 0 {
			return Target{}, fmt.Errorf("LSN %q: a restore target must be past 0/0", lsn)
		}
		t.LSN = l
	}
	return t, t.validate()
}

func (t Target) validate() error {
	n := 0
	if !t.Time.IsZero() {
		n++
	}
	if t.LSN != 0 {
		n++
	}
	if t.Latest {
		n++
	}
	if n != 1 {
		return errors.New("a restore target is exactly one of a time, an LSN or the latest")
	}
	return nil
}

func (t Target) String() string {
	switch {
	case t.Latest:
		return "latest"
	case t.LSN != 0:
		return "LSN " + t.LSN.String()
	default:
		return t.Time.UTC().Format(time.RFC3339Nano)
	}
}

// PickBackup chooses the backup to restore a target from: the newest one
// that ended before it (StopTime before Time, StopLSN at or before LSN; for
// Latest, the newest). now is the clock, to refuse a time in the future.
func PickBackup(backups []Manifest, t Target, now time.Time) (Manifest, error) {
	if err := t.validate(); err != nil {
		return Manifest{}, err
	}
	if !t.Time.IsZero() && t.Time.After(now) {
		return Manifest{}, fmt.Errorf("target time %s is in the future (now is %s)", t.Time.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if len(backups) == 0 {
		return Manifest{}, errors.New("there is no backup to restore from")
	}
	var best, oldest *Manifest
	for i := range backups {
		b := &backups[i]
		if oldest == nil || endsBefore(*b, *oldest) {
			oldest = b
		}
		ok := t.Latest ||
			!t.Time.IsZero() && b.StopTime.Before(t.Time) ||
			t.LSN != 0 && b.StopLSN <= t.LSN
		if ok && (best == nil || endsBefore(*best, *b)) {
			best = b
		}
	}
	if best == nil {
		if t.LSN != 0 {
			return Manifest{}, fmt.Errorf("no backup ends before LSN %s: the oldest, %s, ends at %s", t.LSN, oldest.ID, oldest.StopLSN)
		}
		return Manifest{}, fmt.Errorf("no backup ends before %s: the oldest, %s, ends at %s", t.Time.UTC().Format(time.RFC3339), oldest.ID, oldest.StopTime.UTC().Format(time.RFC3339))
	}
	return *best, nil
}

// endsBefore orders backups by when they ended.
func endsBefore(a, b Manifest) bool {
	if !a.StopTime.Equal(b.StopTime) {
		return a.StopTime.Before(b.StopTime)
	}
	if a.StopLSN != b.StopLSN {
		return a.StopLSN < b.StopLSN
	}
	return a.ID < b.ID
}

// RecoverySettings returns the postgresql.conf settings (GUC name to value)
// a restored data directory is started with, besides a recovery.signal file:
// fetch WAL with restoreCommand, follow timelines to the latest, and for a
// time or LSN target stop there and promote. For Latest, recovery replays
// all archived WAL and then promotes.
func RecoverySettings(t Target, restoreCommand string) (map[string]string, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	if restoreCommand == "" {
		return nil, errors.New("recovery needs a restore_command")
	}
	s := map[string]string{
		"restore_command":          restoreCommand,
		"recovery_target_timeline": "latest",
	}
	if t.Latest {
		return s, nil
	}
	if t.LSN != 0 {
		s["recovery_target_lsn"] = t.LSN.String()
	} else {
		// Microseconds, as postgres keeps commit times, with an explicit
		// offset so the server's time zone plays no part.
		s["recovery_target_time"] = t.Time.UTC().Format("2006-01-02 15:04:05.999999-07:00")
	}
	s["recovery_target_inclusive"] = "off"
	if t.Inclusive {
		s["recovery_target_inclusive"] = "on"
	}
	s["recovery_target_action"] = "promote"
	return s, nil
}

// ArchiveCommand returns an archive_command that runs `exe wal-push`
// straight to the store. keyFile may be empty for no encryption. The store
// URL travels on the command line, so it must hold no secret (OpenStore
// refuses credentials in URLs), and the OS user postgres runs as must be
// able to read keyFile and the store's credentials: the agent uses
// AgentArchiveCommand instead.
func ArchiveCommand(exe, storeURL, cluster, keyFile string) string {
	return walCommand(exe, "wal-push", storeURL, cluster, keyFile) + " %p"
}

// RestoreCommand returns a restore_command that runs `exe wal-fetch`
// straight from the store (see ArchiveCommand).
func RestoreCommand(exe, storeURL, cluster, keyFile string) string {
	return walCommand(exe, "wal-fetch", storeURL, cluster, keyFile) + " %f %p"
}

func walCommand(exe, sub, storeURL, cluster, keyFile string) string {
	args := []string{exe, sub, "--store", storeURL, "--cluster", cluster}
	if keyFile != "" {
		args = append(args, "--key-file", keyFile)
	}
	return commandLine(args)
}

// AgentArchiveCommand returns an archive_command that runs `exe wal-push`
// through the agent listening on socket: the agent reads the file and
// uploads it, so the postgres OS user that runs the command holds neither
// the store's credentials nor the backup key. With marks, the directory
// where the agent marks the files it has archived ahead of postgres, the
// command first tests for the file's mark with the shell's builtin and
// starts no process for a file the agent has archived already.
func AgentArchiveCommand(exe, socket, cluster, member, marks string) string {
	push := commandLine([]string{exe, "wal-push", "--socket", socket, "--cluster", cluster, "--member", member}) + " %p"
	if marks == "" {
		return push
	}
	return "test -f " + commandLine([]string{marks + "/"}) + "%f || exec " + push
}

// AgentRestoreCommand returns a restore_command that runs `exe wal-fetch`
// through the agent listening on socket. from names another cluster whose
// archive a restore replays; "" is the member's own cluster's.
func AgentRestoreCommand(exe, socket, cluster, member, from string) string {
	args := []string{exe, "wal-fetch", "--socket", socket, "--cluster", cluster, "--member", member}
	if from != "" {
		args = append(args, "--from", from)
	}
	return commandLine(args) + " %f %p"
}

// commandLine quotes args for sh and escapes them for postgres.
func commandLine(args []string) string {
	for i, a := range args {
		// Postgres replaces %p, %f and %% before the shell sees the line.
		args[i] = strings.ReplaceAll(shellQuote(a), "%", "%%")
	}
	return strings.Join(args, " ")
}

// shellQuote quotes s for sh when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@,+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
