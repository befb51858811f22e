package memberlog

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pgLine is a typical postgres line as the agent logs it.
const pgLine = "2026-11-28 00:45:30.123 UTC [4242] LOG:  checkpoint complete: wrote 7 buffers (0.2%); 0 WAL file(s) added, 0 removed, 0 recycled; write=0.001 s"

// BenchmarkPostgresLine logs a postgres line as the agent's supervisor
// does: to the agent's own log alone (the peer), and to it and the member's
// log. The ratio of the two is what keeping member logs costs per line.
func BenchmarkPostgresLine(b *testing.B) {
	for _, tc := range []struct {
		name string
		tee  bool
	}{{"agent-log-only", false}, {"agent-log-and-member-log", true}} {
		b.Run(tc.name, func(b *testing.B) {
			dir := b.TempDir()
			f, err := os.Create(filepath.Join(dir, "agent.log"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			var h slog.Handler = slog.NewTextHandler(f, nil)
			if tc.tee {
				w, err := Open(filepath.Join(dir, "log"), 0)
				if err != nil {
					b.Fatal(err)
				}
				defer w.Close()
				h = Tee(h, w)
			}
			log := slog.New(h).With("cluster", "demo", "member", "demo-1")
			b.ReportAllocs()
			for b.Loop() {
				log.Info("postgres", "pg", pgLine)
			}
		})
	}
}

// BenchmarkReadFull reads a full member log (both files, 8 MiB) with a
// since that keeps only its last lines: what `pgfleet logs --since 1m`
// costs its host on a busy member.
func BenchmarkReadFull(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "log")
	w, err := Open(dir, 0)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	n := 0
	for {
		w.Append(Line{Time: t0.Add(time.Duration(n) * time.Millisecond), Source: SourcePostgres, Text: StripPostgresTime(pgLine)})
		n++
		if _, err := os.Stat(filepath.Join(dir, older)); err == nil && n%1000 == 0 {
			if fi, _ := os.Stat(filepath.Join(dir, current)); fi.Size() > DefaultMaxBytes-4096 {
				break
			}
		}
	}
	w.Close()
	since := t0.Add(time.Duration(n-100) * time.Millisecond)
	b.SetBytes(2 * DefaultMaxBytes)
	b.ResetTimer()
	for b.Loop() {
		got := 0
		if err := Read(context.Background(), dir, ReadOptions{Since: since}, func(Line) error { got++; return nil }); err != nil {
			b.Fatal(err)
		}
		if got != 100 {
			b.Fatalf("read %d lines since the last 100, want 100", got)
		}
	}
}
