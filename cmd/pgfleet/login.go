package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/pki"
)

func newLoginCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "login HOST:PORT",
		Short: "Record a fleet's API address, token and CA for the commands that follow",
		Long: `Record a fleet for the CLI: the agent at HOST:PORT (any host of the fleet,
port 7480 by default) proves that it knows the API token, which is how the
CLI learns the fleet's CA without trusting the network in between; every
later command verifies the agents against that CA. The token comes from
--token or PGFLEET_TOKEN (the first agent saved it in <data-dir>/token).`,
		Args: exactArgs("HOST:PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			token := firstNonEmpty(cf.token, os.Getenv("PGFLEET_TOKEN"))
			if token == "" {
				return usageError{errors.New("pgfleet login needs the API token: pass --token or set PGFLEET_TOKEN (the first agent of a fleet saves it in <data-dir>/token)")}
			}
			addr := strings.TrimPrefix(args[0], "https://")
			if _, _, err := net.SplitHostPort(addr); err != nil {
				addr = net.JoinHostPort(addr, strconv.Itoa(agent.DefaultAPIPort))
			}
			caPEM, err := api.Login(cmd.Context(), addr, token)
			if err != nil {
				return err
			}
			pool, err := pki.Pool(caPEM)
			if err != nil {
				return err
			}
			// Every host's API, so that the CLI works while any one is down.
			hosts, err := api.NewClient([]string{addr}, token, pool).Hosts(cmd.Context())
			if err != nil {
				return err
			}
			eps := []string{addr}
			for _, h := range hosts {
				if h.APIAddr != "" && h.APIAddr != addr {
					eps = append(eps, h.APIAddr)
				}
			}
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			cfg.Endpoints, cfg.Token, cfg.CA, cfg.DevDir = eps, token, string(caPEM), ""
			if err := saveConfig(cfg); err != nil {
				return fmt.Errorf("save CLI config: %w", err)
			}
			ca, _ := pki.ParseCert(caPEM)
			fmt.Fprintf(cmd.OutOrStdout(), "logged in to the fleet at %s: %d hosts, CA %s; saved in %s\n", addr, len(hosts), pki.Pin(ca), configPath())
			return nil
		},
	}
}
