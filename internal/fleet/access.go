package fleet

import (
	"fmt"
	"regexp"
	"strings"
)

// MaxRoleName and MaxDatabaseName are NAMEDATALEN-1, the longest name
// PostgreSQL keeps: a longer one would be cut silently, and two users or
// databases given different names would get the same one.
const (
	MaxRoleName     = 63
	MaxDatabaseName = 63
)

// sqlNameRE is the shape of the names of users, apps and databases: what a
// person types in a URL, an env file or psql without quoting (no upper
// case, which PostgreSQL folds, no quotes, no spaces). '-' is allowed, as
// in cluster names, so an app called "shop-api" keeps its name.
var sqlNameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)

// systemDatabases are the databases every cluster has and pgfleet needs:
// the superuser's maintenance database and the templates CREATE DATABASE
// copies.
var systemDatabases = map[string]bool{"postgres": true, "template0": true, "template1": true}

// OwnedRole reports whether the role name belongs to pgfleet or to
// PostgreSQL itself, and why, so that no user command creates, changes or
// drops it: the superuser and the replication user are how the agents run
// the cluster (their passwords live in the store and in passfiles), pg_*
// roles are PostgreSQL's, and the pgfleet prefix is kept for roles a later
// version adds.
func OwnedRole(name string) (why string, owned bool) {
	switch {
	case name == Superuser:
		return "it is the cluster's superuser, which the agents use to run the cluster (`pgfleet url` gives its URL)", true
	case name == ReplicationUser:
		return "it is the replication user the standbys stream with", true
	case strings.HasPrefix(name, "pg_"):
		return "names starting with pg_ are reserved by PostgreSQL", true
	case strings.HasPrefix(name, "pgfleet"):
		return "names starting with pgfleet are reserved for pgfleet's own roles", true
	}
	return "", false
}

// ValidateRoleName checks the name of a user or an app (whose role has the
// app's name): kind ("user", "app") names it in the error. Roles pgfleet or
// PostgreSQL own are refused with the reason.
func ValidateRoleName(kind, name string) error {
	if err := validateSQLName(kind, name, MaxRoleName); err != nil {
		return err
	}
	if why, owned := OwnedRole(name); owned {
		return fmt.Errorf("%s name %q cannot be used: %s; pick another name", kind, name, why)
	}
	return nil
}

// ValidateDatabaseName checks the name of a database a user creates or
// deletes; the databases every cluster needs are refused.
func ValidateDatabaseName(name string) error {
	if err := validateSQLName("database", name, MaxDatabaseName); err != nil {
		return err
	}
	if systemDatabases[name] {
		return fmt.Errorf("database name %q cannot be used: every cluster has it and pgfleet needs it; pick another name", name)
	}
	return nil
}

// ValidateAppName checks an app's name, which names both its database and
// its role.
func ValidateAppName(name string) error {
	if err := ValidateRoleName("app", name); err != nil {
		return err
	}
	if systemDatabases[name] {
		return fmt.Errorf("app name %q cannot be used: the app's database would be %s, which every cluster has; pick another name", name, name)
	}
	return nil
}

func validateSQLName(kind, name string, max int) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name is empty: use lowercase letters, digits, '_' and '-', starting with a letter", kind)
	case len(name) > max:
		return fmt.Errorf("%s name %q is %d characters long: at most %d are allowed", kind, name, len(name), max)
	case !sqlNameRE.MatchString(name):
		return fmt.Errorf("%s name %q is not valid: use lowercase letters, digits, '_' and '-', starting with a letter", kind, name)
	}
	return nil
}
