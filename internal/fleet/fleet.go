// Package fleet holds pgfleet's domain: hosts, clusters, members and the rules
// that relate them. It does no I/O, so every rule here is tested with tables.
package fleet

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Role is what a member is for.
type Role string

const (
	// RolePrimary accepts writes; at most one member of a cluster holds it.
	RolePrimary Role = "primary"
	// RoleStandby streams from the primary in the primary region and may be promoted.
	RoleStandby Role = "standby"
	// RoleReplica is a read replica in another region; it is never promoted.
	RoleReplica Role = "replica"
)

// State is the lifecycle stage a member's supervisor reports.
type State string

const (
	StatePending      State = "pending"      // placed, supervisor not started yet
	StateInitializing State = "initializing" // initdb running
	StateCloning      State = "cloning"      // pg_basebackup running
	StateWaiting      State = "waiting"      // waiting for a primary to clone from
	StateStarting     State = "starting"     // postmaster starting
	StateRunning      State = "running"      // primary accepting writes
	StateStreaming    State = "streaming"    // standby or replica receiving WAL
	StateCatchingUp   State = "catching-up"  // standby running but not streaming
	StateRejoining    State = "rejoining"    // pg_rewind running
	StateFailed       State = "failed"       // the supervisor retries; Message says why
	StateStopped      State = "stopped"
	StateUnknown      State = "unknown" // no status in the store: its host is gone
)

// Host is one machine running `pgfleet agent`.
type Host struct {
	Name    string    `json:"name"`
	Region  string    `json:"region"`
	Addr    string    `json:"addr"`     // advertise address: Postgres and etcd listen here
	APIAddr string    `json:"api_addr"` // host:port of the agent's HTTP API
	Version string    `json:"version"`
	Started time.Time `json:"started"`
}

// ClusterSpec is the desired state of one cluster, written by the API.
type ClusterSpec struct {
	Name          string            `json:"name"`
	PrimaryRegion string            `json:"primary_region"`
	HA            int               `json:"ha"`       // members in the primary region, the primary included
	Replicas      []string          `json:"replicas"` // one read replica in each of these regions
	Port          int               `json:"port"`     // Postgres port on every member's host
	Params        map[string]string `json:"params,omitempty"`
	Created       time.Time         `json:"created"`
	// LeaseTTL is the leader lease in whole seconds (etcd leases are); 0
	// means DefaultLeaseTTL. A dead primary is replaced in about this long.
	LeaseTTL int `json:"lease_ttl,omitempty"`
	// MaxLagOnFailover is how far, in bytes of WAL, a standby may be behind
	// the last primary and still be promoted; 0 means DefaultMaxLag.
	MaxLagOnFailover int64 `json:"max_lag_on_failover,omitempty"`
	// Sync is the replication mode: SyncOff (asynchronous, the default),
	// SyncOn or SyncStrict.
	Sync string `json:"sync,omitempty"`
	// MaxReplicaLag is how far, in bytes of WAL replay, a member may be
	// behind the primary and still receive reads from the replica port; 0
	// means DefaultMaxReplicaLag.
	MaxReplicaLag int64 `json:"max_replica_lag,omitempty"`
	// Backup configures continuous backups; nil means none.
	Backup *BackupSpec `json:"backup,omitempty"`
	// Restore, on a cluster made by `pgfleet restore`, says where its data
	// comes from; its first primary restores instead of running initdb.
	Restore *RestoreSpec `json:"restore,omitempty"`
	// Move is a change of the primary region under way (`pgfleet move`);
	// nil when none is.
	Move *Move `json:"move,omitempty"`
	// DiskGuard is the free space, in percent of a member's data
	// filesystem, below which the cluster stops taking writes; 0 means
	// DefaultDiskGuard and DiskGuardOff turns the guard off.
	DiskGuard int `json:"disk_guard_pct,omitempty"`
	// PoolSize is how many server connections the pooled port opens per
	// user and database on each host; 0 means DefaultPoolSize.
	PoolSize int `json:"pool_size,omitempty"`
}

