package fleet

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The validators in this file are the one definition of a well-formed name,
// parameter and record. The API applies them to what a person asks for, and
// the store applies them again to every record it reads back, because what
// the agents read becomes directory names they create and delete as root,
// lines of postgresql.conf and commands the server runs: a record written
// past the API (by an older version, by hand with etcdctl, or by anyone who
// got the store's credentials) must fail the same checks, not be trusted
// because it came from the store.

// Limits on names and sizes.
const (
	MaxClusterName = 40 // leaves room for "-NN" in member ids within a 63-byte DNS label
	MaxRegionName  = 20
	MaxHostName    = 63 // a DNS label
	MaxHA          = 9
	MaxReplicas    = 16
	// MaxMembers is the highest member number: Place numbers a cluster's
	// members from 1 to HA+len(Replicas), so no member id of a valid
	// cluster ends in a larger one. A feature that adds members to a
	// live cluster raises it.
	MaxMembers = MaxHA + MaxReplicas
	// MaxParams, MaxParamName and MaxParamValue bound a cluster's
	// parameters: a tuned server sets a few dozen, no PostgreSQL setting's
	// name is near 63 bytes, and 1 kB holds any value a person writes by
	// hand (search_path, log_line_prefix, ...).
	MaxParams     = 200
	MaxParamName  = 63
	MaxParamValue = 1024
	// MaxURL bounds backup store URLs, which go into archive_command.
	MaxURL = 1024
)

var labelRE = regexp.MustCompile(`^[a-z]([a-z0-9-]*[a-z0-9])?$`)

// ValidateName checks that s is a DNS label of at most max bytes that starts
// with a letter: such names are safe in URLs, file names, etcd keys and
// Postgres identifiers alike. kind names the thing in the error.
func ValidateName(kind, s string, max int) error {
	switch {
	case s == "":
		return fmt.Errorf("%s name is empty: use lowercase letters, digits and '-'", kind)
	case len(s) > max:
		return fmt.Errorf("%s name %q is %d characters long: at most %d are allowed", kind, s, len(s), max)
	case !labelRE.MatchString(s):
		return fmt.Errorf("%s name %q is not valid: use lowercase letters, digits and '-', starting with a letter and not ending with '-'", kind, s)
	}
	return nil
}

// ValidateClusterName checks a cluster's name. It becomes part of etcd
// keys, member ids (and so directory names), backup object keys and
// command lines.
func ValidateClusterName(name string) error { return ValidateName("cluster", name, MaxClusterName) }

// ValidateRegion checks a region's name.
func ValidateRegion(name string) error { return ValidateName("region", name, MaxRegionName) }

// ValidateHostName checks a host's name, which keys its record and its
// members' placement.
func ValidateHostName(name string) error { return ValidateName("host", name, MaxHostName) }

var memberNumberRE = regexp.MustCompile(`^[1-9][0-9]*$`)

// ValidateMemberID checks that id is the id of a member of cluster, exactly
// as MemberID makes it: the cluster's name, '-', and a number from 1 to
// MaxMembers without leading zeros. An id names the member's data directory
// (created, chowned and removed by a root agent), its replication slot and
// its etcd keys, so nothing else may pass: not "..", "a/b", "", another
// cluster's member, nor "db-01" beside "db-1".
func ValidateMemberID(cluster, id string) error {
	if err := ValidateClusterName(cluster); err != nil {
		return fmt.Errorf("member id %q: %w", id, err)
	}
	if id == "" {
		return fmt.Errorf("member id is empty: the members of cluster %s are %s-1 to %s-%d", cluster, cluster, cluster, MaxMembers)
	}
	n, ok := strings.CutPrefix(id, cluster+"-")
	if ok && memberNumberRE.MatchString(n) && len(n) <= 3 {
		if i, err := strconv.Atoi(n); err == nil && i <= MaxMembers {
			return nil
		}
	}
	return fmt.Errorf("member id %q is not valid: the members of cluster %s are %s-1 to %s-%d", id, cluster, cluster, cluster, MaxMembers)
}

