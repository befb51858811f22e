package chaos

import (
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ack := func(id int64, client, member string, tl int64, start, end int) Op {
		return Op{ID: id, Client: client, Member: member, Timeline: tl, Start: at(start), End: at(end), Outcome: Acked}
	}
	all := func(ops ...Op) map[int64]bool {
		m := map[int64]bool{}
		for _, op := range ops {
			m[op.ID] = true
		}
		return m
	}
	settled := []Fault{{Kind: "kill-postmaster", Target: "db-1", Start: at(100), Healed: at(100), Settled: at(1500)}}
	tests := []struct {
		name  string
		h     History
		finds []string // kinds of the findings, in order
	}{
		{
			name: "clean failover",
			h: History{Sync: true, Faults: settled,
				Ops:   []Op{ack(1, "proxy:h1", "db-1", 1, 0, 10), ack(2, "proxy:h1", "db-2", 2, 1000, 1010)},
				Final: map[int64]bool{1: true, 2: true}},
		},
		{
			name: "sync mode loses an acknowledged id",
			h: History{Sync: true, Faults: settled,
				Ops:   []Op{ack(1, "proxy:h1", "db-1", 1, 0, 10), ack(2, "proxy:h1", "db-2", 2, 1000, 1010)},
				Final: map[int64]bool{2: true}},
			finds: []string{"lost"},
		},
		{
			name: "async loss is counted, not a finding",
			h: History{Faults: settled,
				Ops:   []Op{ack(1, "proxy:h1", "db-1", 1, 0, 200), ack(2, "proxy:h1", "db-2", 2, 1000, 1010)},
				Final: map[int64]bool{2: true}},
		},
		{
			name: "failed and unknown ids need not survive",
			h: History{Sync: true, Faults: settled,
				Ops:   []Op{{ID: 1, Outcome: Failed}, {ID: 2, Outcome: Unknown}, ack(3, "url", "db-2", 2, 1000, 1010)},
				Final: map[int64]bool{3: true}},
		},
		{
			name: "two members on one timeline",
			h: History{Faults: settled,
				Ops: []Op{ack(1, "direct:db-1", "db-1", 2, 0, 10), ack(2, "direct:db-2", "db-2", 2, 20, 30)}},
			finds: []string{"split-brain"},
		},
		{
			name: "old primary acknowledges after the new one took writes",
			h: History{Faults: settled,
				Ops: []Op{ack(1, "proxy:h1", "db-2", 2, 1000, 1010), ack(2, "direct:db-1", "db-1", 1, 1100, 1120)}},
			finds: []string{"stale-timeline"},
		},
		{
			name: "old primary's write that started before is concurrent, not stale",
			h: History{Faults: settled,
				Ops: []Op{ack(1, "proxy:h1", "db-2", 2, 1000, 1010), ack(2, "direct:db-1", "db-1", 1, 900, 1050)}},
		},
		{
			name: "a fault that never settled",
			h: History{Faults: []Fault{{Kind: "partition", Target: "h1", Start: at(0), Healed: at(5000)}},
				Ops: []Op{ack(1, "proxy:h1", "db-1", 1, 0, 10)}},
			finds: []string{"unsettled"},
		},
		{
			name:  "members disagree after the last heal",
			h:     History{Divergent: []string{"db-3 has 10 rows, the primary 12"}},
			finds: []string{"diverged"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.h.Final == nil {
				tt.h.Final = all(tt.h.Ops...)
			}
			r := Check(tt.h)
			var got []string
			for _, f := range r.Findings {
				got = append(got, f.Kind)
			}
			if strings.Join(got, ",") != strings.Join(tt.finds, ",") {
				t.Fatalf("Check() findings = %v, want %v: %+v", got, tt.finds, r.Findings)
			}
		})
	}
}

func TestCheckStats(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := History{
		Faults: []Fault{{Kind: "stop-agent", Target: "h1", Start: at(1000), Healed: at(4000), Settled: at(6000)}},
		Ops: []Op{
			{ID: 1, Client: "proxy:h1", Outcome: Acked, Member: "db-1", Timeline: 1, End: at(900)},
			{ID: 2, Client: "proxy:h1", Outcome: Acked, Member: "db-1", Timeline: 1, End: at(1100)}, // lost
			{ID: 3, Client: "direct:db-2", Outcome: Acked, Member: "db-2", Timeline: 2, Start: at(3000), End: at(3500)},
			{ID: 4, Client: "proxy:h2", Outcome: Acked, Member: "db-2", Timeline: 2, End: at(4100)},
		},
		Final: map[int64]bool{1: true, 3: true, 4: true},
	}
	r := Check(h)
	s := r.ByKind["stop-agent"]
	if s == nil || s.Faults != 1 || s.Settled != 1 || s.Lost != 1 {
		t.Fatalf("ByKind[stop-agent] = %+v, want 1 fault, settled, 1 lost", s)
	}
	// Direct writes do not count as available: the gap is 1100 -> 4100.
	if len(s.Unavailable) != 1 || s.Unavailable[0] != 3*time.Second {
		t.Fatalf("Unavailable = %v, want [3s]", s.Unavailable)
	}
	if len(s.Settle) != 1 || s.Settle[0] != 2*time.Second {
		t.Fatalf("Settle = %v, want [2s]", s.Settle)
	}
	if !r.OK() || r.Acked != 4 || len(r.Lost) != 1 {
		t.Fatalf("Check() = acked %d lost %v findings %v; want 4 acked, 1 lost, no finding (async)", r.Acked, r.Lost, r.Findings)
	}
}
