package memberlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readAll(t *testing.T, dir string, since time.Time) []string {
	t.Helper()
	var got []string
	err := Read(context.Background(), dir, ReadOptions{Since: since}, func(l Line) error {
		got = append(got, l.Text)
		return nil
	})
	if err != nil {
		t.Fatalf("Read(%s): %v", dir, err)
	}
	return got
}

func TestRotationKeepsTwoFilesAndReadsInOrder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	w, err := Open(dir, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range 100 {
		w.Append(Line{Time: t0.Add(time.Duration(i) * time.Second), Source: SourcePostgres, Text: fmt.Sprintf("line %03d", i)})
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	total := int64(0)
	for _, e := range entries {
		fi, _ := e.Info()
		names = append(names, e.Name())
		total += fi.Size()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	if strings.Join(names, ",") != "member.log,member.log.1" || total > 2*1024 {
		t.Fatalf("log dir holds %v, %d bytes; want member.log and member.log.1, at most 2048 bytes", names, total)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("log dir mode %v, want 0700", fi.Mode().Perm())
	}
	got := readAll(t, dir, time.Time{})
	if len(got) < 10 || got[len(got)-1] != "line 099" {
		t.Fatalf("Read gave %d lines ending %q; want the newest lines ending with line 099", len(got), got[len(got)-1])
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("Read out of order: %q after %q", got[i], got[i-1])
		}
	}
	since := readAll(t, dir, t0.Add(95*time.Second))
	if strings.Join(since, ",") != "line 095,line 096,line 097,line 098,line 099" {
		t.Errorf("Read since +95s = %v; want lines 095 to 099", since)
	}
}

func TestReadMissingLog(t *testing.T) {
	if got := readAll(t, filepath.Join(t.TempDir(), "none"), time.Time{}); len(got) != 0 {
		t.Errorf("Read of a missing log = %v, want nothing", got)
	}
}

func TestReadSkipsBrokenLines(t *testing.T) {
	dir := t.TempDir()
	good := `{"time":"2026-01-02T03:04:05Z","source":"agent","text":"ok"}`
	data := good + "\n{\"time\":\"2026-01-02T03:0\n" + strings.Repeat("x", maxLineBytes+10) + "\n" + good + "\n" + `{"time":"2026`
	if err := os.WriteFile(filepath.Join(dir, current), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, dir, time.Time{}); strings.Join(got, ",") != "ok,ok" {
		t.Errorf("Read = %v; want the two whole lines", got)
	}
}

// TestFollowAcrossRotation follows a log that rotates several times while
// being read, and gets every line once, in order.
func TestFollowAcrossRotation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	w, err := Open(dir, 512)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Append(Line{Time: time.Now(), Text: "before"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan string, 1000)
	done := make(chan error, 1)
	idle := make(chan struct{}, 1)
	go func() {
		done <- Read(ctx, dir, ReadOptions{Follow: true, Poll: 5 * time.Millisecond, IdleEvery: time.Millisecond,
			Idle: func() error {
				select {
				case idle <- struct{}{}:
				default:
				}
				return nil
			}},
			func(l Line) error { got <- l.Text; return nil })
	}()
	if l := <-got; l != "before" {
		t.Fatalf("first line %q, want before", l)
	}
	select {
	case <-idle:
	case <-ctx.Done():
		t.Fatal("Idle not called within 30s of a quiet log")
	}
	// Batches of five lines, each batch read before the next is written:
	// the 512-byte log rotates within batches and between polls. (A
	// reader slower than a whole file's worth of lines misses the lines
	// of the file dropped meanwhile; that is the bound.)
	for b := range 8 {
		for i := range 5 {
			w.Append(Line{Time: time.Now(), Text: fmt.Sprintf("after %d.%d", b, i)})
		}
		for i := range 5 {
			select {
			case l := <-got:
				if want := fmt.Sprintf("after %d.%d", b, i); l != want {
					t.Fatalf("followed line = %q, want %q", l, want)
				}
			case err := <-done:
				t.Fatalf("Read ended: %v", err)
			case <-ctx.Done():
				t.Fatalf("line %d.%d not followed within 30s", b, i)
			}
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Read after cancel = %v, want context.Canceled", err)
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"connect postgres://postgres:s3cret@10.0.0.1:6000/postgres failed", "connect postgres://postgres:[redacted]@10.0.0.1:6000/postgres failed"},
		{"host=10.0.0.1 user=replicator password=abc123 sslmode=verify-full", "host=10.0.0.1 user=replicator password=[redacted] sslmode=verify-full"},
		{"password = 'a b c' next", "password = [redacted] next"},
		{"token pgf_0123456789abcdef0123 sent", "token [redacted] sent"},
		{"read-only pgfro_0123abcd_00112233445566778899 sent", "read-only [redacted] sent"},
		{"password authentication failed for user \"app\"", "password authentication failed for user \"app\""},
		{"member demo-1 promoted", "member demo-1 promoted"},
		{"[42] STATEMENT:  ALTER ROLE app PASSWORD 'it''s me' VALID UNTIL 'x'", "[42] STATEMENT:  ALTER ROLE app PASSWORD '[redacted]' VALID UNTIL 'x'"},
		{"[42] STATEMENT:  create user bob with password 'hunter2';", "[42] STATEMENT:  create user bob with password '[redacted]';"},
		{"[42] LOG:  statement: SELECT 'password' AS word", "[42] LOG:  statement: SELECT 'password' AS word"},
	} {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestStripPostgresTime(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"2026-11-28 00:45:30.123 UTC [42] LOG:  checkpoint starting: time", "[42] LOG:  checkpoint starting: time"},
		{"2026-11-28 00:45:30 Europe/Berlin [42] LOG:  x", "[42] LOG:  x"},
		{"\tcontinued statement", "\tcontinued statement"},
		{"waiting for server to start....", "waiting for server to start...."},
	} {
		if got := StripPostgresTime(tc.in); got != tc.want {
			t.Errorf("StripPostgresTime(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestTee logs as the agent's supervisor does and checks what reaches the
// member's log and what still reaches the agent's.
func TestTee(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var agentLog bytes.Buffer
	next := slog.NewTextHandler(&agentLog, &slog.HandlerOptions{Level: slog.LevelWarn})
	log := slog.New(Tee(next, w)).With("cluster", "demo", "member", "demo-1")
	log.Info("postgres", "pg", "2026-11-28 00:45:30.123 UTC [42] LOG:  database system is ready")
	log.Error("postgres", "pg", "2026-11-28 00:45:30.124 UTC [43] STATEMENT:  ALTER ROLE app PASSWORD 's3cret' LOGIN")
	log.With("cmd", "pg_basebackup").Info("postgres", "pg", "waiting for checkpoint")
	log.Info("promoted", "timeline", 2, "conninfo", "host=x password=y", "why", "leader key free")
	log.Warn("connect", "err", "postgres://postgres:hunter2@h/db: refused")
	log.Debug("tick")
	w.Close()

	var got []string
	if err := Read(context.Background(), dir, ReadOptions{}, func(l Line) error {
		got = append(got, l.Source+"|"+l.Level+"|"+l.Text)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"postgres|INFO|[42] LOG:  database system is ready",
		"postgres|ERROR|[43] STATEMENT:  ALTER ROLE app PASSWORD '[redacted]' LOGIN",
		"postgres|INFO|pg_basebackup: waiting for checkpoint",
		`agent|INFO|promoted timeline=2 conninfo=[redacted] why="leader key free"`,
		`agent|WARN|connect err="postgres://postgres:[redacted]@h/db: refused"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("member log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if s := agentLog.String(); !strings.Contains(s, "msg=connect") || strings.Contains(s, "promoted") || strings.Contains(s, "tick") || !strings.Contains(s, "STATEMENT") {
		t.Errorf("the agent's own log (level warn) got:\n%s", s)
	}
}
