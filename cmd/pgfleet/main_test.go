package main

import (
	"os"
	"testing"

	"github.com/pgfleet/pgfleet/internal/postgres"
)

// TestMain lets the test binary stand in for the pgfleet binary where an
// agent under test runs it: its members' dead man's switch (fence-watch)
// and their archive_command and restore_command (wal-push, wal-fetch).
// Without it those would run this package's whole test suite again, and
// each of its fleets would do the same.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case postgres.DeadManCommand, "wal-push", "wal-fetch":
			main()
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}
