package labtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/lab"
)

// Namespaces puts every host of a plan in a network namespace of its own,
// on a bridge, so that a test can cut one host off from all the others by
// taking its link down, as a real network partition would.
type Namespaces struct {
	t      testing.TB
	bridge string
	ns     map[string]string // host -> namespace
	link   map[string]string // host -> its veth end on the bridge
}

// NewNamespaces creates the namespaces and rewrites the plan's addresses to
// theirs (10.213.0.10 and up). It skips the test where namespaces cannot be
// made (not root, no `ip`), except in CI, where that fails it.
func NewNamespaces(t testing.TB, plan *lab.Plan) *Namespaces {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs root and iproute2 for network namespaces (ip: %v, euid %d)", err, os.Geteuid())
		}
		t.Skip("network namespaces need root and iproute2")
	}
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	n := &Namespaces{t: t, bridge: "pgfb" + id, ns: map[string]string{}, link: map[string]string{}}
	t.Cleanup(n.remove)
	n.ip("link", "add", n.bridge, "type", "bridge")
	n.ip("addr", "add", "10.213.255.254/16", "dev", n.bridge)
	n.ip("link", "set", n.bridge, "up")
	for i := range plan.Hosts {
		h := &plan.Hosts[i]
		ns, root, peer := fmt.Sprintf("pgf%s-%d", id, i), fmt.Sprintf("pgv%s%d", id, i), fmt.Sprintf("pgp%s%d", id, i)
		h.Addr = fmt.Sprintf("10.213.0.%d", 10+i)
		n.ns[h.Name], n.link[h.Name] = ns, root
		n.ip("netns", "add", ns)
		n.ip("link", "add", root, "type", "veth", "peer", "name", peer)
		n.ip("link", "set", peer, "netns", ns)
		n.ip("link", "set", root, "master", n.bridge, "up")
		n.ip("-n", ns, "addr", "add", h.Addr+"/16", "dev", peer)
		n.ip("-n", ns, "link", "set", peer, "up")
		n.ip("-n", ns, "link", "set", "lo", "up")
	}
	return n
}

func (n *Namespaces) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Wrap runs a host's agent in its namespace (for lab.Dev.Wrap).
func (n *Namespaces) Wrap(h lab.HostPlan) []string {
	return []string{"ip", "netns", "exec", n.ns[h.Name]}
}

// Cut takes host's link down: it reaches no other host, and none reaches it.
func (n *Namespaces) Cut(host string) { n.ip("link", "set", n.link[host], "down") }

// Heal brings host's link back.
func (n *Namespaces) Heal(host string) { n.ip("link", "set", n.link[host], "up") }

func (n *Namespaces) remove() {
	for _, ns := range n.ns {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	for _, l := range n.link {
		exec.Command("ip", "link", "del", l).Run()
	}
	exec.Command("ip", "link", "del", n.bridge).Run()
}
