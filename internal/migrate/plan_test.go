package migrate

import (
	"reflect"
	"strings"
	"testing"
)

func TestPlanStream(t *testing.T) {
	const mb = 1 << 20
	big := TableSize{Table: "public.accounts", Bytes: 640 * mb, Pages: 81968}
	mid := TableSize{Table: `public."Order Lines"`, Bytes: 20 * mb, Pages: 2560}
	small := TableSize{Table: "public.tellers", Bytes: 40 << 10, Pages: 5}
	for _, tt := range []struct {
		name   string
		tables []TableSize
		jobs   int
		split  bool
		want   []CopyTask
	}{
		{"small tables stay in the dump", []TableSize{small}, 2, true, nil},
		{"a big table in one part per job", []TableSize{small, big}, 2, true, []CopyTask{
			{Table: "public.accounts", From: 0, To: 40984, Bytes: 320 * mb},
			{Table: "public.accounts", From: 40984, To: 0, Bytes: 320 * mb},
		}},
		{"no ctid ranges before PostgreSQL 14: whole tables", []TableSize{big, mid}, 4, false, []CopyTask{
			{Table: "public.accounts", Bytes: 640 * mb},
			{Table: `public."Order Lines"`, Bytes: 20 * mb},
		}},
		{"parts of at least 8 MB", []TableSize{mid}, 4, true, []CopyTask{
			{Table: `public."Order Lines"`, From: 0, To: 1280, Bytes: 10 * mb},
			{Table: `public."Order Lines"`, From: 1280, To: 0, Bytes: 10 * mb},
		}},
		{"biggest parts first", []TableSize{mid, big}, 3, true, []CopyTask{
			{Table: "public.accounts", From: 0, To: 27322, Bytes: 640 * mb / 3},
			{Table: "public.accounts", From: 27322, To: 54645, Bytes: 640 * mb / 3},
			{Table: "public.accounts", From: 54645, To: 0, Bytes: 640 * mb / 3},
			{Table: `public."Order Lines"`, From: 0, To: 1280, Bytes: 10 * mb},
			{Table: `public."Order Lines"`, From: 1280, To: 0, Bytes: 10 * mb},
		}},
		{"one job", []TableSize{big}, 1, true, []CopyTask{{Table: "public.accounts", Bytes: 640 * mb}}},
	} {
		got := PlanStream(tt.tables, tt.jobs, DefaultStreamAbove, tt.split)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: PlanStream = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

// TestPlanStreamCoversEveryPage: the parts of a table meet end to end,
// the first from its start and the last to its end, whatever the sizes.
func TestPlanStreamCoversEveryPage(t *testing.T) {
	for _, pages := range []int64{1, 2, 3, 7, 1000, 81968} {
		for jobs := 1; jobs <= 8; jobs++ {
			tasks := PlanStream([]TableSize{{Table: "t", Bytes: 1 << 40, Pages: pages}}, jobs, 1, true)
			var next int64
			for i, c := range tasks {
				if c.From != next {
					t.Fatalf("PlanStream(%d pages, %d jobs): part %d starts at %d, want %d: %+v", pages, jobs, i, c.From, next, tasks)
				}
				if last := i == len(tasks)-1; last != (c.To == 0) {
					t.Fatalf("PlanStream(%d pages, %d jobs): part %d ends at %d: %+v", pages, jobs, i, c.To, tasks)
				}
				if c.To != 0 && c.To <= c.From {
					t.Fatalf("PlanStream(%d pages, %d jobs): empty part %d: %+v", pages, jobs, i, tasks)
				}
				next = c.To
			}
		}
	}
}

func TestCopyTaskWhere(t *testing.T) {
	for _, tt := range []struct {
		task CopyTask
		want string
	}{
		{CopyTask{Table: "t"}, ""},
		{CopyTask{Table: "t", To: 100}, ` WHERE ctid < '(100,0)'::tid`},
		{CopyTask{Table: "t", From: 100, To: 200}, ` WHERE ctid >= '(100,0)'::tid AND ctid < '(200,0)'::tid`},
		{CopyTask{Table: "t", From: 200}, ` WHERE ctid >= '(200,0)'::tid`},
	} {
		if got := tt.task.Where(); got != tt.want {
			t.Errorf("%+v.Where() = %q, want %q", tt.task, got, tt.want)
		}
	}
}

func TestTablePattern(t *testing.T) {
	for _, tt := range []struct{ schema, name, want string }{
		{"public", "accounts", `"public"."accounts"`},
		{"Sales", `Order "Lines"*`, `"Sales"."Order ""Lines""*"`},
	} {
		if got := TablePattern(tt.schema, tt.name); got != tt.want {
			t.Errorf("TablePattern(%q, %q) = %s, want %s", tt.schema, tt.name, got, tt.want)
		}
	}
	if got := strings.Join(RestoreSettings(2), " "); got != "maintenance_work_mem=256MB max_parallel_maintenance_workers=2" {
		t.Errorf("RestoreSettings(2) = %s", got)
	}
	if got := RestoreSettings(32)[0]; got != "maintenance_work_mem=64MB" {
		t.Errorf("RestoreSettings(32) = %s, want at least 64MB a session", got)
	}
}

func TestBinaryCopy(t *testing.T) {
	ints := []TypeIO{{OID: 23, Binary: true}, {OID: 1042, Binary: true}}
	for _, tt := range []struct {
		name     string
		src, dst int
		st, dt   []TypeIO
		want     bool
	}{
		{"built-in types, same major", 150004, 150010, ints, ints, true},
		{"another major", 140010, 150004, ints, ints, false},
		{"a type of the database's own", 150004, 150004, []TypeIO{{OID: 23, Binary: true}, {OID: 16390, Binary: true}}, []TypeIO{{OID: 23, Binary: true}, {OID: 16390, Binary: true}}, false},
		{"a type without a binary form", 150004, 150004, []TypeIO{{OID: 23, Binary: true}, {OID: 1042}}, ints, false},
		{"types differ", 150004, 150004, ints, []TypeIO{{OID: 23, Binary: true}, {OID: 25, Binary: true}}, false},
		{"columns differ", 150004, 150004, ints, ints[:1], false},
		{"regclass names a table by OID in binary", 150004, 150004, []TypeIO{{OID: 2205, Binary: true}}, []TypeIO{{OID: 2205, Binary: true}}, false},
		{"an array of regtype", 150004, 150004, []TypeIO{{OID: 2211, Elem: 2206, Binary: true}}, []TypeIO{{OID: 2211, Elem: 2206, Binary: true}}, false},
		{"an array of int", 150004, 150004, []TypeIO{{OID: 1007, Elem: 23, Binary: true}}, []TypeIO{{OID: 1007, Elem: 23, Binary: true}}, true},
	} {
		if got := BinaryCopy(tt.src, tt.dst, tt.st, tt.dt); got != tt.want {
			t.Errorf("%s: BinaryCopy = %v, want %v", tt.name, got, tt.want)
		}
	}
}
