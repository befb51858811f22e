package api

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

func TestParseURLQuery(t *testing.T) {
	tests := []struct {
		name  string
		query string
		want  URLOptions
		err   string // a part of the error; "" for none
	}{
		{name: "default", query: "", want: URLOptions{}},
		{name: "member", query: "member=db-2", want: URLOptions{Member: "db-2"}},
		{name: "region and replica", query: "region=ams&replica=true", want: URLOptions{Region: "ams", Replica: true}},
		{name: "direct replica", query: "direct=1&replica=true", want: URLOptions{Direct: true, Replica: true}},
		{name: "false flags", query: "direct=false&replica=0", want: URLOptions{}},
		{name: "unknown parameter", query: "host=x", err: `unknown parameter "host"`},
		{name: "repeated", query: "region=ams&region=syd", err: "given 2 times"},
		{name: "empty member", query: "member=", err: "member is empty"},
		{name: "bad region", query: "region=AMS", err: `region name "AMS" is not valid`},
		{name: "bad bool", query: "replica=yes", err: `replica="yes" is not valid: give true or false`},
		{name: "member with region", query: "member=db-2&region=ams", err: "member cannot be combined with region"},
		{name: "member with replica and direct", query: "member=db-2&replica=true&direct=true", err: "with replica or direct"},
		{name: "direct with region", query: "direct=true&region=ams", err: "direct cannot be combined with region"},
		{name: "malformed", query: "region=%zz", err: "not valid"},
		{name: "pooled in a region", query: "pooled=true&region=ams", want: URLOptions{Pooled: true, Region: "ams"}},
		{name: "pooled replica", query: "pooled=true&replica=true", err: "pooled cannot be combined with replica or direct"},
		{name: "pooled member", query: "pooled=true&member=db-2", err: "member cannot be combined with pooled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseURLQuery(tt.query)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseURLQuery(%q) = %+v, %v; want an error with %q", tt.query, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseURLQuery(%q) = %+v, %v; want %+v", tt.query, got, err, tt.want)
			}
		})
	}
}

func TestURLOptionsCheckNamesFlags(t *testing.T) {
	err := URLOptions{Member: "db-2", Replica: true}.Check()
	if err == nil || !strings.HasPrefix(err.Error(), "--member cannot be combined with --replica") {
		t.Fatalf("Check(member, replica) = %v; want it to name the flags", err)
	}
}

