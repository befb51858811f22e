package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/importer"
	"github.com/pgfleet/pgfleet/internal/migrate"
)

// importOptions are `pgfleet import`'s flags: the importer's options and
// which of its steps to run.
type importOptions struct {
	importer.Options

	online  bool // logical replication instead of a copy
	status  bool
	cutover bool
	abort   bool
	json    bool
}

func newImportCmd(cf *clientFlags) *cobra.Command {
	var o importOptions
	cmd := &cobra.Command{
		Use:   "import NAME --from URL [--online | --status | --cutover [--lock-source] | --abort]",
		Short: "Copy a database from any PostgreSQL server into a cluster (offline in parallel, or online by logical replication)",
		Long: `Copy one database of an existing PostgreSQL server into cluster NAME: its
roles first (without superuser or replication attributes; --no-roles leaves
them and the objects' owners out), then its schema and data with pg_dump and
pg_restore in parallel (--jobs), straight into the cluster's primary. The
target database has the source's name and must hold no table, unless --clean
drops what the source also has. Every table's rows are counted on both sides
at the end.

Give the source's password in PGPASSWORD (or a ~/.pgpass) rather than in the
URL, which ` + "`ps`" + ` shows. Writes to the source made during the import are not
copied: stop the app, or make the source read-only, first. Import only from a
source you trust: its dump is restored as the cluster's superuser, so its
functions, defaults and index expressions run with that power while it loads.

--online copies the schema, then lets the cluster's primary subscribe to a
publication of the source (logical replication), which copies the data and
then follows every change while the app keeps writing to the source. It
checks first that the source can (wal_level=logical, free slots and
walsenders, a role with REPLICATION, tables with a primary key or replica
identity; --replica-identity-full sets FULL on those without) and says what
to change. --status shows the initial copy's progress, then the lag (--json).
--cutover waits until the lag is nearly zero, with --lock-source makes the
source database read-only and ends its sessions, waits for the last change,
copies the sequences' values, drops the subscription, the source's slot and
publication, and reports the write pause. --abort drops all of that and
leaves the copied data. All of them take the same --from: the import's
state is its subscription in the cluster and its publication and slot on
the source, named pgfleet_import_<database>. The cluster's primary connects
to the source with --from's URL and password, which PostgreSQL keeps in the
subscription's catalog row (readable by superusers only) until the cutover
or abort drops it.`,
		Args: exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.From == "" {
				return usageError{errors.New("--from: give the source's URL, postgres://USER@HOST:PORT/DATABASE")}
			}
			if _, err := migrate.SplitURL(o.From); err != nil {
				return usageError{fmt.Errorf("--from: %w", err)}
			}
			modes := 0
			for _, on := range []bool{o.online, o.status, o.cutover, o.abort} {
				if on {
					modes++
				}
			}
			if modes > 1 {
				return usageError{errors.New("give one of --online, --status, --cutover and --abort")}
			}
			if o.LockSource && !o.cutover {
				return usageError{errors.New("--lock-source goes with --cutover")}
			}
			if o.json && !o.status {
				return usageError{errors.New("--json goes with --status")}
			}
			if o.FullIdentity && !o.online {
				return usageError{errors.New("--replica-identity-full goes with --online")}
			}
			if o.Jobs < 1 || o.Jobs > 32 {
				return usageError{fmt.Errorf("--jobs %d: want 1 to 32", o.Jobs)}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
			ctx := cmd.Context()
			switch {
			case o.online:
				return importer.Online(ctx, c, args[0], o.Options, out, errw)
			case o.status:
				p, err := importer.Status(ctx, c, args[0], o.From)
				if err != nil {
					return err
				}
				if o.json {
					return printJSON(out, p)
				}
				importer.PrintProgress(out, p)
				return nil
			case o.cutover:
				return importer.Cutover(ctx, c, args[0], o.Options, out, errw)
			case o.abort:
				return importer.Abort(ctx, c, args[0], o.From, out)
			}
			return importer.Offline(ctx, c, args[0], o.Options, out, errw)
		},
	}
	cmd.Flags().StringVar(&o.From, "from", "", "the source database's URL (required)")
	cmd.Flags().IntVar(&o.Jobs, "jobs", 2, "parallel pg_dump and pg_restore workers")
	cmd.Flags().BoolVar(&o.NoRoles, "no-roles", false, "copy no roles; objects belong to the cluster's superuser")
	cmd.Flags().BoolVar(&o.Clean, "clean", false, "drop the target's objects that the source also has before loading")
	cmd.Flags().BoolVar(&o.online, "online", false, "import by logical replication while the source stays in use")
	cmd.Flags().BoolVar(&o.FullIdentity, "replica-identity-full", false, "with --online: give the source's tables without a primary key REPLICA IDENTITY FULL")
	cmd.Flags().BoolVar(&o.status, "status", false, "show an online import's progress and lag")
	cmd.Flags().BoolVar(&o.json, "json", false, "with --status: print JSON")
	cmd.Flags().BoolVar(&o.cutover, "cutover", false, "finish an online import: wait for the last change, copy sequences, drop the replication")
	cmd.Flags().BoolVar(&o.LockSource, "lock-source", false, "with --cutover: make the source database read-only and end its sessions first")
	cmd.Flags().BoolVar(&o.abort, "abort", false, "stop an online import and drop its subscription, slot and publication")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 10*time.Minute, "with --cutover: how long to wait for the initial copy and the lag")
	return cmd
}
