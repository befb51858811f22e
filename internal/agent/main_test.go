package agent_test

import (
	"os"
	"testing"

	"github.com/pgfleet/pgfleet/internal/postgres"
)

// TestMain lets the test binary stand in for `pgfleet fence-watch`: the
// agents under test run in this process, and a primary's dead man's switch
// runs this process' executable.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == postgres.DeadManCommand {
		os.Exit(postgres.RunDeadMan(os.Args[2:], os.Stdin, os.Stderr))
	}
	os.Exit(m.Run())
}
