package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/pki"
)

// clientFlags are the flags every command that talks to the fleet shares.
type clientFlags struct {
	api   string
	token string
	ca    string
	json  bool
}

func newRootCmd() *cobra.Command {
	cf := &clientFlags{}
	root := &cobra.Command{
		Use:           "pgfleet",
		Short:         "Run highly available PostgreSQL close to your apps, on machines you own",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVar(&cf.api, "api", "", "agent API address(es), HOST:PORT, comma-separated (default: env PGFLEET_API, else what 'pgfleet dev up' or 'pgfleet login' recorded)")
	root.PersistentFlags().StringVar(&cf.token, "token", "", "API token (default: env PGFLEET_TOKEN, else what 'pgfleet dev up' or 'pgfleet login' recorded)")
	root.PersistentFlags().StringVar(&cf.ca, "ca", "", "file with the fleet's CA certificate, which agents' certificates must come from (default: env PGFLEET_CA, else what 'pgfleet dev up' or 'pgfleet login' recorded)")
	root.AddCommand(
		newAgentCmd(),
		newDevCmd(),
		newHostsCmd(cf),
		newCreateCmd(cf),
		newStatusCmd(cf),
		newListCmd(cf),
		newURLCmd(cf),
		newConnectCmd(cf),
		newDestroyCmd(cf),
		newEventsCmd(cf),
		newLogsCmd(cf),
		newSwitchoverCmd(cf),
		newFailoverCmd(cf),
		newSetCmd(cf),
		newReplicaCmd(cf), newHACmd(cf), newImportCmd(cf), newConfigCmd(cf), newRestartCmd(cf), newMoveCmd(cf),
		newBackupCmd(cf),
		newRestoreCmd(cf),
		newLoginCmd(cf),
		newTokenCmd(cf),
		newCACmd(cf),
		newUsersCmd(cf), newDBCmd(cf), newAttachCmd(cf), newDetachCmd(cf),
		newVersionCmd(),
		newWALPushCmd(), newWALFetchCmd(),
	)
	for _, cmd := range root.Commands() {
		switch cmd.Name() {
		case "agent", "dev", "version", "wal-push", "wal-fetch":
			withoutClientFlags(cmd)
		}
	}
	plainFlagUsages(root)
	return root
}

// clientFlagNames are the root's flags for the commands that talk to the
// fleet's API.
var clientFlagNames = []string{"api", "token", "ca"}

// withoutClientFlags keeps the API client's flags out of the help of cmd
// (and its subcommands), which talks to no API, and refuses them there:
// `pgfleet agent --api ...` would otherwise be taken and ignored.
func withoutClientFlags(cmd *cobra.Command) {
	help := cmd.HelpFunc()
	cmd.SetHelpFunc(func(c *cobra.Command, args []string) {
		for _, n := range clientFlagNames {
			if f := c.Root().PersistentFlags().Lookup(n); f != nil {
				f.Hidden = true
			}
		}
		help(c, args)
	})
	if cmd.PersistentPreRunE != nil || cmd.PersistentPreRun != nil {
		return
	}
	cmd.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		for _, n := range clientFlagNames {
			if c.Flags().Changed(n) {
				return usageError{fmt.Errorf("--%s does not apply to %s, which talks to no agent's API", n, c.CommandPath())}
			}
		}
		return nil
	}
}

// plainFlagUsages takes the backquotes out of every flag's usage: pflag
// reads a `quoted` word in a usage as the name of the flag's value, so
// "(default: recorded by `pgfleet dev up`)" showed in help as
// "--api pgfleet dev up". Ours quote commands, never value names.
func plainFlagUsages(cmd *cobra.Command) {
	for _, fs := range []*pflag.FlagSet{cmd.LocalNonPersistentFlags(), cmd.PersistentFlags()} {
		fs.VisitAll(func(f *pflag.Flag) { f.Usage = strings.ReplaceAll(f.Usage, "`", "'") })
	}
	for _, c := range cmd.Commands() {
		plainFlagUsages(c)
	}
}

