package postgres

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Settings is the configuration pgfleet owns; Configure writes it.
type Settings struct {
	Name       string    // member id; used as cluster_name and application_name
	ListenAddr string    // listen_addresses (an IP)
	Port       int       // port
	Follow     *ConnInfo // standby of that server (replication user creds); nil: no upstream
	Standby    bool      // run in recovery even without Follow (a member waiting for an election)
	// StayOnTimeline recovers along the data's own timeline only
	// (recovery_target_timeline = 'current') instead of the newest one the
	// archive knows: for data that a newer timeline forked away from, so
	// that it can still start, read-only, and say what it holds.
	StayOnTimeline bool
	// SyncStandbys are the standbys a commit waits for (any one of them);
	// none means asynchronous replication. Only a primary uses it.
	SyncStandbys []string
	SlotName     string            // primary_slot_name when Follow != nil
	Params       map[string]string // extra postgresql.conf parameters, override defaults
	// Archive holds continuous archiving's settings (archive_mode,
	// archive_command, archive_timeout, restore_command). They are written
	// after Params, which cannot override them.
	Archive map[string]string
	// ReadOnly makes every new transaction read-only
	// (default_transaction_read_only, written after Params, which cannot
	// undo it): the disk guard's way to stop a primary's writes without
	// stopping its reads. Sessions pick it up on reload, from their next
	// transaction.
	ReadOnly bool
	// Recovery, when set, makes the data directory recover from the archive
	// up to a target (restore_command, recovery_target_*): recovery.signal
	// is created and these settings written last.
	Recovery map[string]string
}

// Names of the files Configure manages inside DataDir.
const (
	confFile       = "postgresql.conf"
	fleetConfFile  = "pgfleet.conf"
	hbaFile        = "pg_hba.conf"
	standbySignal  = "standby.signal"
	recoverySignal = "recovery.signal"
	includeLine    = "include 'pgfleet.conf'"
	passfileSuffix = ".pgpass"
)

// DefaultMaxSlotWALKeep is the most WAL a replication slot may hold back
// on a primary (max_slot_wal_keep_size).
const DefaultMaxSlotWALKeep = "2GB"

// defaultParams are pgfleet's defaults, in the order written. Params may
// override any of them.
var defaultParams = [][2]string{
	// Only TCP: a unix socket directory would have to exist, be writable by
	// the OS user and differ per instance on a shared host, and nothing in
	// pgfleet uses it.
	{"unix_socket_directories", ""},
	{"wal_level", "replica"},
	{"max_wal_senders", "16"},
	{"max_replication_slots", "16"},
	// A slot keeps WAL until its standby has it; without a bound, one
	// standby that is down for long fills the primary's disk and stops
	// every write. Past this much the slot is invalidated instead and that
	// standby clones again. Params may raise or lower it.
	{"max_slot_wal_keep_size", DefaultMaxSlotWALKeep},
	{"hot_standby", "on"},
	// Lets the primary keep rows a standby query still needs instead of
	// cancelling that query.
	{"hot_standby_feedback", "on"},
	// pg_rewind needs it to bring a failed primary back as a standby.
	{"wal_log_hints", "on"},
	{"password_encryption", "scram-sha-256"},
	// The agent streams postgres' stderr into its own log.
	{"logging_collector", "off"},
	{"log_destination", "stderr"},
	{"log_line_prefix", "%m [%p] "},
	// Small enough to run several members on one development machine.
	{"shared_buffers", "32MB"},
	{"max_connections", "100"},
}

