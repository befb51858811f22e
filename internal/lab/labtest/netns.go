package labtest

import (
	"os"
	"testing"

	"github.com/pgfleet/pgfleet/internal/lab"
)

// Namespaces is lab.Namespaces for a test: failures fail the test, and the
// namespaces go when it ends.
type Namespaces struct {
	*lab.Namespaces
	t testing.TB
}

// NewNamespaces puts every host of plan in a network namespace of its own
// (see lab.NewNamespaces). It skips the test where namespaces cannot be
// made (not root, no `ip`), except in CI, where that fails it.
func NewNamespaces(t testing.TB, plan *lab.Plan) *Namespaces {
	t.Helper()
	n, err := lab.NewNamespaces(plan)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs root and iproute2 for network namespaces: %v", err)
		}
		t.Skip(err)
	}
	t.Cleanup(n.Remove)
	return &Namespaces{Namespaces: n, t: t}
}

// Cut takes host's link down: it reaches no other host, and none reaches it.
func (n *Namespaces) Cut(host string) {
	n.t.Helper()
	if err := n.Namespaces.Cut(host); err != nil {
		n.t.Fatal(err)
	}
}

// Heal brings host's link back.
func (n *Namespaces) Heal(host string) {
	n.t.Helper()
	if err := n.Namespaces.Heal(host); err != nil {
		n.t.Fatal(err)
	}
}
