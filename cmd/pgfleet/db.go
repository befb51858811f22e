package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

func newDBCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "db",
		Short: "Manage a cluster's databases: create, list, delete",
		Long: `Manage a cluster's databases.

A database made here is owned by the cluster's superuser; every user of
` + "`pgfleet users`" + ` can connect to it, apps cannot. An app gets a database of its
own with ` + "`pgfleet attach`" + `.`,
	}
	cmd.AddCommand(newDBCreateCmd(cf), newDBListCmd(cf), newDBDeleteCmd(cf))
	return cmd
}

// checkDBArgs checks a cluster and a database name before anything is sent.
func checkDBArgs(cluster, db string) error {
	if err := fleet.ValidateClusterName(cluster); err != nil {
		return usageError{err}
	}
	if err := fleet.ValidateDatabaseName(db); err != nil {
		return usageError{err}
	}
	return nil
}

func newDBCreateCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "create CLUSTER DB",
		Short: "Create a database",
		Args:  exactArgs("a CLUSTER", "a DB name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkDBArgs(args[0], args[1]); err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if err := c.CreateDatabase(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "database %s created in cluster %s\n", args[1], args[0])
			return nil
		},
	}
}

func newDBListCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list CLUSTER",
		Short: "List a cluster's databases, with their owners and sizes",
		Args:  exactArgs("a CLUSTER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := fleet.ValidateClusterName(args[0]); err != nil {
				return usageError{err}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			dbs, err := c.Databases(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), dbs)
			}
			t := table(cmd.OutOrStdout())
			fmt.Fprintln(t, "DATABASE\tOWNER\tSIZE\tAPP")
			for _, d := range dbs {
				app := "-"
				if d.App {
					app = d.Owner
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", d.Name, d.Owner, fleet.FormatBytes(d.Bytes), app)
			}
			return t.Flush()
		},
	}
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	return cmd
}

func newDBDeleteCmd(cf *clientFlags) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "delete CLUSTER DB --yes",
		Short: "Delete a database and its data, ending its sessions",
		Args:  exactArgs("a CLUSTER", "a DB name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkDBArgs(args[0], args[1]); err != nil {
				return err
			}
			if !yes {
				return usageError{fmt.Errorf("db delete deletes database %s of cluster %s and all of its data: add --yes to confirm", args[1], args[0])}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if err := c.DeleteDatabase(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "database %s deleted from cluster %s\n", args[1], args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm the deletion")
	return cmd
}