// reservedParams come from Settings fields (or are configuration file
// directives) and cannot be set through Params.
var reservedParams = map[string]bool{
	"listen_addresses":          true,
	"port":                      true,
	"cluster_name":              true,
	"primary_conninfo":          true,
	"primary_slot_name":         true,
	"include":                   true,
	"include_dir":               true,
	"include_if_exists":         true,
	"ssl":                       true,
	"synchronous_standby_names": true,
	"archive_mode":              true,
	"archive_command":           true,
	"archive_library":           true,
	"restore_command":           true,
	"recovery_target":           true,
	"recovery_target_time":      true,
	"recovery_target_lsn":       true,
	"recovery_target_xid":       true,
	"recovery_target_name":      true,
	"recovery_target_action":    true,
	"recovery_target_inclusive": true,
	"ssl_cert_file":             true,
	"ssl_key_file":              true,
}

var paramNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_.]*$`)

// runsCode reports whether setting name makes the server run a program or
// load a library.
func runsCode(name string) bool {
	return strings.HasSuffix(name, "_command") || strings.HasSuffix(name, "_library") ||
		strings.HasSuffix(name, "_libraries") || name == "dynamic_library_path" || name == "jit_provider"
}

// Configure writes pgfleet's settings into DataDir. postgresql.conf stays as
// initdb (or the primary, for a clone) made it except for one `include
// 'pgfleet.conf'` line at its end, so everything pgfleet owns lives in
// pgfleet.conf, which is rewritten whole on every call and wins over
// postgresql.conf (ALTER SYSTEM's postgresql.auto.conf still wins over both).
//
// For a standby (s.Follow != nil) primary_conninfo names a passfile outside
// DataDir (see PassfilePath): the replication password never appears in a
// .conf file, which a superuser can read with pg_read_file, and pg_basebackup
// never copies it to another member. standby.signal is created for a standby
// and removed for a primary.
//
// pg_hba.conf is rewritten to allow SCRAM logins from anywhere; pgfleet binds
// ListenAddr, so reachability is decided by that address.
//
// Every file is written atomically (temporary file, then rename), 0600 and
// owned by the OS user. A running postgres picks up changes on Reload, except
// listen_addresses and port, which need a restart.
func (i *Instance) Configure(s Settings) error {
	if err := i.configure(s); err != nil {
		return fmt.Errorf("configure %s: %w", i.cfg.DataDir, err)
	}
	return nil
}

func (i *Instance) configure(s Settings) error {
	conf, err := renderFleetConf(s, i.passfilePath(s.Name), i.CertPath(), i.KeyPath())
	if err != nil {
		return err
	}
	if err := i.removeTempFiles(); err != nil {
		return err
	}
	if !i.Initialized() {
		return errors.New("no cluster: run InitDB or BaseBackup first")
	}
	if err := i.ensureCert(s.Name, s.ListenAddr); err != nil {
		return err
	}
	if err := i.ensureInclude(); err != nil {
		return err
	}
	if err := i.writeFile(filepath.Join(i.cfg.DataDir, fleetConfFile), conf); err != nil {
		return err
	}
	if err := i.writeFile(filepath.Join(i.cfg.DataDir, hbaFile), []byte(hbaConf)); err != nil {
		return err
	}

	recovery := filepath.Join(i.cfg.DataDir, recoverySignal)
	if s.Recovery != nil {
		if err := i.writeFile(recovery, nil); err != nil {
			return err
		}
	} else if err := os.Remove(recovery); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", recovery, err)
	}
	signal := filepath.Join(i.cfg.DataDir, standbySignal)
	passfile := i.passfilePath(s.Name)
	if s.Follow != nil || s.Standby {
		if s.Follow != nil {
			if err := i.writeFile(passfile, []byte(pgpassLine(*s.Follow))); err != nil {
				return err
			}
		}
		if err := i.writeFile(signal, nil); err != nil {
			return err
		}
	} else {
		// A primary keeps no replication password on disk.
		for _, p := range []string{signal, passfile} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", p, err)
			}
		}
	}

	i.mu.Lock()
	c := s
	i.settings = &c
	i.mu.Unlock()
	return nil
}

// PassfilePath is where a standby named name keeps its replication password:
// beside DataDir, not in it.
func (i *Instance) PassfilePath(name string) string { return i.passfilePath(name) }

