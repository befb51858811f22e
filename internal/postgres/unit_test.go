package postgres

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// fakeBin writes a directory with a `postgres` script that reports version.
func fakeBin(t *testing.T, version string) string {
	t.Helper()
	dir := testDir(t)
	script := "#!/bin/sh\necho 'postgres (PostgreSQL) " + version + " (fake)'\n"
	if err := os.WriteFile(filepath.Join(dir, "postgres"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestFindBinExplicit(t *testing.T) {
	v13 := fakeBin(t, "13.4")
	v16 := fakeBin(t, "16.2")
	tests := []struct {
		name     string
		dir      string
		want     Bin
		wantErr  []string // substrings of the error; nil means success
		notFound bool     // error wraps ErrNoPostgres
	}{
		{
			name:     "missing dir",
			dir:      "/nonexistent/pg/bin",
			wantErr:  []string{"/nonexistent/pg/bin", "PostgreSQL 15 server binaries not found", "sudo apt-get install -y postgresql-15", "--pg-bin DIR"},
			notFound: true,
		},
		{
			name:     "too old",
			dir:      v13,
			wantErr:  []string{"version 13, need 15 or later", "--pg-bin DIR"},
			notFound: true,
		},
		{name: "newer", dir: v16, want: Bin{Dir: v16, Version: 16}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FindBin(tt.dir)
			if tt.wantErr == nil {
				if err != nil || got != tt.want {
					t.Fatalf("FindBin(%q) = %+v, %v; want %+v, nil", tt.dir, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("FindBin(%q) = %+v, nil; want error", tt.dir, got)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("FindBin(%q) error %q does not mention %q", tt.dir, err, s)
				}
			}
			if errors.Is(err, ErrNoPostgres) != tt.notFound {
				t.Errorf("FindBin(%q): errors.Is(err, ErrNoPostgres) = %v, want %v", tt.dir, !tt.notFound, tt.notFound)
			}
		})
	}
}

func TestFindBinEnv(t *testing.T) {
	dir := fakeBin(t, "17.0")
	t.Setenv("PG_BIN", dir)
	got, err := FindBin("")
	if want := (Bin{Dir: dir, Version: 17}); err != nil || got != want {
		t.Fatalf("FindBin(\"\") with PG_BIN=%s = %+v, %v; want %+v", dir, got, err, want)
	}
}

func TestFindBinReal(t *testing.T) {
	bin := testBin(t)
	if bin.Version < MinVersion {
		t.Fatalf("FindBin(\"\") = %+v, want version >= %d", bin, MinVersion)
	}
	for _, p := range []string{"postgres", "initdb", "pg_basebackup"} {
		if _, err := os.Stat(bin.Path(p)); err != nil {
			t.Errorf("FindBin(\"\") = %+v without %s: %v", bin, p, err)
		}
	}
}

func TestLSN(t *testing.T) {
	tests := []struct {
		text string
		want LSN
	}{
		{"0/0", 0},
		{"0/1", 1},
		{"16/B374D848", 0x16_B374D848},
		{"FFFFFFFF/FFFFFFFF", ^LSN(0)},
		{"1/0", 1 << 32},
	}
	for _, tt := range tests {
		got, err := ParseLSN(tt.text)
		if err != nil || got != tt.want {
			t.Errorf("ParseLSN(%q) = %d, %v; want %d", tt.text, got, err, tt.want)
			continue
		}
		if s := got.String(); s != tt.text {
			t.Errorf("LSN(%d).String() = %q, want %q", got, s, tt.text)
		}
	}
	if got := mustParseLSN(t, "16/b374d848"); got != 0x16_B374D848 {
		t.Errorf("ParseLSN(lower case) = %s", got)
	}
	for _, bad := range []string{"", "16", "16/", "/1", "x/1", "1/100000000", "-1/1"} {
		if got, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) = %s, nil; want error", bad, got)
		}
	}
}

func mustParseLSN(t *testing.T, s string) LSN {
	t.Helper()
	l, err := ParseLSN(s)
	if err != nil {
		t.Fatalf("ParseLSN(%q): %v", s, err)
	}
	return l
}

func TestSlotName(t *testing.T) {
	tests := []struct{ id, want string }{
		{"demo-1", "demo_1"},
		{"Demo-Primary-2", "demo_primary_2"},
		{"db_3", "db_3"},
		{"a.b", "a_b"},
		{strings.Repeat("x", 70), strings.Repeat("x", 63)},
	}
	for _, tt := range tests {
		if got := SlotName(tt.id); got != tt.want {
			t.Errorf("SlotName(%q) = %q, want %q", tt.id, got, tt.want)
		}
	}
}

func TestConnInfoURL(t *testing.T) {
	tests := []struct {
		name string
		ci   ConnInfo
		want string
	}{
		{
			name: "plain",
			ci:   ConnInfo{Host: "127.0.0.1", Port: 5432, User: "postgres", Password: "pw", Database: "postgres"},
			want: "postgres://postgres:pw@127.0.0.1:5432/postgres?sslmode=require",
		},
		{
			name: "escaped",
			ci:   ConnInfo{Host: "::1", Port: 6000, User: "a@b", Password: "p:w/@?#", Database: "my db"},
			want: "postgres://a%40b:p%3Aw%2F%40%3F%23@[::1]:6000/my%20db?sslmode=require",
		},
		{
			name: "no password",
			ci:   ConnInfo{Host: "127.0.0.1", Port: 5432, User: "u"},
			want: "postgres://u@127.0.0.1:5432/?sslmode=require",
		},
	}
	for _, tt := range tests {
		if got := tt.ci.URL(); got != tt.want {
			t.Errorf("%s: URL() = %q, want %q", tt.name, got, tt.want)
		}
		if strings.Contains(tt.ci.String(), tt.ci.Password) && tt.ci.Password != "" {
			t.Errorf("%s: String() = %q contains the password", tt.name, tt.ci.String())
		}
	}
}

func TestPgpassLine(t *testing.T) {
	ci := ConnInfo{Host: "127.0.0.1", Port: 5432, User: "re:pl", Password: `p:w\x`}
	want := `127.0.0.1:5432:*:re\:pl:p\:w\\x` + "\n"
	if got := pgpassLine(ci); got != want {
		t.Errorf("pgpassLine(%+v) = %q, want %q", ci, got, want)
	}
}

func TestSCRAMVerifier(t *testing.T) {
	v, err := newSCRAMVerifier("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "SCRAM-SHA-256$4096:") || strings.Contains(v, "s3cret") {
		t.Errorf("newSCRAMVerifier = %q, want a SCRAM-SHA-256 verifier without the password", v)
	}
	tests := []struct {
		verifier, password string
		want               bool
	}{
		{v, "s3cret", true},
		{v, "s3cret ", false},
		{v, "", false},
		{"md5abcdef", "s3cret", false},
		{"SCRAM-SHA-256$x:y$z", "s3cret", false},
	}
	for _, tt := range tests {
		if got := scramMatches(tt.verifier, tt.password); got != tt.want {
			t.Errorf("scramMatches(%q, %q) = %v, want %v", tt.verifier, tt.password, got, tt.want)
		}
	}
	// The salt makes each verifier unique.
	if v2, _ := newSCRAMVerifier("s3cret"); v2 == v {
		t.Errorf("newSCRAMVerifier returned the same verifier twice: %q", v)
	}
}

// fakeDataDir makes a directory that passes Initialized, for Configure tests
// that need no server.
func fakeDataDir(t *testing.T, inst *Instance) {
	t.Helper()
	if err := os.Mkdir(inst.DataDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"PG_VERSION": "15\n", "postgresql.conf": "# initdb's\nport = 5432"} {
		if err := os.WriteFile(filepath.Join(inst.DataDir(), name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestConfigure(t *testing.T) {
	u := testUser(t)
	dir := testDir(t)
	inst := New(Config{DataDir: filepath.Join(dir, "demo-2"), User: u})
	fakeDataDir(t, inst)
	data := inst.DataDir()
	passfile := filepath.Join(dir, "demo-2.pgpass")

	standby := Settings{
		Name: "demo-2", ListenAddr: "127.0.0.1", Port: 6002,
		Follow:   &ConnInfo{Host: "127.0.0.1", Port: 6001, User: "replicator", Password: "repl 'secret'", RootCert: "/fleet/root.crt"},
		SlotName: "demo_2",
		Params:   map[string]string{"shared_buffers": "64MB", "work_mem": "8MB", "search_path": `it's "x"`},
	}
	// What an agent killed in the middle of a write left behind.
	leftover := filepath.Join(data, ".pgfleet.conf.tmp-123")
	if err := os.WriteFile(leftover, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Configure twice to check the include line is added only once.
	for range 2 {
		if err := inst.Configure(standby); err != nil {
			t.Fatalf("Configure(standby): %v", err)
		}
	}

	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Configure left %s (stat: %v); pg_basebackup from this member would fail on it", leftover, err)
	}
	conf := readFile(t, filepath.Join(data, "postgresql.conf"))
	if n := strings.Count(conf, includeLine); n != 1 {
		t.Errorf("postgresql.conf has %d include lines, want 1:\n%s", n, conf)
	}
	if !strings.HasPrefix(conf, "# initdb's\nport = 5432\n") {
		t.Errorf("postgresql.conf lost its content:\n%s", conf)
	}
	fleet := readFile(t, filepath.Join(data, "pgfleet.conf"))
	for _, want := range []string{
		"listen_addresses = '127.0.0.1'\n",
		"port = '6002'\n",
		"cluster_name = 'demo-2'\n",
		"unix_socket_directories = ''\n",
		"wal_level = 'replica'\n",
		"hot_standby_feedback = 'on'\n",
		"shared_buffers = '64MB'\n",
		"work_mem = '8MB'\n",
		`search_path = 'it''s "x"'` + "\n",
		// The upstream is verified against the fleet's CA, and SCRAM bound
		// to the TLS session, so no relay in between gets a session.
		"primary_conninfo = 'host=127.0.0.1 port=6001 user=replicator passfile=" + passfile + " application_name=demo-2 connect_timeout=5 sslmode=verify-full sslrootcert=/fleet/root.crt channel_binding=require'\n",
		"primary_slot_name = 'demo_2'\n",
		"recovery_target_timeline = 'latest'\n",
	} {
		if !strings.Contains(fleet, want) {
			t.Errorf("pgfleet.conf lacks %q:\n%s", want, fleet)
		}
	}
	if strings.Contains(fleet, "32MB") {
		t.Errorf("pgfleet.conf keeps the overridden shared_buffers default:\n%s", fleet)
	}

	// The password is only in the passfile, which is outside DataDir.
	entries, _ := os.ReadDir(data)
	for _, e := range entries {
		if strings.Contains(readFile(t, filepath.Join(data, e.Name())), "secret") {
			t.Errorf("%s contains the replication password", e.Name())
		}
	}
	if got, want := readFile(t, passfile), "127.0.0.1:6001:*:replicator:repl 'secret'\n"; got != want {
		t.Errorf("passfile = %q, want %q", got, want)
	}
	for _, name := range []string{passfile, filepath.Join(data, "pgfleet.conf"), filepath.Join(data, "pg_hba.conf"), filepath.Join(data, "standby.signal")} {
		checkOwned(t, name, u)
	}
	if hba := readFile(t, filepath.Join(data, "pg_hba.conf")); !strings.Contains(hba, "hostssl  replication  all   ::/0       scram-sha-256") || strings.Contains(hba, "\nhost ") {
		t.Errorf("pg_hba.conf lacks the TLS-only replication line, or admits plain TCP:\n%s", hba)
	}
	if conf := readFile(t, filepath.Join(data, "pgfleet.conf")); !strings.Contains(conf, "ssl = 'on'") || !strings.Contains(conf, "ssl_key_file = '"+inst.KeyPath()+"'") {
		t.Errorf("pgfleet.conf does not turn TLS on with the member's key:\n%s", conf)
	}
	checkOwned(t, inst.KeyPath(), u)
	if fi, err := os.Stat(inst.KeyPath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("TLS key %s: %v; want mode 0600", inst.KeyPath(), err)
	}

	// Back to primary: standby.signal and the passfile go away.
	if err := inst.Configure(Settings{Name: "demo-2", ListenAddr: "127.0.0.1", Port: 6002}); err != nil {
		t.Fatalf("Configure(primary): %v", err)
	}
	for _, gone := range []string{passfile, filepath.Join(data, "standby.signal")} {
		if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Configure(primary), stat %s: %v, want not exist", gone, err)
		}
	}
	if fleet := readFile(t, filepath.Join(data, "pgfleet.conf")); strings.Contains(fleet, "primary_conninfo") {
		t.Errorf("primary pgfleet.conf has primary_conninfo:\n%s", fleet)
	}
	if n := strings.Count(readFile(t, filepath.Join(data, "postgresql.conf")), includeLine); n != 1 {
		t.Errorf("postgresql.conf has %d include lines, want 1", n)
	}

	// The disk guard's read-only mode wins over the cluster's own value.
	guarded := Settings{Name: "demo-2", ListenAddr: "127.0.0.1", Port: 6002, ReadOnly: true, Params: map[string]string{"default_transaction_read_only": "off"}}
	if err := inst.Configure(guarded); err != nil {
		t.Fatalf("Configure(read-only): %v", err)
	}
	conf = readFile(t, filepath.Join(data, "pgfleet.conf"))
	if on, off := strings.LastIndex(conf, "default_transaction_read_only = 'on'"), strings.Index(conf, "default_transaction_read_only = 'off'"); on < 0 || on < off {
		t.Errorf("read-only pgfleet.conf does not end with default_transaction_read_only on:\n%s", conf)
	}

	// A member waiting for an election whose data a newer timeline forked
	// away from recovers along its own timeline.
	if err := inst.Configure(Settings{Name: "demo-2", ListenAddr: "127.0.0.1", Port: 6002, Standby: true, StayOnTimeline: true}); err != nil {
		t.Fatalf("Configure(stay on timeline): %v", err)
	}
	if fleet := readFile(t, filepath.Join(data, "pgfleet.conf")); !strings.Contains(fleet, "recovery_target_timeline = 'current'\n") {
		t.Errorf("pgfleet.conf does not stay on the data's timeline:\n%s", fleet)
	}
}

func TestConfigureRejects(t *testing.T) {
	inst := New(Config{DataDir: filepath.Join(testDir(t), "m"), User: testUser(t)})
	fakeDataDir(t, inst)
	ok := Settings{Name: "m", ListenAddr: "127.0.0.1", Port: 5432}
	tests := []struct {
		name   string
		modify func(*Settings)
	}{
		{"reserved param", func(s *Settings) { s.Params = map[string]string{"Port": "1"} }},
		{"include directive", func(s *Settings) { s.Params = map[string]string{"include": "/etc/passwd"} }},
		{"bad param name", func(s *Settings) { s.Params = map[string]string{"a b": "1"} }},
		{"newline in value", func(s *Settings) { s.Params = map[string]string{"work_mem": "1\nport=1"} }},
		{"hostname listen addr", func(s *Settings) { s.ListenAddr = "localhost" }},
		{"no name", func(s *Settings) { s.Name = "" }},
		{"port", func(s *Settings) { s.Port = 0 }},
		{"follow without user", func(s *Settings) { s.Follow = &ConnInfo{Host: "127.0.0.1", Port: 1} }},
	}
	for _, tt := range tests {
		s := ok
		tt.modify(&s)
		if err := inst.Configure(s); err == nil {
			t.Errorf("%s: Configure(%+v) = nil, want error", tt.name, s)
		}
	}
	if err := inst.Configure(ok); err != nil {
		t.Errorf("Configure(%+v) = %v", ok, err)
	}
}

// checkOwned fails unless path is 0600 and owned by u.
func checkOwned(t *testing.T, path string, u OSUser) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	if uid, gid := fileOwner(fi); uid != u.UID || gid != u.GID {
		t.Errorf("%s is owned by %d:%d, want %d:%d", path, uid, gid, u.UID, u.GID)
	}
}

// fileOwner returns the uid and gid of a file.
func fileOwner(fi os.FileInfo) (uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

// TestInitDBFailureLeavesNothing runs an initdb that writes part of a
// cluster and fails: no DataDir, build directory or password file may remain.
func TestInitDBFailureLeavesNothing(t *testing.T) {
	binDir := testDir(t)
	// initdb is called with -D <dir> first.
	script := "#!/bin/sh\nmkdir -p \"$2/base\" && echo 15 > \"$2/PG_VERSION\"\necho 'initdb: boom' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(binDir, "initdb"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := testDir(t)
	log, _ := testLogger(t)
	inst := New(Config{Bin: Bin{Dir: binDir, Version: 15}, DataDir: filepath.Join(dir, "m"), User: testUser(t), Logger: log})
	err := inst.InitDB(context.Background(), testPassword)
	if err == nil || !strings.Contains(err.Error(), "initdb: boom") {
		t.Fatalf("InitDB with a failing initdb = %v, want an error with its output", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("InitDB left %v behind", entries)
	}
	if inst.Initialized() {
		t.Errorf("Initialized() = true after a failed InitDB")
	}
}
