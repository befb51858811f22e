package fleet

import (
	"strings"
	"testing"
)

func TestValidateAccessNames(t *testing.T) {
	tests := []struct {
		name  string
		check func(string) error
		in    string
		want  string // a part of the error; "" for none
	}{
		{"user", func(s string) error { return ValidateRoleName("user", s) }, "alice", ""},
		{"user with digits, '_' and '-'", func(s string) error { return ValidateRoleName("user", s) }, "ci_bot-2", ""},
		{"empty user", func(s string) error { return ValidateRoleName("user", s) }, "", "user name is empty"},
		{"upper case", func(s string) error { return ValidateRoleName("user", s) }, "Alice", "not valid"},
		{"quote", func(s string) error { return ValidateRoleName("user", s) }, `a"b`, "not valid"},
		{"injection", func(s string) error { return ValidateRoleName("user", s) }, "x; DROP ROLE postgres", "not valid"},
		{"leading digit", func(s string) error { return ValidateRoleName("user", s) }, "1st", "not valid"},
		{"too long", func(s string) error { return ValidateRoleName("user", s) }, strings.Repeat("a", 64), "at most 63"},
		{"longest", func(s string) error { return ValidateRoleName("user", s) }, strings.Repeat("a", 63), ""},
		{"superuser", func(s string) error { return ValidateRoleName("user", s) }, "postgres", "superuser"},
		{"replication user", func(s string) error { return ValidateRoleName("user", s) }, ReplicationUser, "replication user"},
		{"postgres' own", func(s string) error { return ValidateRoleName("user", s) }, "pg_monitor", "reserved by PostgreSQL"},
		{"pgfleet prefix", func(s string) error { return ValidateRoleName("user", s) }, "pgfleet_backup", "reserved for pgfleet"},
		{"database", ValidateDatabaseName, "reports", ""},
		{"template", ValidateDatabaseName, "template1", "every cluster has it"},
		{"maintenance database", ValidateDatabaseName, "postgres", "every cluster has it"},
		{"database with space", ValidateDatabaseName, "a b", "not valid"},
		{"app", ValidateAppName, "shop-api", ""},
		{"app named like a template", ValidateAppName, "template0", "every cluster has"},
		{"app named postgres", ValidateAppName, "postgres", "superuser"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check(tt.in)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("validate(%q) = %v, want nil", tt.in, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("validate(%q) = %v, want an error with %q", tt.in, err, tt.want)
			}
		})
	}
}