func (i *Instance) passfilePath(name string) string {
	return filepath.Join(filepath.Dir(i.cfg.DataDir), name+passfileSuffix)
}

// passfilePathLocked is the passfile of the last configured name, read from
// pgfleet.conf when this process has not called Configure; "" if unknown.
// Callers hold i.mu.
func (i *Instance) passfilePathLocked() string {
	if i.settings != nil {
		return i.passfilePath(i.settings.Name)
	}
	data, err := os.ReadFile(filepath.Join(i.cfg.DataDir, fleetConfFile))
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok || strings.TrimSpace(k) != "cluster_name" {
			continue
		}
		v = strings.TrimSpace(v)
		name := strings.ReplaceAll(strings.Trim(v, "'"), "''", "'")
		if name == "" || strings.ContainsAny(name, `/\`) {
			return ""
		}
		return i.passfilePath(name)
	}
	return ""
}

// renderFleetConf returns pgfleet.conf for s.
func renderFleetConf(s Settings, passfile, cert, key string) ([]byte, error) {
	if err := validName(s.Name); err != nil {
		return nil, err
	}
	if net.ParseIP(s.ListenAddr) == nil {
		return nil, fmt.Errorf("listen address %q is not an IP address", s.ListenAddr)
	}
	if s.Port < 1 || s.Port > 65535 {
		return nil, fmt.Errorf("port %d out of range", s.Port)
	}

	params := append([][2]string(nil), defaultParams...)
	var extra []string
	for k := range s.Params {
		extra = append(extra, k)
	}
	sort.Strings(extra)
	for _, k := range extra {
		// The store checked a cluster's parameters already (fleet's
		// reserved list); this is the last line before they reach
		// postgres: nothing that runs a command or loads code.
		name := k
		if !paramNameRE.MatchString(name) {
			return nil, fmt.Errorf("parameter name %q is not valid: lowercase letters, digits, '_' and '.'", k)
		}
		if reservedParams[name] || runsCode(name) {
			return nil, fmt.Errorf("parameter %s is set by pgfleet and cannot be overridden", name)
		}
		replaced := false
		for j := range params {
			if params[j][0] == name {
				params[j][1] = s.Params[k]
				replaced = true
			}
		}
		if !replaced {
			params = append(params, [2]string{name, s.Params[k]})
		}
	}

	for _, p := range params {
		if strings.ContainsAny(p[1], "\x00\r\n") {
			return nil, fmt.Errorf("parameter %s: value contains a line break", p[0])
		}
	}
	if f := s.Follow; f != nil {
		if f.Host == "" || f.Port == 0 || f.User == "" {
			return nil, fmt.Errorf("follow %s: host, port and user are required", f)
		}
		if strings.ContainsAny(f.Host+f.User+f.RootCert+passfile+s.SlotName, "\x00\r\n") {
			return nil, fmt.Errorf("follow %s: value contains a line break", f)
		}
	}

	var b bytes.Buffer
	b.WriteString("# Written by pgfleet and rewritten whole on every change: do not edit.\n")
	b.WriteString("# postgresql.conf includes this file last, so these settings win over it.\n")
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, confQuote(v)) }
	set("listen_addresses", s.ListenAddr)
	set("port", strconv.Itoa(s.Port))
	set("cluster_name", s.Name)
	set("synchronous_standby_names", SyncStandbyNames(s.SyncStandbys))
	set("ssl", "on")
	set("ssl_cert_file", cert)
	set("ssl_key_file", key)
	for _, p := range params {
		set(p[0], p[1])
	}
	if s.ReadOnly {
		set("default_transaction_read_only", "on")
	}
	if f := s.Follow; f != nil {
		ci := []string{
			"host=" + conninfoValue(f.Host),
			"port=" + strconv.Itoa(f.Port),
			"user=" + conninfoValue(f.User),
			"passfile=" + conninfoValue(passfile),
			"application_name=" + conninfoValue(s.Name),
			// Without it a standby pointed at a dead host waits for the
			// kernel's TCP timeout before it tries again.
			"connect_timeout=5",
		}
		ci = append(ci, f.libpqSSL()...)
		set("primary_conninfo", strings.Join(ci, " "))
		if s.SlotName != "" {
			set("primary_slot_name", s.SlotName)
		}
	}
	// Written for every role: it can only change with a restart, so a
	// promoted standby that dropped it would log a configuration error on
	// its next reload.
	if s.StayOnTimeline {
		set("recovery_target_timeline", "current")
	} else {
		set("recovery_target_timeline", "latest")
	}
	for _, m := range []map[string]string{s.Archive, s.Recovery} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if k == "recovery_target_timeline" {
				continue // written above
			}
			if !paramNameRE.MatchString(k) || strings.ContainsAny(m[k], "\x00\r\n") {
				return nil, fmt.Errorf("setting %s: name or value not valid", k)
			}
			set(k, m[k])
		}
	}
	return b.Bytes(), nil
}

// validName checks a member name for use in cluster_name and a file name.
func validName(name string) error {
	if name == "" {
		return errors.New("empty member name")
	}
	if strings.ContainsAny(name, "/\\\x00\r\n'") || name == "." || name == ".." {
		return fmt.Errorf("member name %q is not usable as a file name", name)
	}
	return nil
}

// confQuote quotes v as a postgresql.conf string. Every value is quoted:
// the server parses numbers and booleans from quoted strings too, and it is
// the one form that is right for every value.
func confQuote(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// hbaConf admits SCRAM-authenticated users over TLS from any address to
// any database and to replication. There are no unix sockets, hence no local
// lines, and no plain TCP: libpq's and pgx's default sslmode (prefer) uses
// TLS when the server offers it.
const hbaConf = `# Written by pgfleet and rewritten whole on every change: do not edit.
# TYPE   DATABASE     USER  ADDRESS    METHOD
hostssl  all          all   0.0.0.0/0  scram-sha-256
hostssl  all          all   ::/0       scram-sha-256
hostssl  replication  all   0.0.0.0/0  scram-sha-256
hostssl  replication  all   ::/0       scram-sha-256
`

// ensureInclude appends the include line to postgresql.conf unless it is
// there already.
func (i *Instance) ensureInclude() error {
	path := filepath.Join(i.cfg.DataDir, confFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if normalizeInclude(line) == includeLine {
			return nil
		}
	}
	if len(data) > 0 && !bytes.HasSuffix(data, []byte("\n")) {
		data = append(data, '\n')
	}
	data = append(data, "\n# Added by pgfleet: the settings pgfleet owns, which override the above.\n"+includeLine+"\n"...)
	return i.writeFile(path, data)
}

// normalizeInclude reduces `include = 'pgfleet.conf'  # comment` to the
// form of includeLine.
func normalizeInclude(line string) string {
	line, _, _ = strings.Cut(line, "#")
	f := strings.Fields(strings.Replace(line, "=", " ", 1))
	return strings.Join(f, " ")
}

// removeTempFiles deletes what writeFile left in the data directory when
// the agent died between creating a file and renaming it into place: owned
// by the agent, unreadable by postgres, such a file fails every
// pg_basebackup taken from this member.
func (i *Instance) removeTempFiles() error {
	leftovers, err := filepath.Glob(filepath.Join(i.cfg.DataDir, ".*.tmp-*"))
	if err != nil {
		return err
	}
	for _, f := range leftovers {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove leftover %s: %w", f, err)
		}
	}
	return nil
}

// writeFile atomically replaces path with data, 0600 and owned by the OS
// user: a crash leaves the old file or the new one, never half of one (and
// perhaps a temporary file, which the next Configure removes).
func (i *Instance) writeFile(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = chown(tmp, i.cfg.User)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}
