package importer

import (
	"context"
	"fmt"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/migrate"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

// Probe checks a source before a cluster is made for it (`create
// --import-from`): pg_dump is here, the source answers (within 5 s, with
// libpq's message when it does not: a wrong password, nothing listening),
// its database's name is one the cluster can hold, its major version is
// no newer than the cluster's will be (this machine's PostgreSQL, which
// the fleet's hosts run too), and, online, it can publish
// (migrate.CheckOnline). It changes nothing. What only the
// cluster can answer (its extensions, its free disk) is checked by the
// import itself, before it copies anything.
func Probe(ctx context.Context, o Options, online bool) error {
	if _, err := migrate.SplitURL(o.From); err != nil {
		return err
	}
	bin, err := postgres.FindBin("")
	if err != nil {
		return err
	}
	src, err := Connect(ctx, o.From, "the source")
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	// The database is made in the cluster with the source's name.
	if db := src.Config().Database; db != "" && db != "postgres" {
		if err := fleet.ValidateDatabaseName(db); err != nil {
			return fmt.Errorf("the source's database: %w", err)
		}
	}
	info, err := migrate.InspectSource(ctx, src)
	if err != nil {
		return err
	}
	if err := migrate.Check(info, migrate.Target{VersionNum: bin.Version * 10000, Available: info.Extensions, FreeBytes: -1}, false); err != nil {
		return err
	}
	if !online {
		return nil
	}
	repl, tables, err := migrate.InspectReplication(ctx, src)
	if err != nil {
		return err
	}
	if err := migrate.CheckOnline(repl, tables, o.FullIdentity); err != nil {
		return fmt.Errorf("online import: %w", err)
	}
	return nil
}

// Redact returns a source URL without its password, to show in a message
// or a command to run.
func Redact(from string) string {
	c, err := migrate.SplitURL(from)
	if err != nil {
		return "URL"
	}
	return c.URL
}
