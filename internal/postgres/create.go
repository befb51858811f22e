package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// Suffixes of the sibling directories InitDB and BaseBackup build in before
// renaming into place. Building beside DataDir keeps the final rename on one
// file system, so it is atomic.
const (
	initSuffix   = ".init"
	backupSuffix = ".basebackup"
)

// InitDB creates a new cluster in DataDir with data checksums (so storage
// corruption is detected rather than replicated silently), SCRAM
// authentication and the superuser "postgres" with superuserPassword. The
// password reaches initdb through a temporary 0600 --pwfile, never a command
// line, which any local user can read in /proc.
//
// The cluster is built in a sibling directory and renamed into place only on
// success, so a failure (or a crash of the agent) never leaves a half-made
// DataDir that Initialized would take for a real one. DataDir must not exist
// or be an empty directory.
func (i *Instance) InitDB(ctx context.Context, superuserPassword string) error {
	if err := i.initDB(ctx, superuserPassword); err != nil {
		return fmt.Errorf("initdb %s: %w", i.cfg.DataDir, err)
	}
	return nil
}

func (i *Instance) initDB(ctx context.Context, password string) error {
	if i.Initialized() {
		return errors.New("already initialized")
	}
	if password == "" {
		return errors.New("empty superuser password: scram-sha-256 authentication needs one")
	}
	tmp := i.cfg.DataDir + initSuffix
	if err := i.makeTempDir(tmp); err != nil {
		return err
	}
	pwfile, cleanup, err := i.secretFile(password + "\n")
	if err != nil {
		os.RemoveAll(tmp)
		return err
	}
	defer cleanup()

	args := []string{
		"-D", tmp,
		"--data-checksums",
		"--auth=scram-sha-256",
		"-U", "postgres",
		"--pwfile=" + pwfile,
		"--encoding=UTF8",
		"--locale=" + clusterLocale(),
		"--no-instructions",
	}
	if err := i.runTool(ctx, "initdb", args, nil, nil); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return i.moveIntoPlace(tmp)
}

// clusterLocale is C.UTF-8 when the C library has it, else C. Both collate by
// code point, so an index built on one host stays valid on a replica whose
// glibc has different collation tables; C.UTF-8 also classifies non-ASCII
// characters (upper(), regex classes) correctly.
func clusterLocale() string {
	for _, dir := range []string{"/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8"} {
		if _, err := os.Stat(dir); err == nil {
			return "C.UTF-8"
		}
	}
	return "C"
}

// progressRE matches pg_basebackup's --progress line,
// "  12345/67890 kB (18%), 0/1 tablespace".
var progressRE = regexp.MustCompile(`^\s*(\d+)/(\d+) kB \(\d+%\)`)

// BaseBackup clones DataDir from the server at src with pg_basebackup,
// streaming the WAL it needs alongside (-X stream) so the copy is consistent
// without an archive, and asking for an immediate checkpoint so it starts
// without waiting for the next scheduled one. When slot is not empty the copy
// streams through that physical slot, which must exist on src (see
// EnsureSlots), so the WAL the new standby needs is kept until it connects.
// progress, when not nil, is called with bytes done and estimated total as
// pg_basebackup reports them (about once a second).
//
// The password is handed over in a temporary 0600 passfile named by
// PGPASSFILE, never in argv or PGPASSWORD, which other local users can read.
// As with InitDB the copy is built in a sibling directory and renamed into
// place only on success; on failure nothing is left behind.
func (i *Instance) BaseBackup(ctx context.Context, src ConnInfo, slot string, progress func(done, total int64)) error {
	if err := i.baseBackup(ctx, src, slot, progress); err != nil {
		return fmt.Errorf("basebackup %s from %s: %w", i.cfg.DataDir, src, err)
	}
	return nil
}

func (i *Instance) baseBackup(ctx context.Context, src ConnInfo, slot string, progress func(done, total int64)) error {
	if i.Initialized() {
		return errors.New("data directory already initialized")
	}
	tmp := i.cfg.DataDir + backupSuffix
	if err := i.makeTempDir(tmp); err != nil {
		return err
	}
	passfile, cleanup, err := i.secretFile(pgpassLine(src))
	if err != nil {
		os.RemoveAll(tmp)
		return err
	}
	defer cleanup()

	args := []string{
		"-D", tmp,
		"-h", src.Host,
		"-p", strconv.Itoa(src.Port),
		"-U", src.User,
		"--no-password", // fail rather than wait for a prompt nobody answers
		"-X", "stream",
		"--checkpoint=fast",
		"--label=pgfleet",
	}
	if slot != "" {
		args = append(args, "--slot="+slot)
	}
	var onLine func(string) bool
	if progress != nil {
		args = append(args, "--progress")
		onLine = func(line string) bool {
			m := progressRE.FindStringSubmatch(line)
			if m == nil {
				return false
			}
			done, _ := strconv.ParseInt(m[1], 10, 64)
			total, _ := strconv.ParseInt(m[2], 10, 64)
			progress(done*1024, total*1024)
			return true
		}
	}
	env := append([]string{
		"PGPASSFILE=" + passfile,
		"PGAPPNAME=pgfleet_basebackup",
		"PGCONNECT_TIMEOUT=10",
	}, src.libpqSSLEnv()...)
	if err := i.runTool(ctx, "pg_basebackup", args, env, onLine); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return i.moveIntoPlace(tmp)
}

