// Package api is the agent's HTTP API (JSON, bearer-token auth) and the Go
// client the CLI uses to talk to it.
package api

import (
	"net"
	"strconv"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

// CreateRequest is the body of POST /v1/clusters.
type CreateRequest struct {
	Name          string            `json:"name"`
	PrimaryRegion string            `json:"primary_region"`
	HA            *int              `json:"ha,omitempty"` // default 1
	Replicas      []string          `json:"replicas,omitempty"`
	Params        map[string]string `json:"params,omitempty"`
	// LeaseTTL is the leader lease in whole seconds (default 3).
	LeaseTTL int `json:"lease_ttl,omitempty"`
	// MaxLagOnFailover is how many bytes of WAL a standby may miss and still
	// be promoted (default 16 MiB).
	MaxLagOnFailover int64 `json:"max_lag_on_failover,omitempty"`
	// Sync is the replication mode: off (default), on or strict.
	Sync string `json:"sync,omitempty"`
	// MaxReplicaLag is how many bytes of WAL replay a member may be behind
	// and still get reads from the replica port (default 16 MiB).
	MaxReplicaLag int64 `json:"max_replica_lag,omitempty"`
	// BackupStore is the object store for continuous backups: empty uses
	// the fleet's default store (if it has one), "none" turns backups off.
	BackupStore string `json:"backup_store,omitempty"`
	// BackupEncrypt encrypts every backup object with a key generated for
	// the cluster.
	BackupEncrypt bool `json:"backup_encrypt,omitempty"`
	// BackupEvery is the base backup interval in seconds (default a day).
	BackupEvery int64 `json:"backup_every_s,omitempty"`
	// Restore makes the cluster from another cluster's backups.
	Restore *RestoreRequest `json:"restore,omitempty"`
	// DiskGuard is the free space, in percent of a member's data
	// filesystem, below which the cluster stops taking writes: 1 to 50,
	// 0 for the default (10), -1 to turn the guard off.
	DiskGuard int `json:"disk_guard_pct,omitempty"`
	// PoolSize is the pooled port's server connections per user and
	// database on each host: 1 to 1000, 0 for the default (20).
	PoolSize int `json:"pool_size,omitempty"`
}

// RestoreRequest says which backups a new cluster is made from: those of
// cluster From (live or destroyed), replayed to Time, LSN, or the latest
// archived state. Exactly one target.
type RestoreRequest struct {
	From   string     `json:"from"`
	Time   *time.Time `json:"time,omitempty"`
	LSN    string     `json:"lsn,omitempty"`
	Latest bool       `json:"latest,omitempty"`
}

// BackupRequestView answers POST /v1/clusters/{name}/backups.
type BackupRequestView struct {
	ID     string `json:"id"`
	Member string `json:"member"`
	// Running reports that this backup was already under way (scheduled, or
	// asked for by someone else): one runs at a time.
	Running bool `json:"running,omitempty"`
}

// BackupsView answers GET /v1/clusters/{name}/backups.
type BackupsView struct {
	Store   string            `json:"store"`
	Backups []backup.Manifest `json:"backups"`
	// Running is the backup requested or under way, if any.
	Running *fleet.BackupRequest `json:"running,omitempty"`
}

// UpdateRequest is the body of PATCH /v1/clusters/{name}: the settings that
// can change on a live cluster.
type UpdateRequest struct {
	Sync *string `json:"sync,omitempty"`
	// BackupEvery is the base backup interval in seconds, at least 60.
	BackupEvery *int64 `json:"backup_every_s,omitempty"`
	// DiskGuard is the disk guard's threshold in percent of free space;
	// -1 turns it off (see CreateRequest.DiskGuard).
	DiskGuard *int `json:"disk_guard_pct,omitempty"`
	// PoolSize is the pooled port's server connections per user and
	// database on each host, 1 to 1000.
	PoolSize *int `json:"pool_size,omitempty"`
}

// SwitchoverRequest is the body of POST /v1/clusters/{name}/switchover.
type SwitchoverRequest struct {
	To string `json:"to,omitempty"` // default: the most caught-up healthy standby
}

// SwitchoverView answers a switchover request.
type SwitchoverView struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// ClusterView is a cluster as the API shows it.
type ClusterView struct {
	Name          string   `json:"name"`
	PrimaryRegion string   `json:"primary_region"`
	HA            int      `json:"ha"`
	Replicas      []string `json:"replicas"`
	Port          int      `json:"port"`
	// PrimaryProxyPort and ReplicaProxyPort are where every agent's routing
	// proxy listens for this cluster: to the primary, and to the nearest
	// member whose replay lag is within MaxReplicaLag bytes.
	PrimaryProxyPort int      `json:"primary_proxy_port"`
	ReplicaProxyPort int      `json:"replica_proxy_port"`
	MaxReplicaLag    int64    `json:"max_replica_lag"`
	LeaseTTL         int      `json:"lease_ttl"`
	Sync             string   `json:"sync"`
	SyncStandbys     []string `json:"sync_standbys,omitempty"` // in sync mode: who holds every acknowledged commit
	Primary          string   `json:"primary"`                 // member id holding the leader key, "" if none
	// PrimaryTerm changes with every new hold of the leader key, also when
	// the same member takes it again.
	PrimaryTerm int64 `json:"primary_term,omitempty"`
	// DiskGuard is the free space, in percent, below which the cluster
	// stops taking writes; 0 when the guard is off.
	DiskGuard int `json:"disk_guard_pct"`
	// ReadOnly is why the cluster takes no writes now (the disk guard),
	// as its primary published it; empty while it takes them.
	ReadOnly string `json:"read_only,omitempty"`
	// Move is the change of primary region under way (`pgfleet move`);
	// nil when none is.
	Move    *fleet.Move  `json:"move,omitempty"`
	Created time.Time    `json:"created"`
	Members []MemberView `json:"members"`
	// PooledProxyPort is where every agent pools transactions to the
	// primary, with PoolSize server connections per user and database.
	PooledProxyPort int `json:"pooled_proxy_port,omitempty"`
	PoolSize        int `json:"pool_size"`
}

// MemberView is one member as the API shows it: its placement merged with
// its last published status.
type MemberView struct {
	ID         string      `json:"id"`
	Host       string      `json:"host"`
	Region     string      `json:"region"`
	Role       fleet.Role  `json:"role"`
	State      fleet.State `json:"state"`
	Addr       string      `json:"addr"`
	Timeline   int64       `json:"timeline"`
	LagBytes   int64       `json:"lag_bytes"` // -1 when unknown
	Healthy    bool        `json:"healthy"`
	WriteLSN   string      `json:"write_lsn,omitempty"`
	ReceiveLSN string      `json:"receive_lsn,omitempty"`
	ReplayLSN  string      `json:"replay_lsn,omitempty"`
	Progress   string      `json:"progress,omitempty"`
	Message    string      `json:"message,omitempty"`
	Restarted  string      `json:"restarted,omitempty"` // the last restart order carried out
	// DiskFree and DiskSize are the member's data filesystem's bytes
	// postgres can still use and its size; 0 when not measured.
	DiskFree int64      `json:"disk_free_bytes,omitempty"`
	DiskSize int64      `json:"disk_size_bytes,omitempty"`
	Updated  *time.Time `json:"updated,omitempty"`
}

// HostView is one live host with the members placed on it.
type HostView struct {
	fleet.Host
	Members int `json:"members"`
}

// URLView answers GET /v1/clusters/{name}/url.
type URLView struct {
	URL string `json:"url"`
	// Via is how the URL reaches postgres: "proxy" (the routing proxies of
	// Region's hosts, on Port), "direct" (every member's postgres) or
	// "member" (the one member Member).
	Via    string   `json:"via"`
	Member string   `json:"member,omitempty"`
	Region string   `json:"region,omitempty"`
	Port   int      `json:"port,omitempty"`
	Hosts  []string `json:"hosts"` // host:port, in the order libpq tries them
}

// MemberHealthView answers the Patroni-compatible health checks,
// /health/{cluster}/{check}: the state of the cluster's member on the
// answering agent's host, and why the check passed or failed.
type MemberHealthView struct {
	Cluster  string      `json:"cluster"`
	Member   string      `json:"member"`
	Check    string      `json:"check"`
	Role     fleet.Role  `json:"role"`
	State    fleet.State `json:"state"`
	Timeline int64       `json:"timeline"`
	LagBytes int64       `json:"lag_bytes"` // -1 when unknown
	// Leader reports whether the member holds the cluster's leader key.
	Leader bool `json:"leader"`
	// SyncStandby reports whether the member is in the published sync set.
	SyncStandby bool   `json:"sync_standby"`
	Reason      string `json:"reason"`
}

// ErrorView is the body of every non-2xx answer, except a health check
// that ran and failed, which answers MemberHealthView.
type ErrorView struct {
	Error string `json:"error"`
}

// HealthView answers GET /v1/health, which needs no token.
type HealthView struct {
	Host   string `json:"host"`
	Region string `json:"region"`
	Store  string `json:"store"` // "ok" or why the store does not answer
}

// viewCluster merges a cluster's spec, placement and status.
func viewCluster(c store.ClusterState, hosts map[string]fleet.Host) ClusterView {
	v := ClusterView{
		Name: c.Spec.Name, PrimaryRegion: c.Spec.PrimaryRegion, HA: c.Spec.HA,
		Replicas: c.Spec.Replicas, Port: c.Spec.Port, Primary: c.Leader, PrimaryTerm: c.LeaderTerm, Created: c.Spec.Created,
		PrimaryProxyPort: c.Spec.PrimaryProxyPort(), ReplicaProxyPort: c.Spec.ReplicaProxyPort(),
		PooledProxyPort: c.Spec.PooledProxyPort(), PoolSize: c.Spec.Pool(), MaxReplicaLag: c.Spec.ReplicaLagLimit(),
		LeaseTTL: int(c.Spec.TTL() / time.Second), Sync: c.Spec.SyncMode(), DiskGuard: c.Spec.DiskGuardPercent(), Move: c.Spec.Move,
	}
	if c.Sync != nil && c.Spec.SyncMode() != fleet.SyncOff {
		v.SyncStandbys = c.Sync.Members
	}
	if v.Replicas == nil {
		v.Replicas = []string{}
	}
	for _, m := range c.Members {
		mv := MemberView{ID: m.ID, Host: m.Host, Region: m.Region, Role: m.Role, State: fleet.StateUnknown, LagBytes: -1}
		if h, ok := hosts[m.Host]; ok {
			mv.Addr = net.JoinHostPort(h.Addr, strconv.Itoa(m.Port))
			mv.State = fleet.StatePending
		}
		if st, ok := c.Status[m.ID]; ok {
			mv.Role, mv.State, mv.Addr = st.Role, st.State, st.Addr
			mv.Timeline, mv.LagBytes, mv.Healthy = st.Timeline, st.LagBytes, st.Healthy
			mv.WriteLSN, mv.ReceiveLSN, mv.ReplayLSN = st.WriteLSN, st.ReceiveLSN, st.ReplayLSN
			mv.Progress, mv.Message, mv.Restarted = st.Progress, st.Message, st.Restarted
			mv.DiskFree, mv.DiskSize = st.DiskFree, st.DiskSize
			if m.ID == c.Leader && st.Role == fleet.RolePrimary {
				v.ReadOnly = st.ReadOnly
			}
			u := st.Updated
			mv.Updated = &u
		}
		if mv.Role == fleet.RolePrimary {
			mv.LagBytes = 0
		}
		v.Members = append(v.Members, mv)
	}
	return v
}
