// Package migrate decides how an existing Postgres database moves into a
// pgfleet cluster (`pgfleet import`): whether the source fits the target,
// which roles come along and with which attributes, how far a restore has
// got, which tables the import copies itself and in how many parts
// (plan.go), and whether every table arrived whole. These decisions do no
// I/O; pgdump.go runs pg_dump and pg_restore, stream.go copies big tables
// COPY to COPY, offline.go puts the two together, and count.go counts
// the rows and gathers the statistics afterwards.
package migrate

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// Source is what the import learns about the source before it copies
// anything.
type Source struct {
	VersionNum int      // server_version_num, e.g. 150004
	Extensions []string // installed in the source database, plpgsql aside
	Bytes      int64    // pg_database_size of the source database
}

// Target is what the import learns about the target cluster.
type Target struct {
	VersionNum int
	Available  []string // pg_available_extensions
	UserTables int      // tables outside the system schemas in the target database
	FreeBytes  int64    // free space for the target's data, -1 when unknown
}

// Check refuses an import that cannot work, before anything is copied: a
// source newer than the cluster's major version, extensions the target
// lacks, a target database that already holds tables (unless clean), or
// too little room for the data.
func Check(src Source, dst Target, clean bool) error {
	if src.VersionNum/10000 > dst.VersionNum/10000 {
		return fmt.Errorf("the source runs PostgreSQL %d and the cluster %d: pg_dump cannot move data to an older major version; import into a cluster of version %d or later", src.VersionNum/10000, dst.VersionNum/10000, src.VersionNum/10000)
	}
	var missing []string
	for _, e := range src.Extensions {
		if !slices.Contains(dst.Available, e) {
			missing = append(missing, e)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("the source database uses extensions the cluster's hosts do not have: %s; install their packages on every host first", strings.Join(missing, ", "))
	}
	if dst.UserTables > 0 && !clean {
		return fmt.Errorf("the target database already holds %d table(s): import into an empty database, or pass --clean to drop what the source also has", dst.UserTables)
	}
	// Restored data with its indexes takes about what the source does.
	if dst.FreeBytes >= 0 && src.Bytes > dst.FreeBytes {
		return fmt.Errorf("the source database is %s and the cluster's primary has %s free: give it more disk first", fleet.FormatBytes(src.Bytes), fleet.FormatBytes(dst.FreeBytes))
	}
	return nil
}

// Role is a role of the source, as pg_roles and pg_authid show it.
type Role struct {
	Name        string
	Login       bool
	CreateDB    bool
	CreateRole  bool
	Inherit     bool
	ConnLimit   int
	Password    string // the stored verifier (SCRAM-SHA-256$... or md5...); "" when unknown
	Superuser   bool   // never carried over
	Replication bool   // never carried over
}

// Membership is one GRANT role TO member of the source.
type Membership struct {
	Role, Member string
	Admin        bool
}

// RoleStatements returns the SQL that makes the source's roles in the
// target, and the roles it leaves out with the reason. Roles pgfleet or
// PostgreSQL own (skip says which) are left out; superuser, replication and
// bypass-RLS attributes never come along: in a pgfleet cluster only
// pgfleet's own roles hold them. A role the cluster has already is kept as
// it is, memberships included: a source naming another app's role must not
// take it over.
func RoleStatements(roles []Role, members []Membership, existing []string, skip func(name string) (why string, skipped bool)) (stmts []string, notes []string) {
	kept := map[string]bool{}
	for _, r := range roles {
		if why, s := skip(r.Name); s {
			notes = append(notes, fmt.Sprintf("role %s left out: %s", r.Name, why))
			continue
		}
		if slices.Contains(existing, r.Name) {
			notes = append(notes, fmt.Sprintf("role %s exists in the cluster already: kept as it is", r.Name))
			continue
		}
		kept[r.Name] = true
		id := pgx.Identifier{r.Name}.Sanitize()
		stmts = append(stmts, "CREATE ROLE "+id)
		attrs := []string{
			flag(r.Login, "LOGIN"), flag(r.CreateDB, "CREATEDB"), flag(r.CreateRole, "CREATEROLE"),
			flag(r.Inherit, "INHERIT"), "NOSUPERUSER", "NOREPLICATION", "NOBYPASSRLS",
			fmt.Sprintf("CONNECTION LIMIT %d", r.ConnLimit),
		}
		switch {
		case r.Password == "":
		case scramVerifier.MatchString(r.Password):
			attrs = append(attrs, "PASSWORD "+quoteLiteral(r.Password))
		case strings.HasPrefix(r.Password, "md5"):
			notes = append(notes, fmt.Sprintf("role %s has an MD5 password, which the cluster (SCRAM only) would refuse: it comes without one; set one with `pgfleet users rotate`", r.Name))
		default:
			// Only a verifier's own characters go into the statement.
			notes = append(notes, fmt.Sprintf("role %s has a password that is not a SCRAM-SHA-256 verifier: it comes without one", r.Name))
		}
		if r.Superuser || r.Replication {
			notes = append(notes, fmt.Sprintf("role %s comes without its superuser or replication attribute", r.Name))
		}
		stmts = append(stmts, "ALTER ROLE "+id+" WITH "+strings.Join(attrs, " "))
	}
	for _, m := range members {
		if !kept[m.Role] || !kept[m.Member] {
			continue
		}
		s := "GRANT " + pgx.Identifier{m.Role}.Sanitize() + " TO " + pgx.Identifier{m.Member}.Sanitize()
		if m.Admin {
			s += " WITH ADMIN OPTION"
		}
		stmts = append(stmts, s)
	}
	return stmts, notes
}

func flag(on bool, name string) string {
	if on {
		return name
	}
	return "NO" + name
}

// scramVerifier is the form of a SCRAM-SHA-256 verifier as pg_authid
// holds it: nothing a statement could be broken out of with.
var scramVerifier = regexp.MustCompile(`^SCRAM-SHA-256\$[0-9]{1,7}:[A-Za-z0-9+/=]{1,64}\$[A-Za-z0-9+/=]{1,64}:[A-Za-z0-9+/=]{1,64}$`)

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// restoreLine is pg_restore --verbose's line for one table's data.
var restoreLine = regexp.MustCompile(`^pg_restore: processing data for table "(.+)"$`)

// RestoredTable returns the table a line of pg_restore --verbose says it
// has started to load, if it is such a line.
func RestoredTable(line string) (string, bool) {
	m := restoreLine.FindStringSubmatch(strings.TrimSpace(line))
	if m == nil {
		return "", false
	}
	return m[1], true
}

// TableCount is one table's rows in the source and the target.
type TableCount struct {
	Table          string
	Source, Target int64
}

// Compare pairs the source's row counts with the target's, by table; a
// table the target lacks has Target -1. Each side's names come from that
// side's own catalog: a name the source sent is never run on the target.
func Compare(src, dst map[string]int64) []TableCount {
	out := make([]TableCount, 0, len(src))
	for t, n := range src {
		c := TableCount{Table: t, Source: n, Target: -1}
		if m, ok := dst[t]; ok {
			c.Target = m
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Table < out[j].Table })
	return out
}

// Mismatches returns the tables whose row counts differ.
func Mismatches(counts []TableCount) []TableCount {
	var out []TableCount
	for _, c := range counts {
		if c.Source != c.Target {
			out = append(out, c)
		}
	}
	return out
}

// TableTree is one table of the row-count summary (Tables) and the
// relations whose rows `SELECT count(*)` on it reads: itself and every
// inheritance child and partition below it, each once.
type TableTree struct {
	Table     string
	Relations []string
}

// SumTrees gives each summary table the sum of its relations' rows, as
// count(*) on it would: rows holds each relation's own rows (COPY's
// count for those the import streamed, count(*) FROM ONLY for the
// others). A relation missing from rows is an error, not a zero: the
// summary must never claim a count it did not take.
func SumTrees(trees []TableTree, rows map[string]int64) (map[string]int64, error) {
	out := make(map[string]int64, len(trees))
	for _, t := range trees {
		var n int64
		for _, r := range t.Relations {
			m, ok := rows[r]
			if !ok {
				return nil, fmt.Errorf("no row count for %s (in %s)", r, t.Table)
			}
			n += m
		}
		out[t.Table] = n
	}
	return out, nil
}
