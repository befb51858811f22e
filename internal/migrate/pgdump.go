package migrate

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pgfleet/pgfleet/internal/postgres"
)

// Conn is a libpq connection for pg_dump and pg_restore: the URL without
// its password, and the password, which reaches them in a passfile of mode
// 0600, never on a command line that `ps` shows.
type Conn struct {
	URL      string
	Password string
}

// SplitURL takes the password out of a postgres:// URL.
func SplitURL(raw string) (Conn, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return Conn{}, fmt.Errorf("not a postgres:// URL")
	}
	var c Conn
	if u.User != nil {
		c.Password, _ = u.User.Password()
		u.User = url.User(u.User.Username())
	}
	c.URL = u.String()
	return c, nil
}

// Tool runs pg_dump and pg_restore of one PostgreSQL installation, with
// its work files in Dir.
type Tool struct {
	Bin postgres.Bin
	Dir string
}

// env is the environment of a pg_dump or pg_restore for c: a passfile
// of its own when c has a password, and a connect timeout, so that an
// unreachable server answers within seconds.
func (t Tool) env(c Conn, name string) ([]string, error) {
	env := []string{"PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=5", "LANG=C.UTF-8", "HOME=" + t.Dir}
	if c.Password == "" {
		return env, nil
	}
	p := filepath.Join(t.Dir, name+".pgpass")
	line := "*:*:*:*:" + strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(c.Password) + "\n"
	if err := os.WriteFile(p, []byte(line), 0o600); err != nil {
		return nil, fmt.Errorf("write a passfile: %w", err)
	}
	return append(env, "PGPASSFILE="+p), nil
}

// Dump runs pg_dump of src in directory format with jobs parallel
// workers into dir.
func (t Tool) Dump(ctx context.Context, src Conn, dir string, jobs int) error {
	return t.DumpWith(ctx, src, dir, DumpOptions{Jobs: jobs})
}

// DumpOptions says how DumpWith dumps.
type DumpOptions struct {
	Jobs int
	// Snapshot is a snapshot the source exported (pg_export_snapshot),
	// which pg_dump reads in; "" for one of its own.
	Snapshot string
	// NoData are pg_dump patterns (TablePattern) of tables whose
	// definitions are dumped but not their rows.
	NoData []string
}

// DumpWith runs pg_dump of src in directory format into dir, without
// compression: the files live only until pg_restore has read them, on
// the same machine, and compressing them took most of a core for the
// whole dump.
func (t Tool) DumpWith(ctx context.Context, src Conn, dir string, o DumpOptions) error {
	args := []string{"-Fd", "-Z", "0", "-j", strconv.Itoa(max(o.Jobs, 1)), "-f", dir}
	if o.Snapshot != "" {
		args = append(args, "--snapshot="+o.Snapshot)
	}
	for _, p := range o.NoData {
		args = append(args, "--exclude-table-data="+p)
	}
	return t.dump(ctx, src, args...)
}

// DumpSchema runs pg_dump of src's schema alone into dir, for an online
// import, whose data comes by replication. The source's own publications
// and subscriptions stay behind: in the cluster they would replicate from
// or to places that have nothing to do with it.
func (t Tool) DumpSchema(ctx context.Context, src Conn, dir string) error {
	return t.dump(ctx, src, "-Fd", "--schema-only", "--no-publications", "--no-subscriptions", "-f", dir)
}

func (t Tool) dump(ctx context.Context, src Conn, args ...string) error {
	env, err := t.env(src, "source")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, t.Bin.Path("pg_dump"), append([]string{"-d", src.URL}, args...)...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_dump: %v: %s", err, lastLines(stderr.String(), 5))
	}
	return nil
}

// TableData counts the tables whose data a dump in dir holds.
func (t Tool) TableData(ctx context.Context, dir string) (int, error) {
	cmd := exec.CommandContext(ctx, t.Bin.Path("pg_restore"), "-l", dir)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("pg_restore -l: %w", err)
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, ";") && strings.Contains(l, " TABLE DATA ") {
			n++
		}
	}
	return n, nil
}

// RestoreOptions says how Restore loads a dump.
type RestoreOptions struct {
	Jobs    int
	Clean   bool // drop what the dump also has before loading it
	NoOwner bool // leave owners and privileges out (the roles did not come along)
	// Section is the part of the dump to load (pre-data, data or
	// post-data); "" for all of it.
	Section string
	// Settings are name=value settings of pg_restore's sessions
	// (RestoreSettings), passed in PGOPTIONS.
	Settings []string
	// Table is told of each table whose data starts loading.
	Table func(name string)
}

// Restore runs pg_restore of the dump in dir into dst.
func (t Tool) Restore(ctx context.Context, dst Conn, dir string, o RestoreOptions) error {
	env, err := t.env(dst, "target")
	if err != nil {
		return err
	}
	args := []string{"-d", dst.URL, "-j", strconv.Itoa(o.Jobs), "--verbose", "--exit-on-error"}
	if o.Clean {
		args = append(args, "--clean", "--if-exists")
	}
	if o.NoOwner {
		args = append(args, "--no-owner", "--no-privileges")
	}
	if o.Section != "" {
		args = append(args, "--section="+o.Section)
	}
	if len(o.Settings) > 0 {
		env = append(env, "PGOPTIONS=-c "+strings.Join(o.Settings, " -c "))
	}
	cmd := exec.CommandContext(ctx, t.Bin.Path("pg_restore"), append(args, dir)...)
	cmd.Env = env
	pipe, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pg_restore: %w", err)
	}
	var errs []string
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := RestoredTable(line); ok && o.Table != nil {
			o.Table(name)
		}
		if strings.Contains(line, "error:") || strings.HasPrefix(line, "DETAIL:") || strings.HasPrefix(line, "Command was:") {
			errs = append(errs, line)
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("pg_restore: %v: %s", err, lastLines(strings.Join(errs, "\n"), 5))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
