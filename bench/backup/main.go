// Command backup times pgfleet's backup pipeline against one PostgreSQL
// instance: the base backup the agent takes (pg_basebackup's tar streamed
// through zstd into the store, as internal/agent does) and its restore into
// an empty directory. bench/backup/run.sh runs it beside pgBackRest and prints the table.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

func main() {
	var (
		op      = flag.String("op", "", "backup or restore")
		host    = flag.String("host", "127.0.0.1", "postgres host")
		port    = flag.Int("port", 5432, "postgres port")
		user    = flag.String("user", "postgres", "replication user")
		pass    = flag.String("password", "", "its password")
		store   = flag.String("store", "", "store URL")
		id      = flag.String("id", "", "backup id (restore)")
		dest    = flag.String("dest", "", "directory to restore into")
		workDir = flag.String("work", "", "a directory the postgres OS user can write, for temporary files")
		cpuProf = flag.String("cpuprofile", "", "write a CPU profile of the operation to this file")
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
		return fmt.Errorf("-op %q: want backup or restore", op)
	}
	return nil
}
