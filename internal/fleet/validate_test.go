package fleet

import (
	"strings"
	"testing"
)

// check fails t when err does not match want: "" for no error, else a
// substring of the error.
func check(t *testing.T, call string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s = %q, want nil", call, err)
	case want != "" && err == nil:
		t.Errorf("%s = nil, want an error containing %q", call, want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("%s = %q, want it to contain %q", call, err, want)
	}
}

func TestValidateMemberID(t *testing.T) {
	tests := []struct {
		cluster, id string
		want        string
	}{
		{"db", "db-1", ""},
		{"db", "db-9", ""},
		{"db", "db-25", ""}, // MaxHA + MaxReplicas
		{"my-db", "my-db-3", ""},
		{"db", "", "member id is empty"},
		{"db", ".", `member id "." is not valid: the members of cluster db are db-1 to db-25`},
		{"db", "..", `member id ".." is not valid`},
		{"db", "../x", `member id "../x" is not valid`},
		{"db", "db-1/../../x", "is not valid"},
		{"db", "a/b", "is not valid"},
		{"db", "db/1", "is not valid"},
		{"db", "db-0", "is not valid"},
		{"db", "db-01", "is not valid"},
		{"db", "db-26", "is not valid"},
		{"db", "db-1000", "is not valid"},
		{"db", "db-99999999999999999999", "is not valid"},
		{"db", "db-", "is not valid"},
		{"db", "db", "is not valid"},
		{"db", "db--1", "is not valid"},
		{"db", "db-+1", "is not valid"},
		{"db", "db- 1", "is not valid"},
		{"db", "db-1 ", "is not valid"},
		{"db", "db-1\n", "is not valid"},
		{"db", "DB-1", "is not valid"},
		{"db", "other-1", "is not valid"},
		{"db", "db-1-1", "is not valid"}, // a member of cluster db-1, not of db
		{"db", strings.Repeat("a", 300), "is not valid"},
		{"../db", "../db-1", "cluster name"},
		{"", "-1", "cluster name is empty"},
	}
	for _, tt := range tests {
		check(t, "ValidateMemberID("+tt.cluster+", "+tt.id+")", ValidateMemberID(tt.cluster, tt.id), tt.want)
	}
	// Every id MemberID makes for a valid cluster passes.
	for n := 1; n <= MaxMembers; n++ {
		id := MemberID(strings.Repeat("a", MaxClusterName), n)
		check(t, "ValidateMemberID(MemberID(max, n))", ValidateMemberID(strings.Repeat("a", MaxClusterName), id), "")
	}
}

func TestValidateNames(t *testing.T) {
	tests := []struct {
		name string
		f    func(string) error
		s    string
		want string
	}{
		{"cluster", ValidateClusterName, "db", ""},
		{"cluster", ValidateClusterName, "", "cluster name is empty"},
		{"cluster", ValidateClusterName, "..", "is not valid"},
		{"cluster", ValidateClusterName, "a/b", "is not valid"},
		{"cluster", ValidateClusterName, strings.Repeat("a", 41), "at most 40"},
		{"host", ValidateHostName, "iad-1", ""},
		{"host", ValidateHostName, strings.Repeat("h", 63), ""},
		{"host", ValidateHostName, strings.Repeat("h", 64), "at most 63"},
		{"host", ValidateHostName, "../etc", "host name \"../etc\" is not valid"},
		{"host", ValidateHostName, "h1\n", "is not valid"},
		{"region", ValidateRegion, "iad", ""},
		{"region", ValidateRegion, "i a d", "region name"},
		{"region", ValidateRegion, "", "region name is empty"},
	}
	for _, tt := range tests {
		check(t, "Validate "+tt.name+" "+tt.s, tt.f(tt.s), tt.want)
	}
}