// BackupSpec is a cluster's backup policy.
type BackupSpec struct {
	// Store is the object store URL: file:///path or
	// s3://bucket/prefix?endpoint=host:port.
	Store string `json:"store"`
	// Encrypted reports whether objects are encrypted with the cluster's
	// backup key (in its secrets).
	Encrypted bool `json:"encrypted,omitempty"`
	// EverySeconds is the base backup interval; 0 means DefaultBackupEvery.
	EverySeconds int64 `json:"every_s,omitempty"`
	// KeepDays is the recovery window; 0 means DefaultKeepDays.
	KeepDays int `json:"keep_days,omitempty"`
	// KeepBackups is how many full backups are kept at least; 0 means
	// DefaultKeepBackups.
	KeepBackups int `json:"keep_backups,omitempty"`
	// ArchiveTimeoutSeconds bounds how long a commit waits to be archived
	// when little WAL is written; 0 means DefaultArchiveTimeout.
	ArchiveTimeoutSeconds int `json:"archive_timeout_s,omitempty"`
}

// Backup defaults.
const (
	DefaultBackupEvery    = 24 * time.Hour
	DefaultKeepDays       = 7
	DefaultKeepBackups    = 2
	DefaultArchiveTimeout = 5 * time.Second
)

// Every is the base backup interval.
func (b BackupSpec) Every() time.Duration {
	if b.EverySeconds <= 0 {
		return DefaultBackupEvery
	}
	return time.Duration(b.EverySeconds) * time.Second
}

// ArchiveTimeout is how often a partly filled WAL segment is archived.
func (b BackupSpec) ArchiveTimeout() time.Duration {
	if b.ArchiveTimeoutSeconds <= 0 {
		return DefaultArchiveTimeout
	}
	return time.Duration(b.ArchiveTimeoutSeconds) * time.Second
}

// Window is the recovery window: restores can reach any moment this far back.
func (b BackupSpec) Window() time.Duration {
	if b.KeepDays <= 0 {
		return DefaultKeepDays * 24 * time.Hour
	}
	return time.Duration(b.KeepDays) * 24 * time.Hour
}

// MinBackups is how many full backups retention keeps at least.
func (b BackupSpec) MinBackups() int {
	if b.KeepBackups <= 0 {
		return DefaultKeepBackups
	}
	return b.KeepBackups
}

// BackupRequest asks Member to take a base backup named ID.
type BackupRequest struct {
	ID        string    `json:"id"`
	Member    string    `json:"member"`
	Requested time.Time `json:"requested"`
	// Scheduled reports whether the schedule asked, not a person.
	Scheduled bool `json:"scheduled,omitempty"`
}

// Retired is what the store keeps of a destroyed cluster that had backups,
// so that they can still be restored: where they are, and the credentials
// and key their data holds.
type Retired struct {
	Spec    ClusterSpec `json:"spec"`
	Secrets Secrets     `json:"secrets"`
	Deleted time.Time   `json:"deleted"`
	// Events is the cluster's history as it was destroyed, oldest first,
	// its destruction last: `pgfleet events` of a cluster whose backups
	// are kept still says what happened to it.
	Events []Event `json:"events,omitempty"`
}

// RestoreSpec is where a restored cluster's data comes from: the archive
// of cluster From in Store, replayed up to a target.
type RestoreSpec struct {
	From      string     `json:"from"`
	Store     string     `json:"store"`
	Encrypted bool       `json:"encrypted,omitempty"`
	BackupID  string     `json:"backup_id"`
	Time      *time.Time `json:"time,omitempty"`
	LSN       string     `json:"lsn,omitempty"`
	// Latest replays every archived WAL record.
	Latest bool `json:"latest,omitempty"`
}

// PrimaryProxyPort is the port on every agent that routes to the cluster's
// primary, wherever it runs.
func (s ClusterSpec) PrimaryProxyPort() int { return s.Port + 1 }

// ReplicaProxyPort is the port on every agent that routes to the nearest
// member fit for reads.
func (s ClusterSpec) ReplicaProxyPort() int { return s.Port + 2 }

