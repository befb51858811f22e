// Command pgfleet runs PostgreSQL clusters on a fleet of hosts: `pgfleet
// agent` on every host, and the other subcommands to manage clusters.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pgfleet/pgfleet/internal/postgres"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == postgres.DeadManCommand {
		// A primary's dead man's switch (postgres.DeadMan), started by the
		// agent: it handles its own signals and must not wait on anything
		// the agent does.
		os.Exit(postgres.RunDeadMan(os.Args[2:], os.Stdin, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		var q quietExit
		if errors.As(err, &q) {
			fmt.Fprintln(os.Stderr, q.msg)
			os.Exit(q.code)
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// usageError marks an error in the command line itself.
type usageError struct{ error }

// quietExit ends the command with code after printing msg as it is: for
// outcomes that are not failures to the program that runs pgfleet, such as
// a WAL file postgres asked for and the archive does not have.
type quietExit struct {
	code int
	msg  string
}

func (q quietExit) Error() string { return q.msg }