// home is where the CLI keeps what it needs between commands.
func home() string {
	if h := os.Getenv("PGFLEET_HOME"); h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".pgfleet")
	}
	return ".pgfleet"
}

// cliConfig is $PGFLEET_HOME/config.json, written by `pgfleet dev up`.
type cliConfig struct {
	Endpoints []string `json:"endpoints"`
	Token     string   `json:"token"`
	CA        string   `json:"ca"` // the fleet's CA certificate, PEM
	DevDir    string   `json:"dev_dir,omitempty"`
}

func configPath() string { return filepath.Join(home(), "config.json") }

func loadConfig() (cliConfig, error) {
	var c cliConfig
	b, err := os.ReadFile(configPath())
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("read %s: %w (delete it and run `pgfleet dev up` again)", configPath(), err)
	}
	return c, nil
}

// saveConfig writes the config with mode 0600: it holds the API token.
func saveConfig(c cliConfig) error {
	if err := os.MkdirAll(home(), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	tmp := configPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, configPath())
}

// client builds an API client from flags, environment and the saved config,
// in that order of precedence.
func (cf *clientFlags) client() (*api.Client, error) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, err
	}
	eps := cfg.Endpoints
	if v := firstNonEmpty(cf.api, os.Getenv("PGFLEET_API")); v != "" {
		eps = nil
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				eps = append(eps, e)
			}
		}
	}
	token := firstNonEmpty(cf.token, os.Getenv("PGFLEET_TOKEN"), cfg.Token)
	if len(eps) == 0 {
		return nil, errors.New("no fleet configured: run `pgfleet dev up` for a local fleet, or pass --api HOST:PORT and --token")
	}
	if token == "" {
		return nil, errors.New("no API token: pass --token or set PGFLEET_TOKEN (the first agent of a fleet saves it in <data-dir>/token)")
	}
	caPEM, err := cf.caPEM(cfg)
	if err != nil {
		return nil, err
	}
	ca, err := pki.Pool(caPEM)
	if err != nil {
		return nil, fmt.Errorf("the fleet's CA: %w", err)
	}
	c := api.NewClient(eps, token, ca)
	if c.CAFile, err = cf.caFile(caPEM); err != nil {
		return nil, err
	}
	return c, nil
}

// caFile is a file with the fleet's CA for the connection URLs the CLI
// prints (sslrootcert): --ca or PGFLEET_CA as given, else a copy of the
// recorded CA in the CLI's home.
func (cf *clientFlags) caFile(caPEM []byte) (string, error) {
	if path := firstNonEmpty(cf.ca, os.Getenv("PGFLEET_CA")); path != "" {
		return filepath.Abs(path)
	}
	path := filepath.Join(home(), "ca.crt")
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, caPEM) {
		return path, nil
	}
	if err := os.MkdirAll(home(), 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path+".tmp", caPEM, 0o644); err != nil {
		return "", fmt.Errorf("save the fleet's CA: %w", err)
	}
	return path, os.Rename(path+".tmp", path)
}

// caPEM is the fleet's CA certificate the CLI trusts: --ca, PGFLEET_CA or
// what `pgfleet dev up` recorded.
func (cf *clientFlags) caPEM(cfg cliConfig) ([]byte, error) {
	if path := firstNonEmpty(cf.ca, os.Getenv("PGFLEET_CA")); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		return b, nil
	}
	if cfg.CA == "" {
		return nil, errors.New("no CA known for the fleet: pass --ca FILE (on a host of the fleet, <data-dir>/tls/ca.crt), or run `pgfleet dev up` for a local fleet")
	}
	return []byte(cfg.CA), nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// exactArgs is cobra.ExactArgs with a message that names what is missing.
func exactArgs(what ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(what) {
			return usageError{fmt.Errorf("%s needs %s (usage: %s)", cmd.CommandPath(), strings.Join(what, " and "), cmd.UseLine())}
		}
		return nil
	}
}
