package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/api"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/lab"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// namespacedFleet is a dev fleet whose hosts run in network namespaces of
// their own, so that a test can cut one off.
type namespacedFleet struct {
	plan   lab.Plan
	token  string
	dir    string
	dev    *lab.Dev
	ns     *labtest.Namespaces
	client *api.Client
}

// startNamespacedFleet starts the hosts of regions ("iad:3") each in its
// own namespace, with the pgfleet binary of this checkout; the fleet is
// stopped and purged when the test ends.
func startNamespacedFleet(t *testing.T, regions string) namespacedFleet {
	t.Helper()
	labtest.RequirePostgres(t)
	plan, err := lab.ParsePlan(regions, 0)
	if err != nil {
		t.Fatal(err)
	}
	ns := labtest.NewNamespaces(t, &plan)
	dir := filepath.Join(labtest.TestDir(t), "fleet")
	d := &lab.Dev{Exe: buildBinary(t), Dir: dir, Out: io.Discard, Wrap: ns.Wrap}
	t.Cleanup(func() { d.Down(true) })
	plan, token, err := d.Up(context.Background(), plan, true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Client(plan, token)
	if err != nil {
		t.Fatal(err)
	}
	return namespacedFleet{plan: plan, token: token, dir: dir, dev: d, ns: ns, client: c}
}

// TestPartitionedPrimaryFences cuts the primary's host off from etcd and
// from every peer (its network namespace's link goes down). The primary
// cannot renew its lease and must stop taking writes before any other
// member can be elected; the others elect a new primary; once the link is
// back, the old primary rejoins as a standby.
func TestPartitionedPrimaryFences(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-host fleet in network namespaces")
	}
	f := startNamespacedFleet(t, "iad:3")
	plan, token, dir, ns := f.plan, f.token, f.dir, f.ns
	ctx := context.Background()
	apiOf := map[string]string{}
	for _, h := range plan.Hosts {
		apiOf[h.Name] = h.API()
	}
	c := f.client
	ha := 3
	if _, err := c.Create(ctx, api.CreateRequest{Name: "part", PrimaryRegion: "iad", HA: &ha, LeaseTTL: 3}); err != nil {
		t.Fatal(err)
	}
	var v api.ClusterView
	labtest.WaitFor(t, 3*time.Minute, "cluster ready", func() (bool, string) {
		var err error
		v, err = c.Cluster(ctx, "part")
		if err != nil {
			return false, err.Error()
		}
		ok := v.Primary != ""
		for _, m := range v.Members {
			ok = ok && m.Healthy
		}
		return ok, fmt.Sprintf("%+v", v.Members)
	})
	old := v.Primary
	var host string
	for _, m := range v.Members {
		if m.ID == old {
			host = m.Host
		}
	}
	pm := pidFile(t, filepath.Join(dir, host, "members", old, "pgdata", "postmaster.pid"))

	// The rest of the fleet, seen from outside the cut host.
	var others []string
	for h, a := range apiOf {
		if h != host {
			others = append(others, a)
		}
	}
	rest := api.NewClient(others, token, c.CA())

	fenced := make(chan time.Time, 1)
	go func() {
		for syscall.Kill(pm, 0) == nil {
			time.Sleep(10 * time.Millisecond)
		}
		fenced <- time.Now()
	}()
	cut := time.Now()
	ns.Cut(host)
	var newP string
	labtest.WaitFor(t, 60*time.Second, "a new primary", func() (bool, string) {
		v, err := rest.Cluster(ctx, "part")
		if err != nil {
			return false, err.Error()
		}
		for _, m := range v.Members {
			if m.ID == v.Primary && m.ID != old && m.State == fleet.StateRunning {
				newP = m.ID
				return true, ""
			}
		}
		return false, "primary " + v.Primary
	})
	var fencedAt time.Time
	select {
	case fencedAt = <-fenced:
	case <-time.After(10 * time.Second):
		t.Fatalf("the cut-off primary %s still runs postgres (pid %d) although %s was elected", old, pm, newP)
	}
	evs, err := rest.Events(ctx, "part", 100)
	if err != nil {
		t.Fatal(err)
	}
	var electedAt time.Time
	for _, e := range evs {
		if e.Member == newP && e.Kind == "elected" && e.Time.After(cut) {
			electedAt = e.Time
		}
	}
	if electedAt.IsZero() {
		t.Fatalf("no election event of %s: %+v", newP, evs)
	}
	t.Logf("link of %s cut; its postgres stopped after %s, %s elected after %s",
		host, fencedAt.Sub(cut).Round(10*time.Millisecond), newP, electedAt.Sub(cut).Round(10*time.Millisecond))
	if !fencedAt.Before(electedAt) {
		t.Fatalf("the old primary %s stopped at %s, after %s took the leader key at %s: two primaries at once",
			old, fencedAt.Format("15:04:05.000"), newP, electedAt.Format("15:04:05.000"))
	}

	ns.Heal(host)
	labtest.WaitFor(t, 90*time.Second, old+" back as a standby", func() (bool, string) {
		v, err := c.Cluster(ctx, "part")
		if err != nil {
			return false, err.Error()
		}
		var s []string
		for _, m := range v.Members {
			s = append(s, fmt.Sprintf("%s %s %s", m.ID, m.Role, m.State))
			if m.ID == old && m.Role == fleet.RoleStandby && m.State == fleet.StateStreaming {
				return true, ""
			}
		}
		return false, strings.Join(s, ", ")
	})
}