// PooledProxyPort is the port on every agent that pools transactions to
// the cluster's primary. Blocks are PortStride (10) ports wide, so it is
// free in every block ever handed out; 0 when it would not be a port.
func (s ClusterSpec) PooledProxyPort() int {
	if s.Port == 0 || s.Port+3 > 65535 {
		return 0
	}
	return s.Port + 3
}

// Pool sizes.
const (
	DefaultPoolSize = 20
	MaxPoolSize     = 1000
)

// Pool is the pooled port's server connections per user and database.
func (s ClusterSpec) Pool() int {
	if s.PoolSize == 0 {
		return DefaultPoolSize
	}
	return s.PoolSize
}

// ReplicaLagLimit is the cluster's read routing lag limit in bytes.
func (s ClusterSpec) ReplicaLagLimit() int64 {
	if s.MaxReplicaLag == 0 {
		return DefaultMaxReplicaLag
	}
	return s.MaxReplicaLag
}

// Replication modes.
const (
	// SyncOff replicates asynchronously: a failover may lose the last commits.
	SyncOff = "off"
	// SyncOn makes every commit wait for one standby of the primary region,
	// and only promotes a member that holds every acknowledged commit; with
	// no standby left, the primary goes on alone, asynchronously.
	SyncOn = "on"
	// SyncStrict is SyncOn that refuses to commit when no standby can
	// acknowledge.
	SyncStrict = "strict"
)

// SyncMode is the cluster's replication mode, SyncOff when unset.
func (s ClusterSpec) SyncMode() string {
	if s.Sync == "" {
		return SyncOff
	}
	return s.Sync
}

// SyncState is what the primary publishes in sync mode: the standbys that
// together hold every acknowledged commit (each commit is on at least one of
// them). An election in sync mode waits for all of them and promotes the one
// that has received the most.
type SyncState struct {
	Primary string   `json:"primary"`
	Members []string `json:"members"`
}

// Defaults and limits of the failover settings.
const (
	DefaultLeaseTTL = 3
	MinLeaseTTL     = 1
	MaxLeaseTTL     = 60
	DefaultMaxLag   = 16 << 20
	// DefaultMaxReplicaLag is the read routing lag limit when the spec
	// sets none.
	DefaultMaxReplicaLag = 16 << 20
)

// TTL is the cluster's leader lease.
func (s ClusterSpec) TTL() time.Duration {
	if s.LeaseTTL == 0 {
		return DefaultLeaseTTL * time.Second
	}
	return time.Duration(s.LeaseTTL) * time.Second
}

// MaxLag is the cluster's failover lag limit in bytes.
func (s ClusterSpec) MaxLag() int64 {
	if s.MaxLagOnFailover == 0 {
		return DefaultMaxLag
	}
	return s.MaxLagOnFailover
}

// Switchover is a planned leader change in progress: the primary From
// stops cleanly, records the LSN of its last record, and the member To
// takes the leader key once it has received everything up to there.
type Switchover struct {
	From      string    `json:"from"`
	To        string    `json:"to"`
	LSN       uint64    `json:"lsn,omitempty"` // set once From has stopped
	Requested time.Time `json:"requested"`
	// HoldMillis is how long the routing proxies hold new connections for
	// the new primary; 0 means DefaultSwitchoverHold.
	HoldMillis int64 `json:"hold_ms,omitempty"`
}

// DefaultSwitchoverHold is how long the proxies hold new connections while a
// switchover runs, unless it says otherwise.
const DefaultSwitchoverHold = 15 * time.Second

// HoldDuration is how long the proxies hold new connections during the
// switchover.
func (s Switchover) HoldDuration() time.Duration {
	if s.HoldMillis <= 0 {
		return DefaultSwitchoverHold
	}
	return time.Duration(s.HoldMillis) * time.Millisecond
}

// Candidacy is what a standby publishes when it runs in an election.
type Candidacy struct {
	Member   string    `json:"member"`
	LSN      uint64    `json:"lsn"`       // WAL received
	LagBytes int64     `json:"lag_bytes"` // behind the last primary write it saw; -1 unknown
	Timeline int64     `json:"timeline"`
	At       time.Time `json:"at"`
	// Rev is the store revision of the candidacy as read; it changes with
	// every publication, so an observer can judge freshness by its own
	// clock instead of comparing At, another host's clock, with its own.
	Rev int64 `json:"-"`
}

