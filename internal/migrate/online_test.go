package migrate

import (
	"strings"
	"testing"
)

func TestCheckOnline(t *testing.T) {
	ok := Replication{WalLevel: "logical", MaxSlots: 10, UsedSlots: 2, MaxSenders: 10, UsedSenders: 2, CanReplicate: true, User: "app"}
	keyed := []TableIdentity{{Table: "public.orders", PrimaryKey: true, Identity: "d"}, {Table: "public.log", Identity: "f"}}
	if err := CheckOnline(ok, keyed, false); err != nil {
		t.Fatalf("CheckOnline(ready source) = %v", err)
	}
	bare := append(keyed, TableIdentity{Table: "public.notes", Identity: "d"}, TableIdentity{Table: "public.keyless", PrimaryKey: true, Identity: "n"})
	for _, tt := range []struct {
		name   string
		r      Replication
		tables []TableIdentity
		full   bool
		want   []string
	}{
		{"replica", Replication{WalLevel: "replica", MaxSlots: 10, MaxSenders: 10, CanReplicate: true}, keyed, false, []string{"set wal_level = logical (it is replica) and restart the source"}},
		{"no room", Replication{WalLevel: "logical", MaxSlots: 4, UsedSlots: 3, MaxSenders: 2, CanReplicate: true}, keyed, false, []string{"max_replication_slots to at least 6 (it is 4, 3 in use", "max_wal_senders to at least 3 (it is 2, 0 in use"}},
		{"no replication", Replication{WalLevel: "logical", MaxSlots: 10, MaxSenders: 10, User: "app"}, keyed, false, []string{`give the role app REPLICATION (ALTER ROLE "app" REPLICATION)`}},
		{"tables without a key", ok, bare, false, []string{"--replica-identity-full", "public.keyless, public.notes"}},
		{"everything at once", Replication{WalLevel: "minimal", User: "x"}, bare, false, []string{"wal_level", "max_replication_slots", "max_wal_senders", "REPLICATION", "public.notes"}},
	} {
		err := CheckOnline(tt.r, tt.tables, tt.full)
		for _, w := range tt.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: CheckOnline = %v, want an error with %q", tt.name, err, w)
			}
		}
	}
	if err := CheckOnline(ok, bare, true); err != nil {
		t.Errorf("tables without a key, full identity: CheckOnline = %v", err)
	}
}

func TestObjectName(t *testing.T) {
	for in, want := range map[string]string{
		"shop":                  "pgfleet_import_shop",
		"My Shop-2":             "pgfleet_import_my_shop_2",
		`x"; DROP TABLE y; --`:  "pgfleet_import_x_drop_table_y_",
		strings.Repeat("a", 80): "pgfleet_import_" + strings.Repeat("a", 48),
	} {
		if got := ObjectName(in); got != want {
			t.Errorf("ObjectName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSummarize(t *testing.T) {
	for _, tt := range []struct {
		name             string
		states           []string
		enabled, running bool
		phase            Phase
		done             int
	}{
		{"copying", []string{"i", "d", "r", "s"}, true, true, PhaseCopying, 2},
		{"streaming", []string{"r", "r"}, true, true, PhaseStreaming, 2},
		{"no tables", nil, true, true, PhaseStreaming, 0},
		{"worker down", []string{"r"}, true, false, PhaseStopped, 1},
		{"disabled", []string{"d"}, false, false, PhaseStopped, 0},
	} {
		p := Summarize(tt.states, tt.enabled, tt.running)
		if p.Phase != tt.phase || p.TablesDone != tt.done || p.Tables != len(tt.states) {
			t.Errorf("%s: Summarize(%v) = %s, %d of %d; want %s, %d", tt.name, tt.states, p.Phase, p.TablesDone, p.Tables, tt.phase, tt.done)
		}
	}
}

func TestReadyToLock(t *testing.T) {
	for _, tt := range []struct {
		name string
		p    Progress
		want bool
		why  string
	}{
		{"caught up", Progress{Tables: 2, TablesDone: 2, Running: true, LagBytes: 100}, true, "lag 100 bytes"},
		{"copying", Progress{Tables: 3, TablesDone: 1, Running: true}, false, "1 of 3 tables"},
		{"no worker", Progress{Tables: 1, TablesDone: 1}, false, "not running"},
		{"behind", Progress{Tables: 1, TablesDone: 1, Running: true, LagBytes: 5 << 20}, false, "lag 5242880 bytes"},
	} {
		ok, why := ReadyToLock(tt.p, 1<<20)
		if ok != tt.want || !strings.Contains(why, tt.why) {
			t.Errorf("%s: ReadyToLock(%+v) = %v, %q; want %v, %q", tt.name, tt.p, ok, why, tt.want, tt.why)
		}
	}
}
