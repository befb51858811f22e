package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

func newAttachCmd(cf *clientFlags) *cobra.Command {
	var req api.AttachRequest
	var out string
	cmd := &cobra.Command{
		Use:   "attach CLUSTER --app APP [--region R] [--out FILE]",
		Short: "Give an app a database and a role of its own, and print its DATABASE_URL",
		Long: `Give an app a database and a least-privileged role, both named after
the app: the role owns the database and can create tables in it, and can
neither connect to another app's database nor change roles or the server.

Prints the app's URLs as KEY=VALUE lines, for an env file or a secrets
manager: DATABASE_URL reaches the primary through the routing proxies (it
follows failovers), DATABASE_REPLICA_URL the nearest member fit for reads.
The password in them is shown only this once; --out writes them to a file
(mode 0600) instead. ` + "`pgfleet users rotate APP --cluster CLUSTER`" + ` makes a new one.`,
		Args: exactArgs("a CLUSTER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := fleet.ValidateClusterName(args[0]); err != nil {
				return usageError{err}
			}
			if req.App == "" {
				return usageError{fmt.Errorf("--app is required: the app's name, which names its database and role")}
			}
			if err := fleet.ValidateAppName(req.App); err != nil {
				return usageError{err}
			}
			if req.Region != "" {
				if err := fleet.ValidateRegion(req.Region); err != nil {
					return usageError{err}
				}
			}
			if err := checkOutFile(out); err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.Attach(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			env := fmt.Sprintf("DATABASE_URL=%s\nDATABASE_REPLICA_URL=%s\n", v.URL, v.ReplicaURL)
			if out != "" {
				if err := writeSecretFile(out, env); err != nil {
					return fmt.Errorf("app %s attached, but %w; `pgfleet users rotate %s --cluster %s` makes a new password", req.App, err, req.App, args[0])
				}
				fmt.Fprintf(cmd.OutOrStdout(), "app %s attached to cluster %s: database %s, role %s; its URLs are in %s (mode 0600)\n", req.App, args[0], v.Database, v.User, out)
				return nil
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprint(cmd.OutOrStdout(), env)
			fmt.Fprintf(cmd.ErrOrStderr(), "app %s attached to cluster %s: database %s, role %s; the password is shown only this once\n", req.App, args[0], v.Database, v.User)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.App, "app", "", "the app's name: its database and role get it (required)")
	f.StringVar(&req.Region, "region", "", "region the app runs in: the URLs list its hosts' proxies (default: the cluster's primary region)")
	f.StringVar(&out, "out", "", "write the KEY=VALUE lines to this file (mode 0600) instead of showing them")
	f.BoolVar(&cf.json, "json", false, "print JSON (with the password)")
	return cmd
}

func newDetachCmd(cf *clientFlags) *cobra.Command {
	var app string
	var dropData, yes bool
	cmd := &cobra.Command{
		Use:   "detach CLUSTER --app APP [--drop-data --yes]",
		Short: "Take an app's access away; its data is kept unless --drop-data",
		Long: `Take an app's access away: its sessions end and its role can no longer
log in. Its database is kept, and ` + "`pgfleet attach`" + ` gives it back with a new
password; --drop-data (with --yes) deletes the database and the role.`,
		Args: exactArgs("a CLUSTER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := fleet.ValidateClusterName(args[0]); err != nil {
				return usageError{err}
			}
			if app == "" {
				return usageError{fmt.Errorf("--app is required: the app to detach")}
			}
			if err := fleet.ValidateAppName(app); err != nil {
				return usageError{err}
			}
			if dropData && !yes {
				return usageError{fmt.Errorf("--drop-data deletes database %s of cluster %s and all of its data: add --yes to confirm", app, args[0])}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if err := c.Detach(cmd.Context(), args[0], app, dropData); err != nil {
				return err
			}
			if dropData {
				fmt.Fprintf(cmd.OutOrStdout(), "app %s detached from cluster %s: database %s and role %s deleted\n", app, args[0], app, app)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "app %s detached from cluster %s: it can no longer log in; database %s is kept (`pgfleet attach %s --app %s` gives it back)\n", app, args[0], app, args[0], app)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&app, "app", "", "the app to detach (required)")
	f.BoolVar(&dropData, "drop-data", false, "also delete the app's database and role")
	f.BoolVar(&yes, "yes", false, "confirm --drop-data")
	return cmd
}