// ValidateSync checks a replication mode given by a user.
func ValidateSync(mode string) error {
	switch mode {
	case "", SyncOff, SyncOn, SyncStrict:
		return nil
	}
	return fmt.Errorf("sync mode %q is not one of off, on, strict", mode)
}

// paramNameRE is what postgresql.conf's own lexer takes as a setting's
// name (ID or QUALIFIED_ID in guc-file.l), in lowercase only: the server
// folds case, so "FSYNC" would otherwise slip past the reserved list as
// another name for fsync. A name the lexer rejects ("a..b", "a.") would stop
// the server from starting.
var paramNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$`)

// Why parameters are reserved, each with what to do instead.
const (
	whyCommand = "it would make the server run a shell command as the postgres OS user; " +
		"pgfleet archives and restores WAL itself: create the cluster with --backup-store for continuous backups and use `pgfleet backup restore` for point-in-time recovery"
	whyLibrary = "it would make the server load a shared library, which runs with the server's rights; " +
		"pgfleet does not load libraries named in a cluster's spec"
	whyFile    = "it would point the server at a file or directory of the host, and pgfleet lays out every member's files itself"
	whyInclude = "it would read settings from another file, past these checks"
	whySync    = "pgfleet's promise that a failover loses no acknowledged commit depends on it: " +
		"choose the replication mode with --sync off|on|strict (`pgfleet set NAME --sync` on a live cluster)"
	whyCrash       = "away from its safe setting it lets a crash corrupt data that pgfleet would then replicate, back up and promote"
	whyCorrupt     = "it hides or causes data corruption, which pgfleet would then replicate and back up"
	whyReplication = "pgfleet sets it on every member for its role (primary, standby or replica) so that replication, failover and pg_rewind work"
	whyArchive     = "pgfleet sets it from the cluster's backup policy: use --backup-store and --backup-every"
	whyRecovery    = "pgfleet sets it when it restores a cluster: use `pgfleet backup restore` with --time or --lsn"
	whyNetwork     = "pgfleet assigns every member's address and port, and clients reach members through the routing proxy"
	whyTLS         = "pgfleet serves TLS with certificates from the fleet's CA"
	whyAuth        = "pg_hba.conf, which pgfleet writes, admits SCRAM passwords only"
	whyLogging     = "the agent streams the server's log into its own"
)

// reservedParams are settings a cluster's spec may not set, with the
// reason: pgfleet writes them itself (internal/postgres's Settings and
// defaults, the agent's archive and recovery settings), or they would void
// its guarantees, run commands or point the server at files. The rules in
// reservedPatterns cover whole families (every *_command, every ssl*).
var reservedParams = map[string]string{
	// Durability and the sync-mode promise.
	"synchronous_commit":        whySync,
	"synchronous_standby_names": whySync,
	"fsync":                     whyCrash,
	"full_page_writes":          whyCrash,
	"data_sync_retry":           whyCrash,
	"zero_damaged_pages":        whyCorrupt,
	"ignore_checksum_failure":   whyCorrupt,
	"ignore_invalid_pages":      whyCorrupt,
	"allow_system_table_mods":   whyCorrupt,
	// Replication, failover and rewind.
	"wal_level":             whyReplication,
	"wal_log_hints":         whyReplication,
	"hot_standby":           whyReplication,
	"max_wal_senders":       whyReplication,
	"max_replication_slots": whyReplication,
	"primary_conninfo":      whyReplication,
	"primary_slot_name":     whyReplication,
	"cluster_name":          whyReplication,
	"promote_trigger_file":  whyReplication,
	// Files and the server's own layout.
	"config_file":        whyFile,
	"data_directory":     whyFile,
	"hba_file":           whyFile,
	"ident_file":         whyFile,
	"external_pid_file":  whyFile,
	"krb_server_keyfile": whyFile,
	"include":            whyInclude,
	"include_dir":        whyInclude,
	"include_if_exists":  whyInclude,
	// Code loaded into the server.
	"shared_preload_libraries":  whyLibrary,
	"local_preload_libraries":   whyLibrary,
	"session_preload_libraries": whyLibrary,
	"dynamic_library_path":      whyLibrary,
	"jit_provider":              whyLibrary,
	// Network, TLS and authentication.
	"port":                whyNetwork,
	"listen_addresses":    whyNetwork,
	"password_encryption": whyAuth,
	// Logging.
	"logging_collector": whyLogging,
	"log_destination":   whyLogging,
	"log_directory":     whyLogging,
	"log_filename":      whyLogging,
}

// reservedPatterns reserve families of settings by the shape of their
// name, so that a setting added by a later PostgreSQL release (another
// *_command) is refused without a change here. They are checked in order.
var reservedPatterns = []struct {
	prefix, suffix, why string
}{
	{suffix: "_command", why: whyCommand}, // archive_, restore_, recovery_end_, archive_cleanup_, ssl_passphrase_
	{suffix: "_library", why: whyLibrary}, // archive_library
	{suffix: "_libraries", why: whyLibrary},
	{prefix: "ssl", why: whyTLS},
	{prefix: "archive_", why: whyArchive},
	{prefix: "restore_", why: whyRecovery},
	{prefix: "recovery_target", why: whyRecovery},
	{prefix: "unix_socket_", why: whyNetwork},
	{suffix: "_file", why: whyFile},
	{suffix: "_directory", why: whyFile},
	{suffix: "_directories", why: whyFile},
}

// reservedButSettable are reserved settings that a spec may still set to
// one value, which keeps what pgfleet needs of them: wal_level logical
// writes everything replica does, and what logical decoding needs besides,
// so that the cluster can be the source of a logical replication (an
// online `pgfleet import` out of it).
var reservedButSettable = map[string]string{"wal_level": "logical"}

// reservedValueAllowed reports whether reserved setting name may still be
// set to value (reservedButSettable).
func reservedValueAllowed(name, value string) bool {
	v, ok := reservedButSettable[name]
	return ok && strings.EqualFold(strings.TrimSpace(value), v)
}

// ResettableReserved reports whether reserved setting name may still be
// reset to pgfleet's own value, having been set (reservedButSettable).
func ResettableReserved(name string) bool {
	_, ok := reservedButSettable[name]
	return ok
}

// ReservedParameter reports whether a cluster's spec may not set the
// setting name (lowercase), and why not, with what to do instead.
func ReservedParameter(name string) (why string, reserved bool) {
	if why, ok := reservedParams[name]; ok {
		return why, true
	}
	for _, p := range reservedPatterns {
		if strings.HasPrefix(name, p.prefix) && strings.HasSuffix(name, p.suffix) {
			return p.why, true
		}
	}
	return "", false
}

// ValidateParameter checks one setting of a cluster's spec: a name
// postgresql.conf's lexer takes, not reserved, and a value that is one line
// of text of bounded length (pgfleet quotes it into pgfleet.conf, where a
// line break would start a setting of its own).
func ValidateParameter(name, value string) error {
	switch {
	case name == "":
		return fmt.Errorf("a parameter has an empty name")
	case len(name) > MaxParamName:
		return fmt.Errorf("parameter name %q... is %d characters long: at most %d are allowed", name[:MaxParamName], len(name), MaxParamName)
	case !paramNameRE.MatchString(name):
		return fmt.Errorf("parameter %q is not a valid PostgreSQL setting name: use lowercase letters, digits and '_' (with one '.' for an extension's setting, e.g. auto_explain.log_min_duration)", name)
	}
	if why, ok := ReservedParameter(name); ok && !reservedValueAllowed(name, value) {
		if v, ok := reservedButSettable[name]; ok {
			return fmt.Errorf("parameter %s = %q: %s; it may be set to %s only", name, value, why, v)
		}
		return fmt.Errorf("parameter %s is reserved by pgfleet and cannot be set: %s; remove it from the cluster's parameters", name, why)
	}
	switch {
	case len(value) > MaxParamValue:
		return fmt.Errorf("parameter %s: the value is %d bytes long: at most %d are allowed", name, len(value), MaxParamValue)
	case strings.ContainsAny(value, "\r\n"):
		return fmt.Errorf("parameter %s: the value contains a line break: a value is one line", name)
	case !utf8.ValidString(value):
		return fmt.Errorf("parameter %s: the value is not valid UTF-8", name)
	case strings.IndexFunc(value, unicode.IsControl) >= 0:
		return fmt.Errorf("parameter %s: the value contains a control character", name)
	}
	return nil
}

// ValidateParameters checks a cluster's extra postgresql.conf settings
// (ValidateParameter), in name order so that the same spec always gives the
// same error.
func ValidateParameters(params map[string]string) error {
	if len(params) > MaxParams {
		return fmt.Errorf("%d parameters given: at most %d are allowed", len(params), MaxParams)
	}
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if err := ValidateParameter(k, params[k]); err != nil {
			return err
		}
	}
	return nil
}

// ValidateBackupStore checks the form of a backup store URL:
// file:///ABSOLUTE/PATH without ".." segments, or s3://BUCKET/..., one line
// of text. The URL becomes part of archive_command and restore_command (the
// backup package quotes it for the shell) and the directory an agent
// creates; backup.OpenStore checks the rest when it opens it.
func ValidateBackupStore(u string) error {
	switch {
	case u == "":
		return fmt.Errorf("backup store URL is empty: want file:///ABSOLUTE/PATH or s3://BUCKET/prefix")
	case len(u) > MaxURL:
		return fmt.Errorf("backup store URL is %d bytes long: at most %d are allowed", len(u), MaxURL)
	case !utf8.ValidString(u) || strings.IndexFunc(u, unicode.IsControl) >= 0:
		return fmt.Errorf("backup store URL %q contains a control character", u)
	}
	if p, ok := strings.CutPrefix(u, "file://"); ok {
		p = strings.TrimPrefix(p, "localhost")
		if !strings.HasPrefix(p, "/") || slices.Contains(strings.Split(p, "/"), "..") {
			return fmt.Errorf("backup store URL %q: want file:///ABSOLUTE/PATH, without '..'", u)
		}
		return nil
	}
	if b, ok := strings.CutPrefix(u, "s3://"); ok && b != "" && !strings.HasPrefix(b, "/") {
		return nil
	}
	return fmt.Errorf("backup store URL %q: want file:///ABSOLUTE/PATH or s3://BUCKET/prefix", u)
}

// backupIDRE is the backup package's own rule for backup ids (it checks
// them again); they name objects in the backup store.
var backupIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidateBackupID checks the id of a base backup.
func ValidateBackupID(id string) error {
	if len(id) > 128 || !backupIDRE.MatchString(id) {
		return fmt.Errorf("backup id %q is not valid: letters, digits, '.', '_' and '-', at most 128", id)
	}
	return nil
}

var lsnRE = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)

// validLSN reports whether s is empty or a WAL position as PostgreSQL
// writes it ("0/3000060").
func validLSN(s string) bool { return s == "" || lsnRE.MatchString(s) }

// validText reports whether s is at most max bytes of UTF-8 without
// control characters: text that may appear in a log line, a file or an
// error message without starting a line of its own.
func validText(s string, max int) bool {
	return len(s) <= max && utf8.ValidString(s) && strings.IndexFunc(s, unicode.IsControl) < 0
}

var dnsNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// validHostPort reports whether s is "host:port" with an IP or a DNS name
// (or nothing) before a port from 1 to 65535.
func validHostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return false
	}
	return host == "" || net.ParseIP(host) != nil || (len(host) <= 253 && dnsNameRE.MatchString(host))
}

// Validate checks a requested spec before anything is written, and, through
// ValidateStored, a spec read back from the store.
func (s ClusterSpec) Validate() error {
	if err := ValidateClusterName(s.Name); err != nil {
		return err
	}
	if err := ValidateRegion(s.PrimaryRegion); err != nil {
		return fmt.Errorf("primary region: %w", err)
	}
	if s.HA < 1 || s.HA > MaxHA {
		return fmt.Errorf("ha is %d: a cluster needs 1 to %d members in its primary region (1 = a primary without standbys)", s.HA, MaxHA)
	}
	if s.PoolSize < 0 || s.PoolSize > MaxPoolSize {
		return fmt.Errorf("pool size is %d: give 1 to %d server connections per user and database (0 for the default, %d)", s.PoolSize, MaxPoolSize, DefaultPoolSize)
	}
	if len(s.Replicas) > MaxReplicas {
		return fmt.Errorf("%d replica regions requested: at most %d are allowed", len(s.Replicas), MaxReplicas)
	}
	seen := map[string]bool{}
	for _, r := range s.Replicas {
		if err := ValidateRegion(r); err != nil {
			return fmt.Errorf("replicas: %w", err)
		}
		if r == s.PrimaryRegion {
			return fmt.Errorf("replicas: %q is the primary region; use --ha to add standbys there", r)
		}
		if seen[r] {
			return fmt.Errorf("replicas: region %q is listed twice", r)
		}
		seen[r] = true
	}
	if s.LeaseTTL != 0 && (s.LeaseTTL < MinLeaseTTL || s.LeaseTTL > MaxLeaseTTL) {
		return fmt.Errorf("lease ttl is %ds: it must be %d to %d seconds", s.LeaseTTL, MinLeaseTTL, MaxLeaseTTL)
	}
	if err := ValidateSync(s.Sync); err != nil {
		return err
	}
	if s.MaxLagOnFailover < 0 {
		return fmt.Errorf("max lag on failover is %d bytes: it must not be negative", s.MaxLagOnFailover)
	}
	if s.MaxReplicaLag < 0 {
		return fmt.Errorf("max replica lag is %d bytes: it must not be negative", s.MaxReplicaLag)
	}
	if err := ValidateDiskGuard(s.DiskGuard); err != nil {
		return err
	}
	if err := ValidateParameters(s.Params); err != nil {
		return err
	}
	if s.Backup != nil {
		if err := s.Backup.Validate(); err != nil {
			return fmt.Errorf("backup: %w", err)
		}
	}
	if s.Restore != nil {
		if err := s.Restore.Validate(); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	if s.Move != nil {
		if err := s.Move.Validate(s.Name); err != nil {
			return err
		}
	}
	return nil
}

// ValidateStored checks a spec read from the store: everything Validate
// checks, and the port block, which the API assigns after validating a
// request. Port, Port+1 and Port+2 are the member's and the proxies' ports.
func (s ClusterSpec) ValidateStored() error {
	if err := s.Validate(); err != nil {
		return err
	}
	if s.Port < 1 || s.ReplicaProxyPort() > 65535 {
		return fmt.Errorf("port %d is not a port block: it must be 1 to %d", s.Port, 65535-2)
	}
	return nil
}

// Validate checks a backup policy.
func (b BackupSpec) Validate() error {
	if err := ValidateBackupStore(b.Store); err != nil {
		return err
	}
	if b.EverySeconds < 0 || b.KeepDays < 0 || b.KeepBackups < 0 || b.ArchiveTimeoutSeconds < 0 {
		return fmt.Errorf("interval, keep days, keep backups and archive timeout must not be negative (have %d, %d, %d, %d)",
			b.EverySeconds, b.KeepDays, b.KeepBackups, b.ArchiveTimeoutSeconds)
	}
	return nil
}

// Validate checks where a restored cluster's data comes from: its values
// go into the recovery settings and backup store paths.
func (r RestoreSpec) Validate() error {
	if err := ValidateClusterName(r.From); err != nil {
		return fmt.Errorf("from: %w", err)
	}
	if err := ValidateBackupStore(r.Store); err != nil {
		return err
	}
	if err := ValidateBackupID(r.BackupID); err != nil {
		return err
	}
	if !validLSN(r.LSN) {
		return fmt.Errorf("target LSN %q is not a WAL position such as 0/3000060", r.LSN)
	}
	return nil
}

// Validate checks a host's record: its name keys the record and the
// placement of members; its address is where standbys stream from and the
// proxies route to.
func (h Host) Validate() error {
	if err := ValidateHostName(h.Name); err != nil {
		return err
	}
	if err := ValidateRegion(h.Region); err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	if net.ParseIP(h.Addr) == nil {
		return fmt.Errorf("host %s: address %q is not an IP address", h.Name, h.Addr)
	}
	if h.APIAddr != "" && !validHostPort(h.APIAddr) {
		return fmt.Errorf("host %s: API address %q is not host:port", h.Name, h.APIAddr)
	}
	if !validText(h.Version, 64) {
		return fmt.Errorf("host %s: version %q is not at most 64 characters of text", h.Name, h.Version)
	}
	return nil
}

func validRole(r Role) bool { return r == RolePrimary || r == RoleStandby || r == RoleReplica }

// Validate checks a member's placement as a member of cluster: its id
// names its data directory, its host decides which agent runs it.
func (m MemberSpec) Validate(cluster string) error {
	if err := ValidateMemberID(cluster, m.ID); err != nil {
		return err
	}
	if m.Cluster != cluster {
		return fmt.Errorf("member %s names cluster %q, not %s", m.ID, m.Cluster, cluster)
	}
	if err := ValidateHostName(m.Host); err != nil {
		return fmt.Errorf("member %s: %w", m.ID, err)
	}
	if err := ValidateRegion(m.Region); err != nil {
		return fmt.Errorf("member %s: %w", m.ID, err)
	}
	if !validRole(m.Role) {
		return fmt.Errorf("member %s: role %q is not primary, standby or replica", m.ID, m.Role)
	}
	if m.Port < 1 || m.Port > 65535 {
		return fmt.Errorf("member %s: port %d is out of range", m.ID, m.Port)
	}
	return nil
}

var stateRE = regexp.MustCompile(`^[a-z][a-z-]{0,31}$`)

// Validate checks a member's published status as one of cluster's. Only
// what others act on is checked; fields an agent has not filled in yet may
// be empty, and a state this version does not know (a newer agent's) is
// let through if it is shaped like one. Message and Progress are text for
// people and are not checked.
func (st MemberStatus) Validate(cluster string) error {
	if err := ValidateMemberID(cluster, st.ID); err != nil {
		return err
	}
	switch {
	case st.Host != "" && ValidateHostName(st.Host) != nil:
		return fmt.Errorf("member %s: %w", st.ID, ValidateHostName(st.Host))
	case st.Region != "" && ValidateRegion(st.Region) != nil:
		return fmt.Errorf("member %s: %w", st.ID, ValidateRegion(st.Region))
	case st.Role != "" && !validRole(st.Role):
		return fmt.Errorf("member %s: role %q is not primary, standby or replica", st.ID, st.Role)
	case st.State != "" && !stateRE.MatchString(string(st.State)):
		return fmt.Errorf("member %s: state %q is not a state", st.ID, st.State)
	case st.Addr != "" && !validHostPort(st.Addr):
		return fmt.Errorf("member %s: address %q is not host:port", st.ID, st.Addr)
	case !validLSN(st.WriteLSN) || !validLSN(st.ReceiveLSN) || !validLSN(st.ReplayLSN):
		return fmt.Errorf("member %s: WAL positions %q, %q, %q are not all positions such as 0/3000060", st.ID, st.WriteLSN, st.ReceiveLSN, st.ReplayLSN)
	case st.Restarted != "" && !ValidRestartID(st.Restarted):
		return fmt.Errorf("member %s: restart %q is not a restart order's id", st.ID, st.Restarted)
	case st.DiskFree < 0 || st.DiskSize < 0 || st.DiskFree > st.DiskSize:
		return fmt.Errorf("member %s: disk free %d of %d bytes is not a measurement", st.ID, st.DiskFree, st.DiskSize)
	}
	return nil
}

var restartIDRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// ValidRestartID reports whether id names a restart order: 16 hex digits.
func ValidRestartID(id string) bool { return restartIDRE.MatchString(id) }

// Validate checks a candidacy in an election of cluster.
func (cd Candidacy) Validate(cluster string) error {
	return ValidateMemberID(cluster, cd.Member)
}

// Validate checks cluster's sync state: the members it names are promoted
// and waited for.
func (s SyncState) Validate(cluster string) error {
	if err := ValidateMemberID(cluster, s.Primary); err != nil {
		return fmt.Errorf("primary: %w", err)
	}
	if len(s.Members) > MaxMembers {
		return fmt.Errorf("%d members listed: a cluster has at most %d", len(s.Members), MaxMembers)
	}
	for _, m := range s.Members {
		if err := ValidateMemberID(cluster, m); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks a switchover of cluster.
func (s Switchover) Validate(cluster string) error {
	if err := ValidateMemberID(cluster, s.From); err != nil {
		return fmt.Errorf("from: %w", err)
	}
	if err := ValidateMemberID(cluster, s.To); err != nil {
		return fmt.Errorf("to: %w", err)
	}
	if s.HoldMillis < 0 {
		return fmt.Errorf("hold of %d ms is negative", s.HoldMillis)
	}
	return nil
}

// Validate checks a backup request of cluster: its id names objects in
// the backup store, its member is the one that takes it.
func (b BackupRequest) Validate(cluster string) error {
	if err := ValidateBackupID(b.ID); err != nil {
		return err
	}
	return ValidateMemberID(cluster, b.Member)
}

// maxSecret bounds a stored password; pgfleet makes 32 characters.
const maxSecret = 256

var backupKeyRE = regexp.MustCompile(`^[A-Za-z0-9+/=_-]{1,128}$`)

// Validate checks a cluster's credentials: the replication password goes
// into a passfile line by line, so a line break in one would add a line.
// Empty passwords are let through: they can do no harm here, and the
// server refuses them.
func (s Secrets) Validate() error {
	if !validText(s.SuperuserPassword, maxSecret) {
		return fmt.Errorf("the superuser password is not at most %d characters of text", maxSecret)
	}
	if !validText(s.ReplicationPassword, maxSecret) {
		return fmt.Errorf("the replication password is not at most %d characters of text", maxSecret)
	}
	if s.BackupKey != "" && !backupKeyRE.MatchString(s.BackupKey) {
		return fmt.Errorf("the backup key is not hexadecimal or base64")
	}
	return nil
}

// Validate checks what is kept of a destroyed cluster for restores: its
// name, backup store and credentials. Its parameters are not checked: a
// restore takes only the data and credentials from it, so a cluster
// destroyed before a parameter was reserved can still be restored.
func (r Retired) Validate() error {
	if err := ValidateClusterName(r.Spec.Name); err != nil {
		return err
	}
	for _, ev := range r.Events {
		if ev.Cluster != r.Spec.Name {
			return fmt.Errorf("an event of cluster %q is in the history of %s", ev.Cluster, r.Spec.Name)
		}
	}
	if r.Spec.Backup != nil {
		if err := r.Spec.Backup.Validate(); err != nil {
			return fmt.Errorf("backup: %w", err)
		}
	}
	return r.Secrets.Validate()
}
