package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgfleet/pgfleet/internal/lab/labtest"
)

// TestUnfinishedJoinRejoins stops a joined host and takes away its store
// member, as a crash between its admission and its store member's start
// leaves it: started again without a join token, it joins the same fleet's
// store through what it recorded, and does not make a fleet of its own.
func TestUnfinishedJoinRejoins(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two agents")
	}
	f := labtest.StartFleet(t, "iad:3")
	f.Stop("iad-3")
	if err := os.RemoveAll(filepath.Join(f.DataDir("iad-3"), "etcd")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(f.DataDir("iad-3"), "tls", "join.json")); err != nil {
		t.Fatalf("the join record: %v", err)
	}
	f.Start("iad-3", "")
	labtest.WaitFor(t, 30*time.Second, "all three hosts in the one fleet", func() (bool, string) {
		hs, err := f.Client.Hosts(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return len(hs) == 3, fmt.Sprintf("%d hosts", len(hs))
	})
	if _, err := os.Stat(filepath.Join(f.DataDir("iad-3"), "token")); err == nil {
		t.Fatal("iad-3 made an API token of its own: it started a fleet of its own")
	}
}