// StreamBackup writes a base backup of src, a running member (a standby's
// spares the primary), to w as one tar, for the backup store. It includes
// no WAL: the archive holds what a restore replays, and the tar's
// backup_label and backup_manifest say from where to where.
func (i *Instance) StreamBackup(ctx context.Context, src ConnInfo, w io.Writer) error {
	passfile, cleanup, err := i.secretFile(pgpassLine(src))
	if err != nil {
		return err
	}
	defer cleanup()
	args := []string{
		"-h", src.Host, "-p", strconv.Itoa(src.Port), "-U", src.User, "--no-password",
		"-D", "-", "-Ft", "-X", "none", "--checkpoint=fast", "--label=pgfleet-backup",
	}
	env := append([]string{"PGPASSFILE=" + passfile, "PGAPPNAME=pgfleet_backup", "PGCONNECT_TIMEOUT=10"}, src.libpqSSLEnv()...)
	if err := i.runToolTo(ctx, "pg_basebackup", args, env, nil, w); err != nil {
		return fmt.Errorf("base backup of %s: %w", src, err)
	}
	return nil
}

// runTool runs one of the installation's programs as cfg.User and logs its
// output. The error carries the program's last output lines, which is where
// initdb and pg_basebackup say what went wrong. Cancelling ctx kills the
// program's whole process group: pg_basebackup streams WAL from a forked
// child that would otherwise outlive it.
func (i *Instance) runTool(ctx context.Context, program string, args, env []string, onLine func(string) bool) error {
	return i.runToolTo(ctx, program, args, env, onLine, nil)
}

// runToolTo is runTool with the program's standard output going to stdout
// (its log lines still come from standard error) when stdout is not nil.
func (i *Instance) runToolTo(ctx context.Context, program string, args, env []string, onLine func(string) bool, stdout io.Writer) error {
	out := newOutput(i.log.With("cmd", program), onLine)
	cmd := exec.CommandContext(ctx, i.cfg.Bin.Path(program), args...)
	cmd.Dir = filepath.Dir(i.cfg.DataDir)
	// LC_ALL=C keeps messages (and the progress line we parse) in English.
	cmd.Env = childEnv(i.cfg.User, append([]string{"LC_ALL=C"}, env...)...)
	cmd.Stdout = out
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.Stderr = out
	cmd.WaitDelay = outputGrace
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: credential(i.cfg.User),
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }

	i.log.Debug("running", "cmd", program, "args", args)
	start := time.Now()
	// See spawn: Pdeathsig is bound to the forking thread.
	runtime.LockOSThread()
	err := cmd.Run()
	runtime.UnlockOSThread()
	out.Flush()
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", program, ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("%s: %w; last output:%s", program, err, out.tailText())
	}
	i.log.Debug("done", "cmd", program, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// makeTempDir creates an empty build directory for the OS user, clearing
// what an interrupted earlier attempt left.
func (i *Instance) makeTempDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clear %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := chown(dir, i.cfg.User); err != nil {
		os.RemoveAll(dir)
		return err
	}
	return nil
}

// moveIntoPlace renames a finished build directory to DataDir and makes the
// rename durable.
func (i *Instance) moveIntoPlace(tmp string) error {
	if err := os.Rename(tmp, i.cfg.DataDir); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("move %s into place: %w", tmp, err)
	}
	return syncDir(filepath.Dir(i.cfg.DataDir))
}

// secretFile writes content to a new 0600 file owned by the OS user next to
// DataDir (a place the user can reach and the caller controls) and returns
// its path and a function that removes it.
func (i *Instance) secretFile(content string) (string, func(), error) {
	f, err := os.CreateTemp(filepath.Dir(i.cfg.DataDir), ".pgfleet-secret-*")
	if err != nil {
		return "", nil, fmt.Errorf("create secret file: %w", err)
	}
	path := f.Name()
	cleanup := func() { os.Remove(path) }
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = chown(path, i.cfg.User)
	}
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("write secret file: %w", err)
	}
	return path, cleanup, nil
}

// syncDir fsyncs a directory so a rename or removal in it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
