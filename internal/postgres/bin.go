// Package postgres runs one local PostgreSQL instance: it creates the data
// directory (initdb or pg_basebackup), writes the configuration pgfleet owns,
// supervises the postmaster as a direct child process, and offers the few SQL
// calls a supervisor needs (status, roles, replication slots, promotion).
//
// The package knows nothing about clusters, members or etcd; it is the edge
// where pgfleet touches PostgreSQL binaries and files.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MinVersion is the oldest PostgreSQL major version pgfleet drives. The
// configuration it writes (primary_conninfo in postgresql.conf, standby.signal,
// pg_promote) needs 12+, and 15 is what pgfleet is tested against.
const MinVersion = 15

// ErrNoPostgres is returned (wrapped) by FindBin when no usable server
// installation exists, so a command can tell "install PostgreSQL" apart from
// other failures.
var ErrNoPostgres = errors.New("postgres not installed")

// Bin is a located PostgreSQL server installation.
type Bin struct {
	Dir     string // directory holding postgres, initdb, pg_basebackup, pg_ctl...
	Version int    // major version, e.g. 15
}

// Path returns the path of the named program in the installation.
func (b Bin) Path(program string) string { return filepath.Join(b.Dir, program) }

// FindBin locates server binaries. It tries, in order: explicit (when
// non-empty; it is then the only candidate), $PG_BIN, `pg_config --bindir`, and
// the highest /usr/lib/postgresql/*/bin. Client-only packages put pg_config on
// PATH without a server, so every candidate must actually hold `postgres` of
// major version MinVersion or later.
//
// When nothing fits the error wraps ErrNoPostgres and tells the user how to fix
// it.
func FindBin(explicit string) (Bin, error) {
	var candidates []string
	if explicit != "" {
		candidates = []string{explicit}
	} else {
		if dir := os.Getenv("PG_BIN"); dir != "" {
			candidates = append(candidates, dir)
		}
		if dir := pgConfigBindir(); dir != "" {
			candidates = append(candidates, dir)
		}
		candidates = append(candidates, debianBinDirs()...)
	}

	var looked, problems []string
	for _, dir := range candidates {
		if slices.Contains(looked, dir) {
			continue
		}
		looked = append(looked, dir)
		bin, err := probeBin(dir)
		if err == nil {
			return bin, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			problems = append(problems, err.Error())
		}
	}
	if len(looked) == 0 {
		looked = []string{"$PG_BIN", "pg_config --bindir", "/usr/lib/postgresql/*/bin"}
	}
	msg := fmt.Sprintf("PostgreSQL %d server binaries not found (looked in %s)", MinVersion, strings.Join(looked, ", "))
	if len(problems) > 0 {
		msg += " [" + strings.Join(problems, "; ") + "]"
	}
	msg += fmt.Sprintf(": install them with `sudo apt-get install -y postgresql-%d` or pass --pg-bin DIR", MinVersion)
	return Bin{}, notFoundError(msg)
}

// notFoundError is ErrNoPostgres with a message written for the user, who
// should see what to do rather than a chain of wrapped phrases.
type notFoundError string

func (e notFoundError) Error() string        { return string(e) }
func (e notFoundError) Is(target error) bool { return target == ErrNoPostgres }

