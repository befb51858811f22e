package fleet

import (
	"reflect"
	"strings"
	"testing"
)

func TestValidateSpec(t *testing.T) {
	ok := ClusterSpec{Name: "demo", PrimaryRegion: "iad", HA: 3, Replicas: []string{"ams", "syd"}}
	tests := []struct {
		name    string
		mutate  func(*ClusterSpec)
		wantErr string
	}{
		{"valid", func(*ClusterSpec) {}, ""},
		{"ha 1", func(s *ClusterSpec) { s.HA = 1 }, ""},
		{"empty name", func(s *ClusterSpec) { s.Name = "" }, "cluster name is empty"},
		{"uppercase", func(s *ClusterSpec) { s.Name = "Demo" }, `cluster name "Demo" is not valid`},
		{"underscore", func(s *ClusterSpec) { s.Name = "my_db" }, "is not valid"},
		{"leading digit", func(s *ClusterSpec) { s.Name = "1db" }, "starting with a letter"},
		{"trailing dash", func(s *ClusterSpec) { s.Name = "db-" }, "not ending with '-'"},
		{"too long", func(s *ClusterSpec) { s.Name = strings.Repeat("a", 41) }, "at most 40"},
		{"ha 0", func(s *ClusterSpec) { s.HA = 0 }, "ha is 0"},
		{"ha negative", func(s *ClusterSpec) { s.HA = -2 }, "ha is -2"},
		{"ha too big", func(s *ClusterSpec) { s.HA = 10 }, "1 to 9"},
		{"bad primary region", func(s *ClusterSpec) { s.PrimaryRegion = "IAD" }, "primary region"},
		{"empty primary region", func(s *ClusterSpec) { s.PrimaryRegion = "" }, "region name is empty"},
		{"replica in primary region", func(s *ClusterSpec) { s.Replicas = []string{"iad"} }, "is the primary region"},
		{"replica twice", func(s *ClusterSpec) { s.Replicas = []string{"ams", "ams"} }, "listed twice"},
		{"bad replica region", func(s *ClusterSpec) { s.Replicas = []string{"a m s"} }, "replicas: region name"},
		{"reserved param", func(s *ClusterSpec) { s.Params = map[string]string{"port": "1"} }, "parameter port is reserved by pgfleet"},
		{"bad param", func(s *ClusterSpec) { s.Params = map[string]string{"x;drop": "1"} }, "not a valid PostgreSQL setting"},
		{"lease ttl 0 is default", func(s *ClusterSpec) { s.LeaseTTL = 0 }, ""},
		{"lease ttl 1", func(s *ClusterSpec) { s.LeaseTTL = 1 }, ""},
		{"lease ttl too long", func(s *ClusterSpec) { s.LeaseTTL = 61 }, "lease ttl is 61s"},
		{"lease ttl negative", func(s *ClusterSpec) { s.LeaseTTL = -1 }, "1 to 60 seconds"},
		{"sync on", func(s *ClusterSpec) { s.Sync = "on" }, ""},
		{"sync strict", func(s *ClusterSpec) { s.Sync = "strict" }, ""},
		{"sync bogus", func(s *ClusterSpec) { s.Sync = "always" }, `sync mode "always" is not one of off, on, strict`},
		{"negative max lag", func(s *ClusterSpec) { s.MaxLagOnFailover = -1 }, "must not be negative"},
		{"ok param", func(s *ClusterSpec) { s.Params = map[string]string{"work_mem": "8MB"} }, ""},
		{"include param", func(s *ClusterSpec) { s.Params = map[string]string{"include": "/etc/passwd"} }, "parameter include is reserved by pgfleet"},
		{"line break in value", func(s *ClusterSpec) { s.Params = map[string]string{"work_mem": "8MB\nport = 1"} }, "line break"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			s.Replicas = append([]string(nil), ok.Replicas...)
			tt.mutate(&s)
			err := s.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate(%+v) = %v, want nil", s, err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate(%+v) = nil, want error containing %q", s, tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Validate(%+v) = %q, want it to contain %q", s, err, tt.wantErr)
			}
		})
	}
}