func TestReservedParameter(t *testing.T) {
	reserved := []string{
		// The brief's list, and what internal/postgres writes itself.
		"synchronous_commit", "synchronous_standby_names", "fsync", "full_page_writes", "wal_level",
		"hba_file", "ident_file", "config_file", "data_directory", "external_pid_file",
		"archive_command", "restore_command", "recovery_end_command", "archive_cleanup_command", "ssl_passphrase_command",
		"ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_dir", "ssl_ciphers", "ssl_min_protocol_version",
		"ssl_passphrase_command_supports_reload",
		"archive_mode", "archive_library", "archive_timeout", "primary_conninfo", "primary_slot_name",
		"recovery_target", "recovery_target_time", "recovery_target_timeline", "recovery_target_lsn", "recovery_target_action",
		"port", "listen_addresses", "unix_socket_directories", "unix_socket_group", "unix_socket_permissions",
		"shared_preload_libraries", "local_preload_libraries", "session_preload_libraries", "dynamic_library_path", "jit_provider",
		"log_directory", "log_filename", "logging_collector", "log_destination",
		"hot_standby", "max_wal_senders", "max_replication_slots", "cluster_name", "wal_log_hints",
		"password_encryption", "include", "include_dir", "include_if_exists", "promote_trigger_file", "krb_server_keyfile",
		"data_sync_retry", "zero_damaged_pages", "ignore_checksum_failure",
		// Families: a future *_command, an extension's file or command.
		"some_future_command", "myext.hook_command", "myext.key_file",
	}
	for _, name := range reserved {
		if why, ok := ReservedParameter(name); !ok || why == "" {
			t.Errorf("ReservedParameter(%q) = %q, %v; want it reserved, with a reason", name, why, ok)
		}
	}
	free := []string{
		"work_mem", "shared_buffers", "max_connections", "search_path", "statement_timeout", "log_line_prefix",
		"log_min_duration_statement", "hot_standby_feedback", "jit", "random_page_cost", "temp_file_limit",
		"auto_explain.log_min_duration", "pg_stat_statements.max", "recovery_min_apply_delay", "wal_keep_size",
	}
	for _, name := range free {
		if why, ok := ReservedParameter(name); ok {
			t.Errorf("ReservedParameter(%q) = %q, true; want it settable", name, why)
		}
	}
}

func TestValidateParameter(t *testing.T) {
	tests := []struct {
		name, value string
		want        string
	}{
		{"work_mem", "8MB", ""},
		{"search_path", `"$user", public`, ""},
		{"log_line_prefix", `%m [%p] it's \ fine `, ""}, // quoting is config.go's job
		{"auto_explain.log_min_duration", "250ms", ""},
		{"work_mem", strings.Repeat("9", MaxParamValue), ""},
		{"archive_cleanup_command", "pg_archivecleanup /x %r", "parameter archive_cleanup_command is reserved by pgfleet and cannot be set: it would make the server run a shell command"},
		{"recovery_end_command", "rm -rf /", "run a shell command"},
		{"shared_preload_libraries", "pg_stat_statements", "load a shared library"},
		{"fsync", "off", "lets a crash corrupt data"},
		{"synchronous_commit", "off", "--sync off|on|strict"},
		{"ssl_ciphers", "NULL", "certificates from the fleet's CA"},
		{"hba_file", "/tmp/hba", "file or directory"},
		// logical writes all that replica does: the cluster can then be a
		// logical replication source (an online import out of it).
		{"wal_level", "logical", ""},
		{"wal_level", " Logical ", ""},
		{"wal_level", "minimal", `parameter wal_level = "minimal": pgfleet sets it on every member for its role (primary, standby or replica) so that replication, failover and pg_rewind work; it may be set to logical only`},
		{"wal_level", "replica", "may be set to logical only"},
		{"FSYNC", "off", "is not a valid PostgreSQL setting name"},
		{"Work_Mem", "1MB", "is not a valid PostgreSQL setting name"},
		{"a..b", "1", "is not a valid PostgreSQL setting name"},
		{"a.", "1", "is not a valid PostgreSQL setting name"},
		{".a", "1", "is not a valid PostgreSQL setting name"},
		{"a.b.c", "1", "is not a valid PostgreSQL setting name"},
		{"1a", "1", "is not a valid PostgreSQL setting name"},
		{"x;drop", "1", "is not a valid PostgreSQL setting name"},
		{"work_mem = 1\nfsync", "off", "is not a valid PostgreSQL setting name"},
		{"", "1", "empty name"},
		{strings.Repeat("a", MaxParamName+1), "1", "at most 63"},
		{"work_mem", "8MB\nfsync = off", "line break"},
		{"work_mem", "8MB\r", "line break"},
		{"work_mem", "8MB\x00", "control character"},
		{"work_mem", "\x1b[2J", "control character"},
		{"work_mem", "\xff", "not valid UTF-8"},
		{"work_mem", strings.Repeat("9", MaxParamValue+1), "at most 1024"},
	}
	for _, tt := range tests {
		check(t, "ValidateParameter("+tt.name+", "+tt.value+")", ValidateParameter(tt.name, tt.value), tt.want)
	}
	many := map[string]string{}
	for i := range MaxParams + 1 {
		many[strings.Repeat("x", i%50+1)+"_"+string(rune('a'+i%26))+strings.Repeat("y", i/26)] = "1"
	}
	check(t, "ValidateParameters(201 settings)", ValidateParameters(many), "at most 200")
	// The first bad name in name order is reported, every time.
	for range 5 {
		check(t, "ValidateParameters(two reserved)", ValidateParameters(map[string]string{"port": "1", "fsync": "off", "work_mem": "1MB"}), "parameter fsync is reserved")
	}
}

