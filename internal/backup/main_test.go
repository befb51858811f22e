package backup

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for `pgfleet wal-push` and
// `pgfleet wal-fetch` (same arguments, same exit codes), so that postgres
// under test archives and restores through a real archive_command and
// restore_command without building cmd/pgfleet.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "wal-push" || os.Args[1] == "wal-fetch") {
		os.Exit(walHelper(os.Args[1], os.Args[2:]))
	}
	os.Exit(m.Run())
}

func walHelper(cmd string, args []string) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	store := fs.String("store", "", "")
	cluster := fs.String("cluster", "", "")
	keyFile := fs.String("key-file", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := OpenArchive(ctx, *store, *cluster, *keyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	switch {
	case cmd == "wal-push" && fs.NArg() == 1:
		err = a.PushWAL(ctx, fs.Arg(0))
	case cmd == "wal-fetch" && fs.NArg() == 2:
		err = a.FetchWAL(ctx, fs.Arg(0), fs.Arg(1))
		if errors.Is(err, ErrNotFound) {
			fmt.Fprintf(os.Stderr, "%s is not in the archive\n", fs.Arg(0))
			return 1
		}
	default:
		fmt.Fprintln(os.Stderr, "error: bad arguments", args)
		return 2
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	return 0
}
