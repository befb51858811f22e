package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Namespaces puts every host of a plan in a network namespace of its own,
// on a bridge, so that a fault can cut one host off from all the others by
// taking its link down, as a real network partition would.
type Namespaces struct {
	bridge string
	ns     map[string]string // host -> namespace
	link   map[string]string // host -> its veth end on the bridge
}

// ErrNoNamespaces is returned where network namespaces cannot be made.
var ErrNoNamespaces = errors.New("network namespaces need root and iproute2 (ip)")

// NewNamespaces creates the namespaces and rewrites the plan's addresses to
// theirs (10.213.0.10 and up). Call Remove when done.
func NewNamespaces(plan *Plan) (*Namespaces, error) {
	if _, err := exec.LookPath("ip"); err != nil || os.Geteuid() != 0 {
		return nil, ErrNoNamespaces
	}
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	n := &Namespaces{bridge: "pgfb" + id, ns: map[string]string{}, link: map[string]string{}}
	steps := [][]string{
		{"link", "add", n.bridge, "type", "bridge"},
		{"addr", "add", "10.213.255.254/16", "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
	}
	for i := range plan.Hosts {
		h := &plan.Hosts[i]
		ns, root, peer := fmt.Sprintf("pgf%s-%d", id, i), fmt.Sprintf("pgv%s%d", id, i), fmt.Sprintf("pgp%s%d", id, i)
		h.Addr = fmt.Sprintf("10.213.0.%d", 10+i)
		n.ns[h.Name], n.link[h.Name] = ns, root
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"link", "add", root, "type", "veth", "peer", "name", peer},
			[]string{"link", "set", peer, "netns", ns},
			[]string{"link", "set", root, "master", n.bridge, "up"},
			[]string{"-n", ns, "addr", "add", h.Addr + "/16", "dev", peer},
			[]string{"-n", ns, "link", "set", peer, "up"},
			[]string{"-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			n.Remove()
			return nil, err
		}
	}
	return n, nil
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Wrap runs a host's agent in its namespace (for Dev.Wrap).
func (n *Namespaces) Wrap(h HostPlan) []string {
	return []string{"ip", "netns", "exec", n.ns[h.Name]}
}

// Cut takes host's link down: it reaches no other host, and none reaches it.
func (n *Namespaces) Cut(host string) error { return ip("link", "set", n.link[host], "down") }

// Heal brings host's link back.
func (n *Namespaces) Heal(host string) error { return ip("link", "set", n.link[host], "up") }

// Remove deletes the namespaces, links and bridge.
func (n *Namespaces) Remove() {
	for _, ns := range n.ns {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	for _, l := range n.link {
		exec.Command("ip", "link", "del", l).Run()
	}
	exec.Command("ip", "link", "del", n.bridge).Run()
}