// Tombstone records that one incarnation of a cluster (its name and
// creation time) was destroyed on purpose. An agent deletes a member's data
// only on a tombstone's word, never because a key is missing.
type Tombstone struct {
	Cluster string    `json:"cluster"`
	Created time.Time `json:"created"`
	Deleted time.Time `json:"deleted"`
}

// Secrets are a cluster's generated credentials. They are stored apart from
// the spec so that reading a spec never reveals them.
type Secrets struct {
	SuperuserPassword   string `json:"superuser_password"`
	ReplicationPassword string `json:"replication_password"`
	// BackupKey encrypts the cluster's backups (hex, 32 bytes), when they
	// are encrypted.
	BackupKey string `json:"backup_key,omitempty"`
}

// Superuser and ReplicationUser are the roles pgfleet creates in every cluster.
const (
	Superuser       = "postgres"
	ReplicationUser = "pgfleet_replication"
)

// MemberSpec is where one member is placed and what it is wanted to be.
type MemberSpec struct {
	ID      string `json:"id"`
	Cluster string `json:"cluster"`
	Host    string `json:"host"`
	Region  string `json:"region"`
	Role    Role   `json:"role"` // role wanted at creation; the leader key decides who is primary
	Port    int    `json:"port"`
	// Leaving marks a member on its way out of the cluster (`pgfleet ha`,
	// `replica remove`) that first has to leave the sync set: it is no
	// longer eligible, so the primary drops it from the synchronous
	// standbys and it is never promoted.
	Leaving bool `json:"leaving,omitempty"`
}

// MemberStatus is what a member's supervisor publishes, at least every second,
// under its host's lease.
type MemberStatus struct {
	ID         string `json:"id"`
	Host       string `json:"host"`
	Region     string `json:"region"`
	Role       Role   `json:"role"`
	State      State  `json:"state"`
	Addr       string `json:"addr"` // host:port of this member's Postgres
	Timeline   int64  `json:"timeline"`
	WriteLSN   string `json:"write_lsn,omitempty"`
	ReceiveLSN string `json:"receive_lsn,omitempty"`
	ReplayLSN  string `json:"replay_lsn,omitempty"`
	LagBytes   int64  `json:"lag_bytes"`
	Healthy    bool   `json:"healthy"`
	Progress   string `json:"progress,omitempty"` // e.g. clone progress "42%"
	Message    string `json:"message,omitempty"`
	// Restarted is the last restart order (ValidRestartID) this member
	// carried out: postgres stopped and started again as a standby.
	Restarted string `json:"restarted,omitempty"`
	// DiskFree and DiskSize are the bytes postgres can still use, and the
	// size, of the filesystem that holds the member's data directory; 0
	// when not measured.
	DiskFree int64 `json:"disk_free_bytes,omitempty"`
	DiskSize int64 `json:"disk_size_bytes,omitempty"`
	// ReadOnly, on a primary, is why it takes no writes (the disk guard);
	// empty while it takes them.
	ReadOnly string    `json:"read_only,omitempty"`
	Updated  time.Time `json:"updated"`
}