func hosts(spec ...string) []Host {
	var hs []Host
	for _, s := range spec {
		name, region, _ := strings.Cut(s, "@")
		hs = append(hs, Host{Name: name, Region: region})
	}
	return hs
}

func TestPlace(t *testing.T) {
	fleet5 := hosts("iad-1@iad", "iad-2@iad", "iad-3@iad", "ams-1@ams", "syd-1@syd")
	tests := []struct {
		name    string
		spec    ClusterSpec
		hosts   []Host
		load    map[string]int
		want    []string // "id host role"
		wantErr string
	}{
		{
			name:  "three regions",
			spec:  ClusterSpec{Name: "demo", PrimaryRegion: "iad", HA: 3, Replicas: []string{"ams", "syd"}, Port: 6000},
			hosts: fleet5,
			want:  []string{"demo-1 iad-1 primary", "demo-2 iad-2 standby", "demo-3 iad-3 standby", "demo-4 ams-1 replica", "demo-5 syd-1 replica"},
		},
		{
			name:  "least loaded host first",
			spec:  ClusterSpec{Name: "b", PrimaryRegion: "iad", HA: 2},
			hosts: fleet5,
			load:  map[string]int{"iad-1": 2, "iad-2": 1},
			want:  []string{"b-1 iad-3 primary", "b-2 iad-2 standby"},
		},
		{
			name:    "unknown region",
			spec:    ClusterSpec{Name: "c", PrimaryRegion: "iad", HA: 1, Replicas: []string{"fra"}},
			hosts:   fleet5,
			wantErr: `unknown region "fra": no host of the fleet is in it (hosts per region: ams (1), iad (3), syd (1))`,
		},
		{
			name:    "not enough hosts",
			spec:    ClusterSpec{Name: "c", PrimaryRegion: "ams", HA: 2},
			hosts:   fleet5,
			wantErr: "cluster c needs 2 hosts in region ams (one member per host) but the fleet has 1 there (ams-1)",
		},
		{
			name:    "empty fleet",
			spec:    ClusterSpec{Name: "c", PrimaryRegion: "iad", HA: 1},
			wantErr: "the fleet has no hosts",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := Place(tt.spec, tt.hosts, tt.load)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Place(%s) error = %v, want %q", tt.name, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Place(%s) = %v", tt.name, err)
			}
			var got []string
			seen := map[string]bool{}
			for _, m := range ms {
				got = append(got, m.ID+" "+m.Host+" "+string(m.Role))
				if seen[m.Host] {
					t.Errorf("Place(%s) put two members on host %s", tt.name, m.Host)
				}
				seen[m.Host] = true
				if m.Port != tt.spec.Port {
					t.Errorf("Place(%s) member %s port %d, want %d", tt.name, m.ID, m.Port, tt.spec.Port)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Place(%s) = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}

func TestNextPort(t *testing.T) {
	reserved := []int{7480, 2379, 2380}
	tests := []struct {
		base int
		used []int
		want int
	}{
		{6000, nil, 6000},
		{6000, []int{6000}, 6010},
		{6000, []int{6000, 6010, 6030}, 6020},
		{6000, []int{6010}, 6000},
		{7470, []int{7470}, 7490}, // 7480..7489 holds the agent's API port
		{2370, []int{2370}, 2390}, // 2380..2389 holds etcd's peer port
		{64990, []int{64990}, 0},  // full
	}
	for _, tt := range tests {
		got, err := NextPort(tt.base, tt.used, reserved)
		if tt.want == 0 {
			if err == nil || !strings.Contains(err.Error(), "no free port block") {
				t.Errorf("NextPort(%d, %v) = %d, %v; want an error", tt.base, tt.used, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NextPort(%d, %v) = %d, %v; want %d", tt.base, tt.used, got, err, tt.want)
		}
	}
}

func TestLagBytes(t *testing.T) {
	tests := []struct {
		write, replay uint64
		want          int64
	}{
		{100, 100, 0}, {100, 40, 60}, {100, 140, 0}, {0, 0, 0},
	}
	for _, tt := range tests {
		if got := LagBytes(tt.write, tt.replay); got != tt.want {
			t.Errorf("LagBytes(%d, %d) = %d, want %d", tt.write, tt.replay, got, tt.want)
		}
	}
}
