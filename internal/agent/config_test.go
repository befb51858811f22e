package agent_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

func validConfig(t *testing.T) agent.Config {
	return agent.Config{Name: "h1", Region: "iad", Advertise: "127.0.0.1", DataDir: filepath.Join(labtest.TestDir(t), "data")}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*agent.Config)
		want   string
	}{
		{"valid", func(*agent.Config) {}, ""},
		{"no name", func(c *agent.Config) { c.Name = "" }, "--name: host name is empty"},
		{"bad name", func(c *agent.Config) { c.Name = "Host_1" }, `--name: host name "Host_1" is not valid`},
		{"no region", func(c *agent.Config) { c.Region = "" }, "--region: region name is empty"},
		{"bad advertise", func(c *agent.Config) { c.Advertise = "myhost" }, `--advertise "myhost" is not a usable IP address`},
		{"unspecified advertise", func(c *agent.Config) { c.Advertise = "0.0.0.0" }, "is not a usable IP address"},
		{"no data dir", func(c *agent.Config) { c.DataDir = "" }, "--data-dir is required"},
		{"bad api listen", func(c *agent.Config) { c.APIListen = "7480" }, `--api-listen "7480": want HOST:PORT`},
		{"bad api port", func(c *agent.Config) { c.APIListen = "127.0.0.1:99999" }, "port must be 1-65535"},
		{"join and endpoints", func(c *agent.Config) { c.Join = "127.0.0.1:2379"; c.EtcdEndpoints = []string{"x:2379"} }, "exclude each other"},
		{"remote etcd in clear", func(c *agent.Config) { c.EtcdEndpoints = []string{"http://10.0.0.9:2379"} }, "must be reached over https"},
		{"remote etcd, bare address, no TLS", func(c *agent.Config) { c.EtcdEndpoints = []string{"10.0.0.9:2379"} }, "must be reached over https"},
		{"https etcd without its CA", func(c *agent.Config) { c.EtcdEndpoints = []string{"https://10.0.0.9:2379"} }, "give --etcd-cacert"},
		{"bad etcd port", func(c *agent.Config) { c.EtcdPeerPort = 70000 }, "etcd port 70000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig(t)
			tt.mutate(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				if c.APIListen != "127.0.0.1:7480" {
					t.Fatalf("default APIListen = %q, want 127.0.0.1:7480", c.APIListen)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestNewRefusesMissingPostgres(t *testing.T) {
	c := validConfig(t)
	c.PGBin = "/nonexistent/bin"
	_, err := agent.New(c)
	if err == nil || !strings.Contains(err.Error(), "apt-get install -y postgresql-15") {
		t.Fatalf("agent.New(--pg-bin /nonexistent/bin) = %v, want an error that says how to install PostgreSQL", err)
	}
	if _, statErr := os.Stat(c.DataDir); !os.IsNotExist(statErr) {
		t.Fatalf("New created %s although it failed", c.DataDir)
	}
}

func TestNewRefusesForeignDataDir(t *testing.T) {
	labtest.RequirePostgres(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	c := validConfig(t)
	if err := os.Mkdir(c.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(c.DataDir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := agent.New(c)
	if err == nil || !strings.Contains(err.Error(), "is owned by nobody, but pgfleet runs as root") {
		t.Fatalf("agent.New(data dir owned by nobody) = %v, want an ownership error", err)
	}
}

func TestNewRefusesDataDirPostgresCannotReach(t *testing.T) {
	labtest.RequirePostgres(t)
	if os.Geteuid() != 0 {
		t.Skip("postgres runs as the current user when not root")
	}
	locked := filepath.Join(labtest.TestDir(t), "locked")
	if err := os.Mkdir(locked, 0o700); err != nil {
		t.Fatal(err)
	}
	c := validConfig(t)
	c.DataDir = filepath.Join(locked, "data")
	_, err := agent.New(c)
	if err == nil || !strings.Contains(err.Error(), "the postgres OS user, which runs postgres, cannot enter "+locked) {
		t.Fatalf("agent.New(data dir under a 0700 root dir) = %v, want an error naming %s", err, locked)
	}
}

func TestRunRefusesPortInUse(t *testing.T) {
	labtest.RequirePostgres(t)
	for _, which := range []string{"api", "etcd"} {
		t.Run(which, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			c := validConfig(t)
			c.Advertise = "127.0.0.1"
			free, _ := net.Listen("tcp", "127.0.0.1:0")
			c.APIListen = free.Addr().String()
			free.Close()
			want := "--api-listen " + ln.Addr().String() + " is already in use"
			if which == "api" {
				c.APIListen = ln.Addr().String()
			} else {
				c.EtcdClientPort = port
				want = "address 127.0.0.1:" + strconv.Itoa(port) + " is already in use"
			}
			a, err := agent.New(c)
			if err != nil {
				t.Fatal(err)
			}
			err = a.Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Run() with the %s port taken = %v, want %q", which, err, want)
			}
			if _, err := os.Stat(filepath.Join(c.DataDir, "etcd", "member")); !os.IsNotExist(err) {
				t.Fatalf("Run() left etcd state behind after failing: %v", err)
			}
		})
	}
}
