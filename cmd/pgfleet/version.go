package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/postgres"
)

func versionString() string { return agent.Version }

// commit is the commit the binary was built from, when the build sets it
// (-ldflags "-X main.commit=..."), for builds without Go's VCS stamping
// (GOFLAGS=-buildvcs=false, or a tree without .git).
var commit = ""

// buildInfo describes this binary: its version (set at release with
// -ldflags, else the module's, else "dev"), the commit it was built from and
// whether the tree had changes, and the Go release that built it.
func buildInfo() string {
	v := agent.Version
	commit, modified := commit, false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if len(commit) > 12 {
		commit = commit[:12]
	}
	switch {
	case commit == "":
		commit = "commit not recorded: build with -buildvcs=true"
	case modified:
		commit = "commit " + commit + ", with local changes"
	default:
		commit = "commit " + commit
	}
	return fmt.Sprintf("pgfleet %s (%s), built with %s for %s/%s", v, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// printVersions prints the binary's build and the PostgreSQL server
// binaries an agent on this machine would run.
func printVersions(w io.Writer) {
	fmt.Fprintln(w, buildInfo())
	bin, err := postgres.FindBin("")
	if err != nil {
		fmt.Fprintf(w, "PostgreSQL: %v\n", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin.Path("postgres"), "--version").Output()
	if err != nil {
		fmt.Fprintf(w, "PostgreSQL %d in %s (postgres --version: %v)\n", bin.Version, bin.Dir, err)
		return
	}
	// "postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)"
	pv := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "postgres (PostgreSQL)"))
	fmt.Fprintf(w, "PostgreSQL %s in %s\n", pv, bin.Dir)
}