func TestValidateBackupStore(t *testing.T) {
	tests := []struct {
		url, want string
	}{
		{"file:///var/lib/pgfleet/backups", ""},
		{"file:///var/lib/pgfleet/backups/", ""},
		{"file://localhost/srv/b", ""},
		{"s3://bucket/prefix?endpoint=127.0.0.1:9000", ""},
		{"", "empty"},
		{"file://relative/path", "want file:///ABSOLUTE/PATH"},
		{"file:///srv/../etc", "without '..'"},
		{"file:///srv/b\n; rm -rf /", "control character"},
		{"http://example.com/x", "want file:///ABSOLUTE/PATH or s3://"},
		{"s3://", "want file:///ABSOLUTE/PATH or s3://"},
		{"file:///" + strings.Repeat("a", MaxURL), "at most 1024"},
	}
	for _, tt := range tests {
		check(t, "ValidateBackupStore("+tt.url+")", ValidateBackupStore(tt.url), tt.want)
	}
}

// TestValidateRecords: what an agent reads from the store passes only in
// the shapes pgfleet writes.
func TestValidateRecords(t *testing.T) {
	host := Host{Name: "iad-1", Region: "iad", Addr: "10.0.0.1", APIAddr: "10.0.0.1:7480", Version: "v0.3.0"}
	member := MemberSpec{ID: "db-2", Cluster: "db", Host: "iad-1", Region: "iad", Role: RoleStandby, Port: 6000}
	status := MemberStatus{ID: "db-2", Host: "iad-1", Region: "iad", Role: RoleStandby, State: StateStreaming,
		Addr: "10.0.0.1:6000", WriteLSN: "0/3000060", ReplayLSN: "1A/FF000000", Message: "any\ntext"}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"host", host.Validate(), ""},
		{"host without API address", func() Host { h := host; h.APIAddr = ""; return h }().Validate(), ""},
		{"host name", func() Host { h := host; h.Name = "../../etc"; return h }().Validate(), `host name "../../etc" is not valid`},
		{"host region", func() Host { h := host; h.Region = "IAD"; return h }().Validate(), "host iad-1: region name"},
		{"host address", func() Host { h := host; h.Addr = "evil.example.com"; return h }().Validate(), "is not an IP address"},
		{"host no address", func() Host { h := host; h.Addr = ""; return h }().Validate(), "is not an IP address"},
		{"host API address", func() Host { h := host; h.APIAddr = "10.0.0.1"; return h }().Validate(), "is not host:port"},
		{"host version", func() Host { h := host; h.Version = "v1\nFAKE LOG LINE"; return h }().Validate(), "version"},

		{"member", member.Validate("db"), ""},
		{"member id", func() MemberSpec { m := member; m.ID = "../x"; return m }().Validate("db"), `member id "../x" is not valid`},
		{"member of another cluster", member.Validate("other"), `member id "db-2" is not valid: the members of cluster other`},
		{"member cluster", func() MemberSpec { m := member; m.Cluster = "other"; return m }().Validate("db"), `names cluster "other", not db`},
		{"member host", func() MemberSpec { m := member; m.Host = "a/b"; return m }().Validate("db"), "member db-2: host name"},
		{"member role", func() MemberSpec { m := member; m.Role = "leader"; return m }().Validate("db"), `role "leader"`},
		{"member port", func() MemberSpec { m := member; m.Port = 0; return m }().Validate("db"), "port 0"},

		{"status", status.Validate("db"), ""},
		{"status, nothing published yet", MemberStatus{ID: "db-2"}.Validate("db"), ""},
		{"status id", MemberStatus{ID: "db-2/../../x"}.Validate("db"), "is not valid"},
		{"status host", func() MemberStatus { s := status; s.Host = ".."; return s }().Validate("db"), "host name"},
		{"status state", func() MemberStatus { s := status; s.State = "Running\n"; return s }().Validate("db"), "is not a state"},
		{"status newer state", func() MemberStatus { s := status; s.State = "resizing-disk"; return s }().Validate("db"), ""},
		{"status address", func() MemberStatus { s := status; s.Addr = "10.0.0.1"; return s }().Validate("db"), "is not host:port"},
		{"status LSN", func() MemberStatus { s := status; s.ReceiveLSN = "0/1; drop"; return s }().Validate("db"), "WAL positions"},

		{"candidacy", Candidacy{Member: "db-3"}.Validate("db"), ""},
		{"candidacy member", Candidacy{Member: ".."}.Validate("db"), `member id ".." is not valid`},
		{"sync", SyncState{Primary: "db-1", Members: []string{"db-2", "db-3"}}.Validate("db"), ""},
		{"sync primary", SyncState{Primary: "", Members: []string{"db-2"}}.Validate("db"), "primary: member id is empty"},
		{"sync member", SyncState{Primary: "db-1", Members: []string{"db-2", "a/b"}}.Validate("db"), `member id "a/b"`},
		{"switchover", Switchover{From: "db-1", To: "db-2"}.Validate("db"), ""},
		{"switchover to", Switchover{From: "db-1", To: "../db-2"}.Validate("db"), "to: member id"},
		{"switchover hold", Switchover{From: "db-1", To: "db-2", HoldMillis: -1}.Validate("db"), "negative"},
		{"backup request", BackupRequest{ID: "20240101T000000.000Z", Member: "db-2"}.Validate("db"), ""},
		{"backup request id", BackupRequest{ID: "../../x", Member: "db-2"}.Validate("db"), "backup id"},
		{"backup request member", BackupRequest{ID: "b1", Member: ""}.Validate("db"), "member id is empty"},

		{"secrets", Secrets{SuperuserPassword: "0123abcd", ReplicationPassword: "x:y\\z", BackupKey: strings.Repeat("ab", 32)}.Validate(), ""},
		{"secrets empty", Secrets{}.Validate(), ""},
		{"secrets line break", Secrets{ReplicationPassword: "pw\n*:*:*:*:other"}.Validate(), "replication password"},
		{"secrets key", Secrets{BackupKey: "not a key\n"}.Validate(), "backup key"},

		{"retired", Retired{Spec: ClusterSpec{Name: "old", Params: map[string]string{"shared_preload_libraries": "x"},
			Backup: &BackupSpec{Store: "file:///srv/b"}}}.Validate(), ""},
		{"retired name", Retired{Spec: ClusterSpec{Name: "../old"}}.Validate(), "cluster name"},
		{"retired store", Retired{Spec: ClusterSpec{Name: "old", Backup: &BackupSpec{Store: "file:///srv/../etc"}}}.Validate(), "backup: backup store URL"},
	}
	for _, tt := range tests {
		check(t, "Validate("+tt.name+")", tt.err, tt.want)
	}
}

