package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/backup"
)

// walFlags are the flags of wal-push and wal-fetch, which postgres runs
// for every WAL file. The agent's archive_command and restore_command go
// through its WAL socket (--socket, --cluster, --member): the agent holds
// the store's credentials and the backup key, so the postgres OS user never
// does. With --store they talk to the store directly, without etcd or an
// agent, with the key in --key-file and AWS credentials in the environment:
// for a user running them by hand.
type walFlags struct {
	socket  string
	member  string
	from    string // wal-fetch only
	store   string
	keyFile string
	cluster string
	timeout time.Duration
}

func (f *walFlags) register(cmd *cobra.Command, fetch bool) {
	cmd.Flags().StringVar(&f.socket, "socket", "", "the local agent's WAL socket (DATA-DIR/run/wal.sock): the agent reads or fetches the file with the cluster's store and key")
	cmd.Flags().StringVar(&f.member, "member", "", "with --socket: the member whose postgres runs this")
	if fetch {
		cmd.Flags().StringVar(&f.from, "from", "", "with --socket: the cluster whose archive a restore replays (default: the member's own cluster's)")
	}
	cmd.Flags().StringVar(&f.store, "store", "", "without an agent: object store URL, file:///PATH or s3://BUCKET/prefix?endpoint=HOST:PORT (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)")
	cmd.Flags().StringVar(&f.cluster, "cluster", "", "cluster whose archive this is (with --socket: the member's cluster)")
	cmd.Flags().StringVar(&f.keyFile, "key-file", "", "with --store: encryption key file (32 bytes in hex or base64, mode 0600); without it objects are not encrypted")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "give up after this long, so that postgres retries rather than waits forever")
}

// check refuses flags that do not make one of the two ways. Its errors are
// usageErrors, which exit with status 2.
func (f *walFlags) check() error {
	var err error
	switch {
	case f.socket != "" && f.store != "":
		err = errors.New("--socket and --store exclude each other: --socket goes through the local agent (what pgfleet's archive_command does), --store reaches the store directly")
	case f.socket == "" && f.store == "":
		err = errors.New("give --socket PATH (through the local agent, with --cluster and --member) or --store URL (directly, with --cluster)")
	case f.cluster == "":
		err = errors.New("--cluster is required")
	case f.socket != "" && f.member == "":
		err = errors.New("--member is required with --socket: the agent reads and writes WAL only of members it runs")
	case f.socket != "" && f.keyFile != "":
		err = errors.New("--key-file goes with --store: through --socket the agent uses the cluster's key itself")
	case f.store != "" && (f.member != "" || f.from != ""):
		err = errors.New("--member and --from go with --socket: with --store, --cluster names the archive")
	}
	if err != nil {
		return usageError{err}
	}
	return nil
}

// archive opens the archive --store names.
func (f *walFlags) archive(ctx context.Context) (*backup.Archive, error) {
	a, err := backup.OpenArchive(ctx, f.store, f.cluster, f.keyFile)
	if err != nil {
		return nil, usageError{err}
	}
	return a, nil
}

func (f *walFlags) request() agent.WALRequest {
	return agent.WALRequest{Cluster: f.cluster, Member: f.member, From: f.from}
}

// newWALPushCmd is archive_command:
//
//	archive_command = 'pgfleet wal-push --socket DATA-DIR/run/wal.sock --cluster C --member M %p'
//	archive_command = 'pgfleet wal-push --store URL --cluster C [--key-file F] %p'
//
// It exits 0 only once the file is durable in the store, or was already
// archived with the same content.
func newWALPushCmd() *cobra.Command {
	f := &walFlags{}
	cmd := &cobra.Command{
		Use:    "wal-push (--socket PATH --member M | --store URL [--key-file FILE]) --cluster NAME PATH",
		Short:  "Archive one WAL file (postgres' archive_command)",
		Hidden: true,
		Args:   exactArgs("the PATH of a WAL file (%p)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			if f.socket != "" {
				return agent.NewWALClient(f.socket).Push(ctx, f.request(), args[0])
			}
			a, err := f.archive(ctx)
			if err != nil {
				return err
			}
			return a.PushWAL(ctx, args[0])
		},
	}
	f.register(cmd, false)
	return cmd
}

// newWALFetchCmd is restore_command:
//
//	restore_command = 'pgfleet wal-fetch --socket DATA-DIR/run/wal.sock --cluster C --member M [--from SRC] %f %p'
//	restore_command = 'pgfleet wal-fetch --store URL --cluster C [--key-file F] %f %p'
//
// Postgres asks for files that do not exist as a matter of course (the next
// timeline's history file, the segment after the newest): for those it exits
// 1 with one calm line. Any other failure (an unreachable agent or store, a
// corrupt object, a wrong key) exits 2 with the error.
func newWALFetchCmd() *cobra.Command {
	f := &walFlags{}
	cmd := &cobra.Command{
		Use:    "wal-fetch (--socket PATH --member M [--from CLUSTER] | --store URL [--key-file FILE]) --cluster NAME NAME DEST",
		Short:  "Restore one WAL file from the archive (postgres' restore_command)",
		Hidden: true,
		Args:   exactArgs("the NAME of a WAL file (%f)", "its DEST path (%p)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			var err error
			if f.socket != "" {
				err = agent.NewWALClient(f.socket).Fetch(ctx, f.request(), args[0], args[1])
			} else {
				var a *backup.Archive
				if a, err = f.archive(ctx); err != nil {
					return err
				}
				err = a.FetchWAL(ctx, args[0], args[1])
			}
			if errors.Is(err, backup.ErrNotFound) || errors.Is(err, agent.ErrNotArchived) {
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
	f.register(cmd, true)
	return cmd
}
