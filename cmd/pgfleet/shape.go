package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

func newReplicaCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "replica", Short: "Add or remove a cluster's read replicas"}
	var region string
	add := &cobra.Command{
		Use:   "add NAME --region R",
		Short: "Add a read replica in region R: it clones from a streaming standby (or the primary) and then streams",
		Args:  exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := fleet.ValidateRegion(region); err != nil {
				return usageError{fmt.Errorf("--region: %w", err)}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.AddReplica(cmd.Context(), args[0], region)
			if err != nil {
				return err
			}
			return printShape(cmd.OutOrStdout(), cf, v)
		},
	}
	add.Flags().StringVar(&region, "region", "", "the region of the new replica (required)")
	add.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	var yes bool
	remove := &cobra.Command{
		Use:   "remove NAME MEMBER --yes",
		Short: "Remove a replica or standby: its data is deleted and its slot dropped",
		Args:  exactArgs("a cluster NAME", "a MEMBER id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return usageError{fmt.Errorf("removing %s deletes its data: add --yes to confirm", args[1])}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := api.UntilOutOfSync(func() (api.ShapeView, error) { return c.RemoveMember(cmd.Context(), args[0], args[1]) }, waitingOutOfSync(cmd))
			if err != nil {
				return err
			}
			return printShape(cmd.OutOrStdout(), cf, v)
		},
	}
	remove.Flags().BoolVar(&yes, "yes", false, "confirm the removal")
	remove.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	cmd.AddCommand(add, remove)
	return cmd
}

func newHACmd(cf *clientFlags) *cobra.Command {
	var size int
	cmd := &cobra.Command{
		Use:   "ha NAME --size N",
		Short: "Set how many members a cluster has in its primary region (the primary and N-1 standbys)",
		Long: `Set how many members a cluster has in its primary region. New standbys
clone from a streaming standby (or the primary) and then stream; removed ones are the newest
standbys that neither lead nor hold acknowledged commits alone (sync
mode), and their data is deleted and their slots dropped.`,
		Args: exactArgs("a cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if size < 1 || size > fleet.MaxHA {
				return usageError{fmt.Errorf("--size %d: want 1 to %d", size, fleet.MaxHA)}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := api.UntilOutOfSync(func() (api.ShapeView, error) { return c.SetHA(cmd.Context(), args[0], size) }, waitingOutOfSync(cmd))
			if err != nil {
				return err
			}
			return printShape(cmd.OutOrStdout(), cf, v)
		},
	}
	cmd.Flags().IntVar(&size, "size", 0, "members in the primary region, 1 to 9 (required)")
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	return cmd
}

// waitingOutOfSync says, once, that a removal waits for the primary.
func waitingOutOfSync(cmd *cobra.Command) func() {
	return func() {
		fmt.Fprintln(cmd.ErrOrStderr(), "waiting for the primary to take the members out of its sync set...")
	}
}

func printShape(w io.Writer, cf *clientFlags, v api.ShapeView) error {
	if cf.json {
		return printJSON(w, v)
	}
	fmt.Fprintln(w, v.Summary())
	if len(v.Added) > 0 || len(v.Removed) > 0 {
		fmt.Fprintf(w, "follow it with `pgfleet status %s`\n", v.Cluster.Name)
	}
	return nil
}
