// Command backup times pgfleet's backup pipeline against one PostgreSQL
// instance: the base backup the agent takes (pg_basebackup's tar streamed
// through zstd into the store, as internal/agent does) and its restore into
// an empty directory; and, with -op rpo, how long a commit takes to reach the
// store through the WAL stream a primary's agent runs (backup.Streamer).
// bench/backup/run.sh runs it beside pgBackRest and prints the table.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

func main() {
	var (
		op      = flag.String("op", "", "backup, restore or rpo")
		host    = flag.String("host", "127.0.0.1", "postgres host")
		port    = flag.Int("port", 5432, "postgres port")
		user    = flag.String("user", "postgres", "replication user")
		pass    = flag.String("password", "", "its password")
		store   = flag.String("store", "", "store URL")
		id      = flag.String("id", "", "backup id (restore)")
		dest    = flag.String("dest", "", "directory to restore into")
		workDir = flag.String("work", "", "a directory the postgres OS user can write, for temporary files")
		cpuProf = flag.String("cpuprofile", "", "write a CPU profile of the operation to this file")
		commits = flag.Int("commits", 20, "commits timed (rpo)")
	)
	flag.Parse()
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/backup:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if *op == "rpo" {
		if err := rpo(*host, *port, *user, *pass, *store, *commits); err != nil {
			fmt.Fprintln(os.Stderr, "bench/backup:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*op, *host, *port, *user, *pass, *store, *id, *dest, *workDir); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench/backup:", err)
		os.Exit(1)
	}
}

func run(op, host string, port int, user, pass, storeURL, id, dest, work string) error {
	ctx := context.Background()
	a, err := backup.OpenArchiveKey(ctx, storeURL, "bench", "")
	if err != nil {
		return err
	}
	start := time.Now()
	switch op {
	case "backup":
		bin, err := postgres.FindBin("")
		if err != nil {
			return err
		}
		u, err := postgres.CurrentOrPostgres()
		if err != nil {
			return err
		}
		inst := postgres.New(postgres.Config{Bin: bin, DataDir: filepath.Join(work, "unused"), User: u})
		src := postgres.ConnInfo{Host: host, Port: port, User: user, Password: pass, Database: "postgres"}
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() {
			err := inst.StreamBackup(ctx, src, w)
			w.Close()
			done <- err
		}()
		m, err := a.PutBackup(ctx, backup.NewBackupID(time.Now()), r, backup.BackupInfo{Member: "bench", Wait: func() error { return <-done }})
		r.Close()
		if err != nil {
			return err
		}
		fmt.Printf("id %s seconds %.2f raw %d stored %d\n", m.ID, time.Since(start).Seconds(), m.RawBytes, m.StoredBytes)
	case "restore":
		if _, err := a.GetBackup(ctx, id, dest, nil); err != nil {
			return err
		}
		fmt.Printf("seconds %.2f\n", time.Since(start).Seconds())
	default:
		return fmt.Errorf("-op %q: want backup, restore or rpo", op)
	}
	return nil
}

// rpo streams the server's WAL to the store as a primary's agent does, and
// times commits from their acknowledgement until the store held the WAL up
// to them: on a quiet database, commits at irregular intervals; then the
// same while another session commits every 10 ms, so the stream is never
// idle and each timed commit waits for its turn in the upload interval. It
// prints a line "stream,SECONDS..." and a line "stream-busy,SECONDS...".
func rpo(host string, port int, user, pass, storeURL string, commits int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := backup.OpenArchiveKey(ctx, storeURL, "rpo", "")
	if err != nil {
		return err
	}
	src := postgres.ConnInfo{Host: host, Port: port, User: user, Password: pass, Database: "postgres"}
	var mu sync.Mutex
	var uploaded backup.LSN
	changed := make(chan struct{}, 1)
	st := &backup.Streamer{Source: src, Archive: a, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), OnUpload: func(_ uint32, end backup.LSN) {
		mu.Lock()
		uploaded = end
		mu.Unlock()
		select {
		case changed <- struct{}{}:
		default:
		}
	}}
	go st.Run(ctx)
	conn, err := postgres.Connect(ctx, src)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS rpo (i int, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		return err
	}
	timed := func() ([]string, error) {
		var out []string
		for i := range commits {
			// Irregular: the commits fall anywhere in the stream's interval.
			time.Sleep(time.Duration(200+rand.IntN(1300)) * time.Millisecond)
			if _, err := conn.Exec(ctx, "INSERT INTO rpo (i) VALUES ($1)", i); err != nil {
				return nil, err
			}
			acked := time.Now()
			// The commit was flushed before it was acknowledged: the flush
			// position now is at or past its record.
			var flushed string
			if err := conn.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn()::text").Scan(&flushed); err != nil {
				return nil, err
			}
			want, err := backup.ParseLSN(flushed)
			if err != nil {
				return nil, err
			}
			for {
				mu.Lock()
				done := uploaded >= want
				mu.Unlock()
				if done {
					break
				}
				select {
				case <-changed:
				case <-time.After(10 * time.Second):
					return nil, fmt.Errorf("commit %d at %s not in the store after 10s", i, want)
				}
			}
			out = append(out, fmt.Sprintf("%.3f", time.Since(acked).Seconds()))
		}
		return out, nil
	}
	quiet, err := timed()
	if err != nil {
		return err
	}
	fmt.Println("stream," + strings.Join(quiet, " "))

	bg, err := postgres.Connect(ctx, src)
	if err != nil {
		return err
	}
	defer bg.Close(context.Background())
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wctx.Err() == nil {
			bg.Exec(wctx, "INSERT INTO rpo (i) VALUES (-1)")
			time.Sleep(10 * time.Millisecond)
		}
	}()
	busy, err := timed()
	stop()
	<-done
	if err != nil {
		return err
	}
	fmt.Println("stream-busy," + strings.Join(busy, " "))
	return nil
}