// pgConfigBindir asks pg_config where the binaries are; "" when pg_config is
// missing or fails.
func pgConfigBindir() string {
	path, err := exec.LookPath("pg_config")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--bindir").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// debianBinDirs lists /usr/lib/postgresql/<major>/bin, highest major first,
// which is where Debian and Ubuntu packages (and the PGDG apt repository)
// install server binaries without putting them on PATH.
func debianBinDirs() []string {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	major := func(dir string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		return n
	}
	sort.Slice(matches, func(a, b int) bool { return major(matches[a]) > major(matches[b]) })
	return matches
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

// probeBin checks that dir holds a postgres binary of a supported version. It
// returns an error wrapping os.ErrNotExist when there is no postgres at all, so
// FindBin can leave empty candidates out of its message.
func probeBin(dir string) (Bin, error) {
	path := filepath.Join(dir, "postgres")
	fi, err := os.Stat(path)
	if err != nil {
		return Bin{}, fmt.Errorf("%s: %w", path, os.ErrNotExist)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return Bin{}, fmt.Errorf("%s is not executable", path)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return Bin{}, fmt.Errorf("%s --version: %w", path, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return Bin{}, fmt.Errorf("%s --version: unexpected output %q", path, strings.TrimSpace(string(out)))
	}
	v, _ := strconv.Atoi(string(m[1]))
	if v < MinVersion {
		return Bin{}, fmt.Errorf("%s is version %d, need %d or later", path, v, MinVersion)
	}
	return Bin{Dir: dir, Version: v}, nil
}

// OSUser is who postgres runs as.
type OSUser struct {
	Name     string
	UID, GID int
	Home     string
}

// CurrentOrPostgres returns the `postgres` OS user when the current process is
// root, because initdb and postgres refuse to run as root; otherwise it
// returns the current user, which then owns the data directory itself.
func CurrentOrPostgres() (OSUser, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return OSUser{}, fmt.Errorf("look up current user: %w", err)
		}
		return toOSUser(u)
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return OSUser{}, fmt.Errorf("running as root, so postgres must run as the `postgres` OS user, which does not exist (%w): "+
			"install the server with `sudo apt-get install -y postgresql-%d`, which creates it", err, MinVersion)
	}
	return toOSUser(u)
}

func toOSUser(u *user.User) (OSUser, error) {
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return OSUser{}, fmt.Errorf("user %s: uid %q: %w", u.Username, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return OSUser{}, fmt.Errorf("user %s: gid %q: %w", u.Username, u.Gid, err)
	}
	return OSUser{Name: u.Username, UID: uid, GID: gid, Home: u.HomeDir}, nil
}

// switchUser reports whether child processes must change to u: only root can,
// and only root needs to.
func switchUser(u OSUser) bool {
	return os.Geteuid() == 0 && u.UID != 0
}

// credential returns the credential children run with, or nil to run as the
// current user. Supplementary groups are kept (e.g. ssl-cert, which Debian
// uses to grant postgres access to TLS keys).
func credential(u OSUser) *syscall.Credential {
	if !switchUser(u) {
		return nil
	}
	c := &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID)}
	if uu, err := user.LookupId(strconv.Itoa(u.UID)); err == nil {
		if ids, err := uu.GroupIds(); err == nil {
			for _, id := range ids {
				if g, err := strconv.Atoi(id); err == nil {
					c.Groups = append(c.Groups, uint32(g))
				}
			}
		}
	}
	return c
}

// chown gives path to u when we are root, so that postgres (running as u) can
// read and write what we created for it.
func chown(path string, u OSUser) error {
	if !switchUser(u) {
		return nil
	}
	if err := os.Lchown(path, u.UID, u.GID); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// safePath is the PATH of every program pgfleet runs as the postgres OS
// user, and so of what postgres itself runs through sh (archive_command,
// restore_command, COPY ... FROM PROGRAM): the system's directories, never
// whatever the agent's PATH happened to hold.
const safePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// childEnv is the environment of the programs we run as u: the postmaster,
// initdb, pg_basebackup, pg_rewind, pg_controldata. See minimalEnv.
func childEnv(u OSUser, extra ...string) []string {
	return minimalEnv(os.Environ(), u, extra...)
}

// minimalEnv builds a child's environment from an allowlist, never from
// environ minus a denylist: the agent's environment holds what postgres must
// not see, such as the backup store's cloud credentials
// (AWS_SECRET_ACCESS_KEY...), which any superuser session could read
// (pg_read_file('/proc/self/environ'), COPY ... FROM PROGRAM 'env'), and a
// denylist misses the next one. PG* variables are left out too: PGDATA,
// PGHOST or PGPASSWORD would silently redirect initdb, pg_basebackup or
// libpq behind our back.
//
// What a child gets: PATH (safePath); from environ, only the locale (LANG,
// LANGUAGE, LC_*) and time zone (TZ), which decide initdb's defaults and the
// language and time stamps of postgres' messages, and hold no secret; u's
// HOME, because libpq looks for client certificates under ~/.postgresql and
// root's home is closed to the postgres user, which makes every TLS
// connection fail; then extra, the variables pgfleet sets itself (PGPASSFILE,
// PGSSLROOTCERT, LC_ALL=C...), which win over the same names before them.
func minimalEnv(environ []string, u OSUser, extra ...string) []string {
	env := []string{"PATH=" + safePath}
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if ok && (name == "LANG" || name == "LANGUAGE" || name == "TZ" || strings.HasPrefix(name, "LC_")) {
			env = append(env, kv)
		}
	}
	if u.Home != "" {
		env = append(env, "HOME="+u.Home)
	}
	return append(env, extra...)
}
