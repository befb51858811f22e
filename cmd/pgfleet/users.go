package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
)

func newUsersCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "users",
		Short: "Manage a cluster's users: create, list, delete, rotate their passwords",
		Long: `Manage a cluster's users, for people and tools.

A user can read and write the tables of every database (--read-only: read
only), and nothing else: it creates no tables, roles or databases. Its
password is generated, shown once (or written to a file with --out), and
kept nowhere but in Postgres itself, as a SCRAM verifier. Apps get a
database and a role of their own with ` + "`pgfleet attach`" + `.`,
	}
	cmd.AddCommand(newUsersCreateCmd(cf), newUsersListCmd(cf), newUsersDeleteCmd(cf), newUsersRotateCmd(cf))
	return cmd
}

// clusterFlag adds the --cluster flag the users commands share.
func clusterFlag(cmd *cobra.Command, cluster *string) {
	cmd.Flags().StringVar(cluster, "cluster", "", "the cluster (required)")
}

// needCluster checks --cluster before anything is sent.
func needCluster(cluster string) error {
	if cluster == "" {
		return usageError{errors.New("--cluster is required: the cluster whose users to manage")}
	}
	if err := fleet.ValidateClusterName(cluster); err != nil {
		return usageError{err}
	}
	return nil
}

// checkUserArgs checks --cluster, a user's name and --out before anything
// is sent.
func checkUserArgs(cluster, user, out string) error {
	if err := needCluster(cluster); err != nil {
		return err
	}
	if err := fleet.ValidateRoleName("user", user); err != nil {
		return usageError{err}
	}
	return checkOutFile(out)
}

func newUsersCreateCmd(cf *clientFlags) *cobra.Command {
	var cluster, out string
	var readOnly bool
	cmd := &cobra.Command{
		Use:   "create NAME --cluster CLUSTER [--read-only] [--out FILE]",
		Short: "Create a user with a generated password, shown once",
		Args:  exactArgs("a user NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkUserArgs(cluster, args[0], out); err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.CreateUser(cmd.Context(), cluster, api.UserRequest{Name: args[0], ReadOnly: readOnly})
			if err != nil {
				return err
			}
			access := "read and write every database"
			if readOnly {
				access = "read every database"
			}
			return showPassword(cmd, cf, v, out, fmt.Sprintf("user %s created in cluster %s: it can %s", v.User, cluster, access))
		},
	}
	clusterFlag(cmd, &cluster)
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "the user can only read")
	cmd.Flags().StringVar(&out, "out", "", "write the password to this file (mode 0600) instead of showing it")
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON (with the password)")
	return cmd
}

func newUsersRotateCmd(cf *clientFlags) *cobra.Command {
	var cluster, out string
	cmd := &cobra.Command{
		Use:   "rotate NAME --cluster CLUSTER [--out FILE]",
		Short: "Give a user or an app a new generated password; the old one stops working",
		Args:  exactArgs("a user NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkUserArgs(cluster, args[0], out); err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			v, err := c.RotateUser(cmd.Context(), cluster, args[0])
			if err != nil {
				return err
			}
			return showPassword(cmd, cf, v, out, fmt.Sprintf("password of %s in cluster %s rotated: new logins need the new one; open sessions go on", v.User, cluster))
		},
	}
	clusterFlag(cmd, &cluster)
	cmd.Flags().StringVar(&out, "out", "", "write the password to this file (mode 0600) instead of showing it")
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON (with the password)")
	return cmd
}

// showPassword prints what was done and the password, once: on standard
// output, or only into the file out.
func showPassword(cmd *cobra.Command, cf *clientFlags, v api.PasswordView, out, headline string) error {
	w := cmd.OutOrStdout()
	if out != "" {
		if err := writeSecretFile(out, v.Password+"\n"); err != nil {
			return fmt.Errorf("%s, but %w; `pgfleet users rotate %s --cluster %s` makes a new password", headline, err, v.User, v.Cluster)
		}
		v.Password = ""
	}
	if cf.json {
		return printJSON(w, v)
	}
	fmt.Fprintln(w, headline)
	if out != "" {
		fmt.Fprintf(w, "password written to %s (mode 0600)\n", out)
		return nil
	}
	fmt.Fprintf(w, "password: %s\n", v.Password)
	fmt.Fprintf(w, "it is shown only this once: `pgfleet users rotate %s --cluster %s` makes a new one\n", v.User, v.Cluster)
	return nil
}

// checkOutFile refuses an --out path that cannot be written before
// anything changes: a password made and then lost would need a rotation.
func checkOutFile(path string) error {
	if path == "" {
		return nil
	}
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return usageError{fmt.Errorf("--out %s is not a regular file: give a file path", path)}
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return usageError{fmt.Errorf("--out %s: directory %s does not exist", path, dir)}
	}
	return nil
}

// writeSecretFile writes content to path with mode 0600, also when the
// file existed with a wider mode, and never through a symbolic link.
func writeSecretFile(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := io.WriteString(f, content); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func newUsersListCmd(cf *clientFlags) *cobra.Command {
	var cluster string
	cmd := &cobra.Command{
		Use:   "list --cluster CLUSTER",
		Short: "List a cluster's users and apps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needCluster(cluster); err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			roles, err := c.Users(cmd.Context(), cluster)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), roles)
			}
			t := table(cmd.OutOrStdout())
			fmt.Fprintln(t, "NAME\tKIND\tLOGIN")
			for _, r := range roles {
				kind := string(r.Kind)
				switch {
				case kind == "" && r.Superuser:
					kind = "superuser (made outside pgfleet)"
				case kind == "":
					kind = "made outside pgfleet"
				}
				login := "yes"
				if !r.Login {
					login = "no (detached)"
				}
				fmt.Fprintf(t, "%s\t%s\t%s\n", r.Name, kind, login)
			}
			return t.Flush()
		},
	}
	clusterFlag(cmd, &cluster)
	cmd.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	return cmd
}

func newUsersDeleteCmd(cf *clientFlags) *cobra.Command {
	var cluster string
	cmd := &cobra.Command{
		Use:   "delete NAME --cluster CLUSTER",
		Short: "Delete a user and end its sessions",
		Args:  exactArgs("a user NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkUserArgs(cluster, args[0], ""); err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if err := c.DeleteUser(cmd.Context(), cluster, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s deleted from cluster %s\n", args[0], cluster)
			return nil
		},
	}
	clusterFlag(cmd, &cluster)
	return cmd
}