func TestValidateStoredSpec(t *testing.T) {
	ok := ClusterSpec{Name: "db", PrimaryRegion: "iad", HA: 2, Port: 6000,
		Backup:  &BackupSpec{Store: "file:///srv/backups"},
		Restore: &RestoreSpec{From: "old", Store: "s3://b/p", BackupID: "20240101T000000.000Z", LSN: "0/3000060"}}
	tests := []struct {
		name   string
		mutate func(*ClusterSpec)
		want   string
	}{
		{"valid", func(*ClusterSpec) {}, ""},
		{"no port", func(s *ClusterSpec) { s.Port = 0 }, "port 0 is not a port block"},
		{"port block past 65535", func(s *ClusterSpec) { s.Port = 65534 }, "port 65534"},
		{"reserved parameter", func(s *ClusterSpec) { s.Params = map[string]string{"archive_cleanup_command": "sh -c x"} }, "archive_cleanup_command is reserved"},
		{"backup store", func(s *ClusterSpec) { s.Backup = &BackupSpec{Store: "file:///a/../../root"} }, "backup: backup store URL"},
		{"backup interval", func(s *ClusterSpec) { s.Backup = &BackupSpec{Store: "file:///a", EverySeconds: -1} }, "must not be negative"},
		{"restore source", func(s *ClusterSpec) { r := *s.Restore; r.From = "../x"; s.Restore = &r }, "restore: from: cluster name"},
		{"restore backup", func(s *ClusterSpec) { r := *s.Restore; r.BackupID = "a/b"; s.Restore = &r }, "restore: backup id"},
		{"restore LSN", func(s *ClusterSpec) { r := *s.Restore; r.LSN = "0/1'"; s.Restore = &r }, "restore: target LSN"},
	}
	for _, tt := range tests {
		s := ok
		tt.mutate(&s)
		check(t, "ValidateStored("+tt.name+")", s.ValidateStored(), tt.want)
	}
}
