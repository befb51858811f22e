package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/importer"
	"github.com/pgfleet/pgfleet/internal/migrate"
)

// createImport is `create --import-from`: a new cluster born with a copy
// of an existing database.
type createImport struct {
	importer.Options
	online bool
}

func (ci *createImport) flags(f *pflag.FlagSet) {
	f.StringVar(&ci.From, "import-from", "", "import this database (postgres://USER@HOST:PORT/DATABASE; password in PGPASSWORD) into the new cluster once its members run, as `pgfleet import` does")
	f.BoolVar(&ci.online, "online", false, "with --import-from: import by logical replication; finish with `pgfleet import NAME --from URL --cutover`")
	f.BoolVar(&ci.NoRoles, "no-roles", false, "with --import-from: copy no roles")
	f.BoolVar(&ci.FullIdentity, "replica-identity-full", false, "with --import-from --online: give the source's tables without a primary key REPLICA IDENTITY FULL")
}

// check refuses bad flags, then a source that cannot be imported from,
// before the cluster is created: nothing is made for an import that
// cannot start.
func (ci *createImport) check(cmd *cobra.Command, name string) error {
	if ci.From == "" {
		for _, f := range []string{"online", "no-roles", "replica-identity-full"} {
			if cmd.Flags().Changed(f) {
				return usageError{fmt.Errorf("--%s goes with --import-from URL", f)}
			}
		}
		return nil
	}
	if ci.FullIdentity && !ci.online {
		return usageError{errors.New("--replica-identity-full goes with --online")}
	}
	ci.Jobs = 2
	if err := importer.Probe(cmd.Context(), ci.Options, ci.online); err != nil {
		return fmt.Errorf("create %s refused, nothing created: --import-from: %w", name, err)
	}
	return nil
}

// run waits for the new cluster's members, then imports. A failure from
// here on leaves the cluster made: the error says so, what the cluster
// holds, and the one command that goes on.
func (ci *createImport) run(cmd *cobra.Command, c *api.Client, v api.ClusterView, timeout time.Duration, start time.Time) error {
	goOn := fmt.Sprintf("pgfleet import %s --from %s", v.Name, importer.Redact(ci.From))
	if ci.online {
		goOn += " --online"
	}
	if sc, _ := migrate.SplitURL(ci.From); sc.Password != "" {
		// The command shown leaves the password out of the URL.
		goOn = "PGPASSWORD=… " + goOn
	}
	headline := fmt.Sprintf("cluster %s created on port %d", v.Name, v.Port)
	if err := followNewCluster(cmd, c, v, headline, "ready", true, timeout, start); err != nil {
		return fmt.Errorf("%w\ncluster %s exists and nothing was imported yet: once `pgfleet status %s` shows its primary, run `%s` (or remove the cluster with `pgfleet destroy %s --yes`)", err, v.Name, v.Name, goOn, v.Name)
	}
	out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
	var err error
	if ci.online {
		err = importer.Online(cmd.Context(), c, v.Name, ci.Options, out, errw)
	} else {
		err = importer.Offline(cmd.Context(), c, v.Name, ci.Options, out, errw)
	}
	if err != nil {
		return fmt.Errorf("%w\ncluster %s exists and runs, but the import did not finish; its database may hold part of the source's: run `%s --clean` to import again over it (or remove the cluster with `pgfleet destroy %s --yes`)", err, v.Name, goOn, v.Name)
	}
	return nil
}
