package postgres

import (
	"os"
	"testing"
)

// TestMain lets the test binary stand in for `pgfleet fence-watch`, so that
// ArmDeadMan (which runs this process' own executable) works under test.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == DeadManCommand {
		os.Exit(RunDeadMan(os.Args[2:], os.Stdin, os.Stderr))
	}
	os.Exit(m.Run())
}
