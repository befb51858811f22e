package migrate

import (
	"maps"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	src := Source{VersionNum: 140010, Extensions: []string{"hstore", "pg_trgm"}, Bytes: 10 << 20}
	dst := Target{VersionNum: 150004, Available: []string{"hstore", "pg_trgm", "plpgsql"}, FreeBytes: -1}
	if err := Check(src, dst, false); err != nil {
		t.Fatalf("Check(14 into 15) = %v", err)
	}
	for _, tt := range []struct {
		name  string
		src   Source
		dst   Target
		clean bool
		want  string
	}{
		{"newer source", Source{VersionNum: 160001}, dst, false, "PostgreSQL 16 and the cluster 15"},
		{"missing extension", Source{VersionNum: 150001, Extensions: []string{"postgis", "hstore"}}, dst, false, "extensions the cluster's hosts do not have: postgis"},
		{"tables in the target", src, Target{VersionNum: 150004, Available: dst.Available, UserTables: 3, FreeBytes: -1}, false, "already holds 3 table(s)"},
		{"too little room", src, Target{VersionNum: 150004, Available: dst.Available, FreeBytes: 1 << 20}, false, "10.0 MB and the cluster's primary has 1.0 MB free"},
	} {
		if err := Check(tt.src, tt.dst, tt.clean); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Check = %v, want an error with %q", tt.name, err, tt.want)
		}
	}
	if err := Check(src, Target{VersionNum: 150004, Available: dst.Available, UserTables: 3, FreeBytes: -1}, true); err != nil {
		t.Errorf("tables in the target with --clean: %v", err)
	}
}

func TestRoleStatements(t *testing.T) {
	roles := []Role{
		{Name: "postgres", Superuser: true, Login: true},
		{Name: "app", Login: true, Inherit: true, ConnLimit: -1, Password: "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"},
		{Name: "sneaky", ConnLimit: -1, Password: `SCRAM-SHA-256$4096:a$b:c\'; DROP TABLE x; --`},
		{Name: "ops", Superuser: true, Replication: true, Login: true, ConnLimit: 5, Password: "md5deadbeef"},
		{Name: "readers", Inherit: true, ConnLimit: -1},
		{Name: `we"ird`, ConnLimit: -1},
	}
	members := []Membership{{Role: "readers", Member: "app"}, {Role: "readers", Member: "postgres"}}
	skip := func(n string) (string, bool) { return "owned", n == "postgres" }
	stmts, notes := RoleStatements(roles, members, []string{"readers"}, skip)
	got := strings.Join(stmts, "\n")
	for _, want := range []string{
		`CREATE ROLE "app"`,
		`ALTER ROLE "app" WITH LOGIN NOCREATEDB NOCREATEROLE INHERIT NOSUPERUSER NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy'`,
		`ALTER ROLE "ops" WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT NOSUPERUSER NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5`,
		`CREATE ROLE "we""ird"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("statements lack %s:\n%s", want, got)
		}
	}
	for _, never := range []string{`CREATE ROLE "readers"`, `"postgres"`, " SUPERUSER", " REPLICATION ", "DROP TABLE", "md5deadbeef", `GRANT "readers"`, `ALTER ROLE "readers"`} {
		if strings.Contains(got, never) {
			t.Errorf("statements hold %q:\n%s", never, got)
		}
	}
	allNotes := strings.Join(notes, "\n")
	for _, want := range []string{"role postgres left out: owned", "role ops has an MD5 password", "role ops comes without its superuser or replication attribute", "role sneaky has a password that is not a SCRAM-SHA-256 verifier", "role readers exists in the cluster already: kept as it is"} {
		if !strings.Contains(allNotes, want) {
			t.Errorf("notes lack %q:\n%s", want, allNotes)
		}
	}
}

func TestRestoredTable(t *testing.T) {
	if n, ok := RestoredTable(`pg_restore: processing data for table "public.orders"`); !ok || n != "public.orders" {
		t.Errorf("RestoredTable = %q, %v", n, ok)
	}
	if _, ok := RestoredTable(`pg_restore: creating TABLE "public.orders"`); ok {
		t.Error("a create line counted as data")
	}
	if bad := Mismatches(Compare(map[string]int64{"a": 1, "b": 2}, map[string]int64{"a": 1})); len(bad) != 1 || bad[0].Table != "b" || bad[0].Target != -1 {
		t.Errorf("Mismatches = %+v; want b, missing in the target", bad)
	}
}

func TestSplitURL(t *testing.T) {
	c, err := SplitURL("postgres://u:s3cret@h:5432/db?sslmode=require")
	if err != nil || c.Password != "s3cret" || strings.Contains(c.URL, "s3cret") || !strings.Contains(c.URL, "u@h:5432/db") {
		t.Errorf("SplitURL = %+v, %v", c, err)
	}
	if _, err := SplitURL("mysql://h/db"); err == nil {
		t.Error("SplitURL accepted a mysql:// URL")
	}
}

func TestSumTrees(t *testing.T) {
	trees := []TableTree{
		{Table: "public.events", Relations: []string{"public.events_2026", "public.events_2027"}},
		{Table: "public.notes", Relations: []string{"public.notes", "public.notes_archive"}},
		{Table: "public.notes_archive", Relations: []string{"public.notes_archive"}},
		{Table: "public.empty", Relations: nil},
	}
	got, err := SumTrees(trees, map[string]int64{
		"public.events_2026": 300, "public.events_2027": 700, "public.notes": 500, "public.notes_archive": 200,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"public.events": 1000, "public.notes": 700, "public.notes_archive": 200, "public.empty": 0}
	if !maps.Equal(got, want) {
		t.Errorf("SumTrees = %v, want %v", got, want)
	}
	if _, err := SumTrees(trees, map[string]int64{"public.events_2026": 300}); err == nil || !strings.Contains(err.Error(), "public.events_2027") {
		t.Errorf("SumTrees without a partition's count: %v, want an error naming it", err)
	}
}
