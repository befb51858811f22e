package main

import (
	"errors"
	"strings"
	"testing"
)

// TestWALFlagsCheck: wal-push and wal-fetch go through the agent's socket
// or straight to a store, never a mix, and say which flag is wrong.
func TestWALFlagsCheck(t *testing.T) {
	for _, c := range []struct {
		name string
		f    walFlags
		want string // "" for valid
	}{
		{"through the agent", walFlags{socket: "/d/run/wal.sock", cluster: "demo", member: "demo-1"}, ""},
		{"a restore through the agent", walFlags{socket: "/d/run/wal.sock", cluster: "copy", member: "copy-1", from: "demo"}, ""},
		{"direct", walFlags{store: "file:///b", cluster: "demo"}, ""},
		{"direct with a key", walFlags{store: "file:///b", cluster: "demo", keyFile: "/k"}, ""},
		{"neither", walFlags{cluster: "demo"}, "give --socket PATH"},
		{"both", walFlags{socket: "/s", store: "file:///b", cluster: "demo", member: "demo-1"}, "exclude each other"},
		{"no cluster", walFlags{socket: "/s", member: "demo-1"}, "--cluster is required"},
		{"no member", walFlags{socket: "/s", cluster: "demo"}, "--member is required with --socket"},
		{"a key file through the agent", walFlags{socket: "/s", cluster: "demo", member: "demo-1", keyFile: "/k"}, "--key-file goes with --store"},
		{"a member with a store", walFlags{store: "file:///b", cluster: "demo", member: "demo-1"}, "--member and --from go with --socket"},
		{"from with a store", walFlags{store: "file:///b", cluster: "demo", from: "old"}, "--member and --from go with --socket"},
	} {
		err := c.f.check()
		if c.want == "" {
			if err != nil {
				t.Errorf("check(%s) = %v, want nil", c.name, err)
			}
			continue
		}
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &ue) {
			t.Errorf("check(%s) = %v, want a usage error saying %q", c.name, err, c.want)
		}
	}
}