// Event is something that happened to a cluster, for `pgfleet events`.
type Event struct {
	Time    time.Time `json:"time"`
	Cluster string    `json:"cluster"`
	Member  string    `json:"member,omitempty"`
	Host    string    `json:"host,omitempty"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
}

// MemberID names the n-th member (1-based) of a cluster; ValidateMemberID
// accepts exactly the ids it makes.
func MemberID(cluster string, n int) string { return fmt.Sprintf("%s-%d", cluster, n) }

// Place chooses hosts for a new cluster's members: HA hosts in the primary
// region (the first becomes the primary) and one host in each replica region.
// It never puts two members of the cluster on one host and prefers the hosts
// that run the fewest members (load); ties go to the host name, so the result
// is deterministic.
func Place(spec ClusterSpec, hosts []Host, load map[string]int) ([]MemberSpec, error) {
	byRegion := map[string][]Host{}
	for _, h := range hosts {
		byRegion[h.Region] = append(byRegion[h.Region], h)
	}
	pick := func(region string, n int) ([]Host, error) {
		cands := append([]Host(nil), byRegion[region]...)
		if len(cands) < n {
			return nil, placementError(spec, region, n, cands, byRegion)
		}
		sort.Slice(cands, func(i, j int) bool {
			if load[cands[i].Name] != load[cands[j].Name] {
				return load[cands[i].Name] < load[cands[j].Name]
			}
			return cands[i].Name < cands[j].Name
		})
		return cands[:n], nil
	}

	var members []MemberSpec
	add := func(h Host, role Role) {
		members = append(members, MemberSpec{
			ID: MemberID(spec.Name, len(members)+1), Cluster: spec.Name,
			Host: h.Name, Region: h.Region, Role: role, Port: spec.Port,
		})
	}
	prim, err := pick(spec.PrimaryRegion, spec.HA)
	if err != nil {
		return nil, err
	}
	for i, h := range prim {
		role := RoleStandby
		if i == 0 {
			role = RolePrimary
		}
		add(h, role)
	}
	for _, r := range spec.Replicas {
		hs, err := pick(r, 1)
		if err != nil {
			return nil, err
		}
		add(hs[0], RoleReplica)
	}
	return members, nil
}

// ErrPlacement marks errors that say the fleet cannot hold a requested cluster.
type ErrPlacement struct{ msg string }

func (e *ErrPlacement) Error() string { return e.msg }

func placementError(spec ClusterSpec, region string, n int, have []Host, byRegion map[string][]Host) error {
	var regions []string
	for r, hs := range byRegion {
		regions = append(regions, fmt.Sprintf("%s (%d)", r, len(hs)))
	}
	sort.Strings(regions)
	known := "the fleet has no hosts"
	if len(regions) > 0 {
		known = "hosts per region: " + strings.Join(regions, ", ")
	}
	if len(have) == 0 {
		return &ErrPlacement{fmt.Sprintf("unknown region %q: no host of the fleet is in it (%s); start an agent with --region %s or pick another region", region, known, region)}
	}
	names := make([]string, len(have))
	for i, h := range have {
		names[i] = h.Name
	}
	sort.Strings(names)
	return &ErrPlacement{fmt.Sprintf("cluster %s needs %d hosts in region %s (one member per host) but the fleet has %d there (%s); add hosts to %s or lower --ha",
		spec.Name, n, region, len(have), strings.Join(names, ", "), region)}
}

// PortStride is the gap between two clusters' port blocks: Port is Postgres,
// Port+1 and Port+2 are kept for the routing proxy's primary and replica
// ports, Port+3 for the pooled port.
const PortStride = 10

// MaxPort is the last port a cluster's block may use.
const MaxPort = 65000

// NextPort returns the lowest port block at or above base that no cluster
// uses and that holds none of the reserved ports (the agent's own API and
// etcd ports), or an error when the range is full.
func NextPort(base int, used, reserved []int) (int, error) {
	taken := map[int]bool{}
	for _, p := range used {
		taken[p] = true
	}
	clashes := func(p int) bool {
		for _, r := range reserved {
			if r >= p && r < p+PortStride {
				return true
			}
		}
		return false
	}
	for p := base; p+PortStride-1 <= MaxPort; p += PortStride {
		if !taken[p] && !clashes(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port block between %d and %d: destroy clusters that are no longer used", base, MaxPort)
}

// LagBytes is how far a member that has replayed up to replay is behind a
// primary that has written up to write. A member cannot be ahead of its
// primary; a negative difference comes from reading the two at different
// moments and counts as no lag.
func LagBytes(write, replay uint64) int64 {
	if replay >= write {
		return 0
	}
	return int64(write - replay)
}

// FormatBytes writes a size for people: "512 B", "12.3 kB", "22.6 MB",
// "1.5 GB" (powers of 1024).
func FormatBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f kB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
}
