package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/pki"
)

func newTokenCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Make join tokens, which admit new hosts to the fleet"}
	var ttl time.Duration
	var readOnly bool
	create := &cobra.Command{
		Use:   "create [--ttl 1h | --read-only]",
		Short: "Make a join token: pass it to a new host's agent in PGFLEET_JOIN_TOKEN with --join",
		Long: `Make a join token. A new host joins the fleet with

  PGFLEET_JOIN_TOKEN=<token> pgfleet agent --join HOST:7480 ...

where HOST is any of the fleet's first three hosts. The token pins the
fleet's CA, so the new host cannot be fooled into joining another fleet,
and it admits hosts until it expires. The fleet keeps only its hash.

With --read-only it makes an API token for dashboards and monitoring
instead: it lists hosts, clusters, their status, events and backups, and
never reads a secret (no URLs) or changes anything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if readOnly {
				c, err := cf.client()
				if err != nil {
					return err
				}
				tok, err := c.CreateReadOnlyToken(cmd.Context())
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), tok)
				return nil
			}
			if ttl < time.Minute || ttl > api.MaxJoinTokenTTL {
				return usageError{fmt.Errorf("--ttl %s: want 1m to %s", ttl, api.MaxJoinTokenTTL)}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			t, err := c.CreateJoinToken(cmd.Context(), ttl)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), t)
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "valid until %s\n", t.Expires.Local().Format(time.DateTime))
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token admits hosts (1m to 24h)")
	create.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	create.Flags().BoolVar(&readOnly, "read-only", false, "make a read-only API token instead of a join token")
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Replace the fleet's API token: the old one stops working on every agent within 2 s",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			tok, err := c.RotateToken(cmd.Context())
			if err != nil {
				return err
			}
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			// A local dev fleet keeps its token in the first host's
			// directory, where `dev up` reads it.
			if cfg.DevDir != "" {
				d := &lab.Dev{Dir: cfg.DevDir}
				if p, err := d.LoadPlan(); err == nil {
					path := agent.TokenPath(filepath.Join(cfg.DevDir, p.Hosts[0].Name))
					if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
						return fmt.Errorf("save the new token in %s: %w (it is: %s)", path, err, tok)
					}
				}
			}
			if cfg.Token != "" && cf.token == "" && os.Getenv("PGFLEET_TOKEN") == "" {
				cfg.Token = tok
				if err := saveConfig(cfg); err != nil {
					return fmt.Errorf("save the new token: %w (it is: %s)", err, tok)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "the new token is saved in %s\n", configPath())
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the read-only API tokens by ID",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			ids, err := c.ReadOnlyTokens(cmd.Context())
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), api.ReadOnlyTokensView{IDs: ids})
			}
			if len(ids) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no read-only tokens")
				return nil
			}
			for _, id := range ids {
				fmt.Fprintf(cmd.OutOrStdout(), "pgfro_%s_…\n", id)
			}
			return nil
		},
	}
	list.Flags().BoolVar(&cf.json, "json", false, "print JSON")
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a read-only API token (give its ID, as `token list` shows it, or the whole token)",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			id := api.ReadOnlyTokenID(args[0])
			if err := c.RevokeReadOnlyToken(cmd.Context(), id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "read-only token pgfro_%s_… revoked: the next request that carries it is refused\n", id)
			return nil
		},
	}
	cmd.AddCommand(create, rotate, list, revoke)
	return cmd
}

func newCACmd(cf *clientFlags) *cobra.Command {
	var pin bool
	cmd := &cobra.Command{
		Use:   "ca [--pin]",
		Short: "Print the fleet's CA certificate (for sslrootcert= and --ca) or its pin",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			b, err := cf.caPEM(cfg)
			if err != nil {
				return err
			}
			ca, err := pki.ParseCert(b)
			if err != nil {
				return fmt.Errorf("the fleet's CA: %w", err)
			}
			if pin {
				fmt.Fprintln(cmd.OutOrStdout(), pki.Pin(ca))
				return nil
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	cmd.Flags().BoolVar(&pin, "pin", false, "print the CA's pin (sha256 of its public key) instead")
	cmd.AddCommand(newCARotateCmd(cf))
	return cmd
}
