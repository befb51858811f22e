package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/pooler"
	"github.com/pgfleet/pgfleet/internal/postgres"
	"github.com/pgfleet/pgfleet/internal/proxy"
)

// newPooler returns the host's transaction pooler, which follows the
// proxy's routes.
func (a *Agent) newPooler(px *proxy.Proxy) *pooler.Pooler {
	pl := pooler.New(pooler.Config{
		Addr: a.cfg.Advertise, Identity: a.identity, Verifiers: verifiers{a},
		Log: a.log.With("component", "pooler"),
	})
	px.Follow(pl.Update)
	return pl
}

// verifiers reads roles' verifiers on a cluster's primary as its
// superuser, over TLS verified against the fleet's CA.
type verifiers struct{ a *Agent }

var _ pooler.Verifiers = verifiers{}

// poolMetrics adds each pool of the pooled ports to /metrics.
func poolMetrics(pl *pooler.Pooler, host fleet.Host, e *exposition) {
	for _, p := range pl.Pools() {
		l := labels{"cluster", p.Cluster, "user", p.User, "database", p.Database, "host", host.Name, "region", host.Region}
		e.gauge("pgfleet_pool_size", "The most server connections the pool opens (pgfleet set --pool-size).", float64(p.Size), l)
		e.gauge("pgfleet_pool_server_connections", "Server connections the pool has open, idle or busy.", float64(p.Open), l)
		e.gauge("pgfleet_pool_server_connections_idle", "Server connections idle in the pool.", float64(p.Idle), l)
		e.gauge("pgfleet_pool_waiting", "Transactions waiting for a server connection now.", float64(p.Waiting), l)
		e.counter("pgfleet_pool_timeouts_total", "Transactions that waited past the queue timeout and failed with 53300.", float64(p.Timeouts), l)
	}
}

func (v verifiers) Verifier(ctx context.Context, cluster string, primary proxy.Backend, user string) (string, error) {
	sec, err := v.a.store.Secrets(ctx, cluster)
	if err != nil {
		return "", fmt.Errorf("read the secrets of %s: %w", cluster, err)
	}
	host, portText, err := net.SplitHostPort(primary.Addr)
	if err != nil {
		return "", err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return "", err
	}
	ci := postgres.ConnInfo{Host: host, Port: port, User: fleet.Superuser, Password: sec.SuperuserPassword, Database: "postgres"}
	conn, err := postgres.ConnectVerified(ctx, ci, v.a.identity.Pool())
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	return postgres.RoleVerifier(ctx, conn, user)
}
