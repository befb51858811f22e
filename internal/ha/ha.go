// Package ha holds the member supervisor's decisions as pure functions: given
// what a supervisor observes, what should its member do next. Nothing here
// touches Postgres or etcd, so every rule is a table test.
package ha

import "github.com/pgfleet/pgfleet/internal/fleet"

// Action is the next step of a member's supervisor.
type Action string

const (
	// Wait: nothing can be done yet; observe again shortly.
	Wait Action = "wait"
	// Bootstrap: create a new database cluster with initdb and run it as primary.
	Bootstrap Action = "bootstrap"
	// Clone: copy the cluster's data with pg_basebackup, from the member
	// CloneSource picks (a standby, or the leader), then follow the leader.
	Clone Action = "clone"
	// StartPrimary: start the existing data as the writable primary.
	StartPrimary Action = "start-primary"
	// StartStandby: start the existing data as a standby of the leader.
	StartStandby Action = "start-standby"
	// Rejoin: the data was a primary's and another member leads now; it must
	// be rewound or re-cloned before it may follow.
	Rejoin Action = "rejoin"
)

// Observation is what a supervisor knows before starting its member.
type Observation struct {
	Self        fleet.MemberSpec
	Initialized bool   // the member's data directory holds a database cluster
	WasPrimary  bool   // that data was last run as a primary (no standby.signal)
	Diverged    bool   // streaming from the leader failed: the histories differ
	Leader      string // member id holding the leader key, "" if none
	LeaderReady bool   // the leader's status says it accepts connections
	// ClusterInitialized reports whether the cluster ever had a primary:
	// then its data exists somewhere, and initdb would create a second,
	// empty history.
	ClusterInitialized bool
}

// Next decides what a member whose postgres is not running does next, and why.
// The leader key is the only authority on who may be primary: a member runs
// writable only while it holds the key. A member with data and no leader
// starts read-only and runs in the election; the winner promotes.
func Next(o Observation) (Action, string) {
	self := o.Self.ID
	switch {
	case !o.Initialized && o.Leader == "" && o.Self.Role == fleet.RolePrimary && !o.ClusterInitialized:
		return Bootstrap, "no data and no leader: creating the cluster"
	case !o.Initialized && o.Leader == "" && o.ClusterInitialized:
		return Wait, "no data here and no primary to clone from; the cluster's data is on other members"
	case !o.Initialized && o.Leader == "":
		return Wait, "waiting for a primary to clone from"
	case !o.Initialized && o.Leader == self:
		return Wait, "holds the leader key but has no data; waiting for the key to expire"
	case !o.Initialized && !o.LeaderReady:
		return Wait, "waiting for primary " + o.Leader + " to accept connections"
	case !o.Initialized:
		return Clone, "no data here: cloning while primary " + o.Leader + " runs"
	case o.Leader == self && o.WasPrimary:
		return StartPrimary, "holds the leader key"
	case o.Leader == self:
		// A standby's data is promoted, never started as a primary: a
		// start without recovery replays only the timeline of its last
		// restartpoint, which may be older than the WAL it received, and
		// would write on an abandoned timeline. Promotion opens a new one.
		return StartStandby, "holds the leader key with a standby's data: recovering read-only to promote"
	case o.Leader == "":
		return StartStandby, "no leader: starting read-only to run in the election"
	case o.WasPrimary || o.Diverged:
		if !o.LeaderReady {
			return Wait, "must rejoin " + o.Leader + ", which does not accept connections yet"
		}
		return Rejoin, "its history differs from primary " + o.Leader + "'s"
	default:
		return StartStandby, "following primary " + o.Leader
	}
}
