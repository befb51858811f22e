package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgfleet/pgfleet/internal/agent"
)

func newAgentCmd() *cobra.Command {
	var cfg agent.Config
	var endpoints, logLevel string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the pgfleet agent of this host",
		Long: `Run the pgfleet agent of this host. The first agent of a fleet starts an
embedded etcd, the fleet's certificate authority and its API token (saved in
<data-dir>/token, mode 0600); the next ones --join it with a join token that
` + "`pgfleet token create`" + ` makes on a host of the fleet. The first three hosts
are etcd voters, later ones are clients. Every connection between hosts, and
the API, is TLS with certificates from the fleet's CA. With --etcd-endpoints
the agent uses an existing etcd cluster instead, and keeps the fleet's CA in it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usageError{err}
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if cfg.JoinToken == "" {
				cfg.JoinToken = os.Getenv("PGFLEET_JOIN_TOKEN")
			}
			// The agent's children (postgres above all) never see it.
			os.Unsetenv("PGFLEET_JOIN_TOKEN")
			for _, e := range strings.Split(endpoints, ",") {
				if e = strings.TrimSpace(e); e != "" {
					cfg.EtcdEndpoints = append(cfg.EtcdEndpoints, e)
				}
			}
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", "", "host name, unique in the fleet (required)")
	f.StringVar(&cfg.Region, "region", "", "region label of this host, e.g. iad (required)")
	f.StringVar(&cfg.Advertise, "advertise", "", "IP address other hosts reach this host at (required)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for this host's state and databases (required)")
	f.StringVar(&cfg.APIListen, "api-listen", "", "HTTP API address (default ADVERTISE:7480)")
	f.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated endpoints of an existing etcd cluster (default: embedded etcd)")
	f.StringVar(&cfg.EtcdPrefix, "etcd-prefix", "/pgfleet/", "etcd key prefix of this fleet")
	f.StringVar(&cfg.Join, "join", "", "API address (HOST:7480) of an agent of the fleet to join; needs a join token")
	f.StringVar(&cfg.JoinToken, "join-token", "", "join token from `pgfleet token create` (prefer env PGFLEET_JOIN_TOKEN: a flag shows in ps)")
	f.StringVar(&cfg.EtcdCACert, "etcd-cacert", "", "with --etcd-endpoints: CA certificate that signed etcd's server certificates")
	f.StringVar(&cfg.EtcdCert, "etcd-cert", "", "with --etcd-endpoints: this agent's client certificate for etcd")
	f.StringVar(&cfg.EtcdKey, "etcd-key", "", "with --etcd-endpoints: the key of --etcd-cert")
	f.IntVar(&cfg.EtcdClientPort, "etcd-client-port", agent.DefaultEtcdClientPort, "embedded etcd client port")
	f.IntVar(&cfg.EtcdPeerPort, "etcd-peer-port", agent.DefaultEtcdPeerPort, "embedded etcd peer port")
	f.StringVar(&cfg.PGBin, "pg-bin", "", "directory of the PostgreSQL 15+ server binaries (default: found automatically)")
	f.StringVar(&cfg.BackupStore, "backup-store", "", "object store new clusters back up to: file:///PATH or s3://BUCKET/PREFIX?endpoint=HOST:PORT (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
