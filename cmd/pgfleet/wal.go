package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/backup"
)

// walFlags are the flags of wal-push and wal-fetch. Everything they need is
// on the command line (and AWS credentials in the environment): postgres
// runs them for every WAL file, so they talk to the store directly, without
// etcd or an agent.
type walFlags struct {
	store   string
	cluster string
	keyFile string
	timeout time.Duration
}

func (f *walFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.store, "store", "", "object store URL: file:///PATH or s3://BUCKET/prefix?endpoint=HOST:PORT (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)")
	cmd.Flags().StringVar(&f.cluster, "cluster", "", "cluster whose archive this is")
	cmd.Flags().StringVar(&f.keyFile, "key-file", "", "encryption key file (32 bytes in hex or base64, mode 0600); without it objects are not encrypted")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "give up after this long, so that postgres retries rather than waits forever")
}

// archive opens the archive the flags name. Its errors are usageErrors,
// which exit with status 2.
func (f *walFlags) archive(ctx context.Context) (*backup.Archive, error) {
	if f.store == "" || f.cluster == "" {
		return nil, usageError{errors.New("--store and --cluster are required")}
	}
	a, err := backup.OpenArchive(ctx, f.store, f.cluster, f.keyFile)
	if err != nil {
		return nil, usageError{err}
	}
	return a, nil
}

// newWALPushCmd is archive_command:
//
//	archive_command = 'pgfleet wal-push --store URL --cluster C [--key-file F] %p'
//
// It exits 0 only once the file is durable in the store, or was already
// archived with the same content.
func newWALPushCmd() *cobra.Command {
	f := &walFlags{}
	cmd := &cobra.Command{
		Use:    "wal-push --store URL --cluster NAME [--key-file FILE] PATH",
		Short:  "Archive one WAL file (postgres' archive_command)",
		Hidden: true,
		Args:   exactArgs("the PATH of a WAL file (%p)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			a, err := f.archive(ctx)
			if err != nil {
				return err
			}
			return a.PushWAL(ctx, args[0])
		},
	}
	f.register(cmd)
	return cmd
}

// newWALFetchCmd is restore_command:
//
//	restore_command = 'pgfleet wal-fetch --store URL --cluster C [--key-file F] %f %p'
//
// Postgres asks for files that do not exist as a matter of course (the next
// timeline's history file, the segment after the newest): for those it exits
// 1 with one calm line. Any other failure (an unreachable store, a corrupt
// object, a wrong key) exits 2 with the error.
func newWALFetchCmd() *cobra.Command {
	f := &walFlags{}
	cmd := &cobra.Command{
		Use:    "wal-fetch --store URL --cluster NAME [--key-file FILE] NAME DEST",
		Short:  "Restore one WAL file from the archive (postgres' restore_command)",
		Hidden: true,
		Args:   exactArgs("the NAME of a WAL file (%f)", "its DEST path (%p)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			a, err := f.archive(ctx)
			if err != nil {
				return err
			}
			err = a.FetchWAL(ctx, args[0], args[1])
			if errors.Is(err, backup.ErrNotFound) {
				// Postgres asks for files that do not exist (the next
				// timeline's history, the segment after the last one) every
				// few seconds on a standby and at the end of a recovery: a
				// quiet line, not an error.
				return quietExit{code: 1, msg: fmt.Sprintf("pgfleet wal-fetch: %s is not in the archive", args[0])}
			}
			if err != nil {
				return usageError{err} // exit status 2
			}
			return nil
		},
	}
	f.register(cmd)
	return cmd
}
