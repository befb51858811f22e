package main

import (
	"os"
	"strings"
	"testing"

	"github.com/pgfleet/pgfleet/internal/agent"
	"github.com/pgfleet/pgfleet/internal/lab/labtest"
	"github.com/pgfleet/pgfleet/internal/pki"
)

// TestCARotateCommand runs `pgfleet ca rotate` as a user would, with a CLI
// that trusts only the old CA, and follows it to its end; `--status` then
// says none runs, and the CLI still reaches the fleet, which now presents
// only the new CA.
func TestCARotateCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three agents and restarts their etcd members twice")
	}
	f := labtest.StartFleet(t, "iad:3")
	oldPEM, err := os.ReadFile(agent.CAPath(f.DataDir("iad-1")))
	if err != nil {
		t.Fatal(err)
	}
	caFile := t.TempDir() + "/ca.crt"
	if err := os.WriteFile(caFile, oldPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	f.Client.CAFile = caFile // inFleet passes it as --ca: a CLI that knows only the old CA
	out, stderr, err := inFleet(t, f, "ca", "rotate")
	if err != nil {
		t.Fatalf("ca rotate: %v\n%s\n%s", err, out, stderr)
	}
	t.Logf("ca rotate:\n%s", out)
	for _, want := range []string{"phase trust", "phase retire", "finished: the fleet trusts only CA sha256:", "holds the old CA: replace it"} {
		if !strings.Contains(out, want) {
			t.Errorf("ca rotate printed no %q", want)
		}
	}
	if _, _, err := inFleet(t, f, "hosts"); err == nil || !strings.Contains(err.Error(), "not from the fleet's CA") {
		t.Errorf("hosts with only the old CA after the rotation: %v; want refused, the old CA is retired", err)
	}
	newPEM, err := os.ReadFile(agent.CAPath(f.DataDir("iad-1")))
	if err != nil {
		t.Fatal(err)
	}
	if pki.SameCerts(oldPEM, newPEM) {
		t.Fatal("iad-1 still trusts the old CA")
	}
	if err := os.WriteFile(caFile, newPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _, err := inFleet(t, f, "hosts"); err != nil || !strings.Contains(out, "iad-3") {
		t.Errorf("hosts with the new CA: %v\n%s", err, out)
	}
	if out, _, err := inFleet(t, f, "ca", "rotate", "--status"); err != nil || !strings.Contains(out, "no CA rotation is under way") {
		t.Errorf("ca rotate --status after the end: %v, %q", err, out)
	}
	if _, _, err := inFleet(t, f, "ca", "rotate", "--status", "--no-wait"); err == nil || !strings.Contains(err.Error(), "--status only reports") {
		t.Errorf("--status with --no-wait: %v; want refused", err)
	}
}