func TestClusterURLTarget(t *testing.T) {
	hosts := []fleet.Host{
		{Name: "ams-1", Region: "ams", Addr: "127.0.2.1"},
		{Name: "iad-1", Region: "iad", Addr: "127.0.1.1"},
		{Name: "iad-2", Region: "iad", Addr: "127.0.1.2"},
		{Name: "iad-3", Region: "iad", Addr: "127.0.1.3"}, // runs no member of db
		{Name: "syd-1", Region: "syd", Addr: "127.0.3.1"},
	}
	c := store.ClusterState{
		Spec:   fleet.ClusterSpec{Name: "db", PrimaryRegion: "iad", HA: 2, Replicas: []string{"ams", "fra"}, Port: 6010},
		Leader: "db-2",
		Members: []fleet.MemberSpec{
			{ID: "db-1", Host: "iad-1", Region: "iad", Role: fleet.RolePrimary, Port: 6010},
			{ID: "db-2", Host: "iad-2", Region: "iad", Role: fleet.RoleStandby, Port: 6010},
			{ID: "db-3", Host: "ams-1", Region: "ams", Role: fleet.RoleReplica, Port: 6010},
			{ID: "db-4", Host: "fra-1", Region: "fra", Role: fleet.RoleReplica, Port: 6010}, // fra-1 is down
		},
	}
	tests := []struct {
		name  string
		o     URLOptions
		hosts string // joined with ","
		query string
		via   string
		code  int
		msg   string
	}{
		{name: "primary through the primary region's proxies", o: URLOptions{},
			hosts: "127.0.1.1:6011,127.0.1.2:6011,127.0.1.3:6011", query: "sslmode=verify-full", via: "proxy"},
		{name: "replica port", o: URLOptions{Replica: true},
			hosts: "127.0.1.1:6012,127.0.1.2:6012,127.0.1.3:6012", query: "sslmode=verify-full", via: "proxy"},
		{name: "a region without members", o: URLOptions{Region: "syd", Replica: true},
			hosts: "127.0.3.1:6012", query: "sslmode=verify-full", via: "proxy"},
		{name: "a region without hosts", o: URLOptions{Region: "lhr"}, code: 404,
			msg: `region "lhr" has no live host (regions with live hosts: ams (1), iad (3), syd (1))`},
		{name: "a region of the cluster whose hosts are down", o: URLOptions{Region: "fra"}, code: 503,
			msg: "every host of region fra is down"},
		{name: "direct, the primary first", o: URLOptions{Direct: true},
			hosts: "127.0.1.2:6010,127.0.1.1:6010,127.0.2.1:6010", query: "sslmode=verify-full&target_session_attrs=read-write", via: "direct"},
		{name: "direct to readers", o: URLOptions{Direct: true, Replica: true},
			hosts: "127.0.1.2:6010,127.0.1.1:6010,127.0.2.1:6010", query: "sslmode=verify-full&target_session_attrs=prefer-standby", via: "direct"},
		{name: "member", o: URLOptions{Member: "db-3"}, hosts: "127.0.2.1:6010", query: "sslmode=verify-full", via: "member"},
		{name: "member on a host that is down", o: URLOptions{Member: "db-4"}, code: 503, msg: "fra-1, which is down"},
		{name: "unknown member", o: URLOptions{Member: "db-9"}, code: 404, msg: "its members are db-1, db-2, db-3, db-4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, code, msg := clusterURLTarget(c, hosts, tt.o)
			if code != tt.code || !strings.Contains(msg, tt.msg) {
				t.Fatalf("clusterURLTarget(%+v) = %d %q; want %d with %q", tt.o, code, msg, tt.code, tt.msg)
			}
			if tt.code != 0 {
				return
			}
			if h := strings.Join(got.Hosts, ","); h != tt.hosts || got.Query != tt.query || got.Via != tt.via {
				t.Errorf("clusterURLTarget(%+v) = hosts %s, query %s, via %s; want %s, %s, %s", tt.o, h, got.Query, got.Via, tt.hosts, tt.query, tt.via)
			}
		})
	}

	noLeader := c
	noLeader.Leader = ""
	if got, _, _ := clusterURLTarget(noLeader, hosts, URLOptions{Direct: true}); strings.Join(got.Hosts, ",") != "127.0.1.1:6010,127.0.1.2:6010,127.0.2.1:6010" {
		t.Errorf("clusterURLTarget(direct, no leader) = %v; want the members in id order", got.Hosts)
	}
	if code, _ := targetCode(clusterURLTarget(c, nil, URLOptions{})); code != 503 {
		t.Errorf("clusterURLTarget(no live host) = %d; want 503", code)
	}
}

func targetCode(_ urlTarget, code int, msg string) (int, string) { return code, msg }

func TestURLFormat(t *testing.T) {
	tgt := urlTarget{Hosts: []string{"127.0.1.1:6011", "[::1]:6011"}, Query: "sslmode=verify-full"}
	got := tgt.format(fleet.Secrets{SuperuserPassword: "p@ss/word"})
	want := "postgres://postgres:p%40ss%2Fword@127.0.1.1:6011,[::1]:6011/postgres?sslmode=verify-full"
	if got != want {
		t.Errorf("format() = %s, want %s", got, want)
	}
	// pgx, as libpq, reads the multi-host form and tries the hosts in
	// order. (pgx parses URLs with net/url, which refuses a multi-host URL
	// with an IPv6 address; libpq takes it.)
	tgt = urlTarget{Hosts: []string{"127.0.1.1:6011", "127.0.1.2:6012"}, Query: "sslmode=verify-full&target_session_attrs=prefer-standby"}
	cfg, err := pgx.ParseConfig(tgt.format(fleet.Secrets{SuperuserPassword: "p@ss/word"}))
	if err != nil {
		t.Fatalf("pgx.ParseConfig(format()) = %v", err)
	}
	last := cfg.Fallbacks[len(cfg.Fallbacks)-1]
	if cfg.Host != "127.0.1.1" || cfg.Port != 6011 || cfg.Password != "p@ss/word" || last.Host != "127.0.1.2" || last.Port != 6012 {
		t.Errorf("pgx.ParseConfig(format()) = %s:%d, password %q, last fallback %s:%d; want 127.0.1.1:6011 first, 127.0.1.2:6012 last",
			cfg.Host, cfg.Port, cfg.Password, last.Host, last.Port)
	}
}
