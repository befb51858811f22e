package migrate

import (
	"fmt"
	"sort"
	"strings"
)

// DefaultStreamAbove is the size from which an offline import copies a
// table's rows itself, COPY to COPY between the two servers, instead of
// through pg_dump's files: below it the table's rows are a small part of
// the import's time and pg_restore's handling of every kind of table is
// worth more.
const DefaultStreamAbove = 16 << 20

// minRange is the smallest part of a table one copy session takes: a
// session costs a connection on each side and a scan's start-up.
const minRange = 8 << 20

// TableSize is a table of the source that the import may copy itself.
type TableSize struct {
	Table        string // qualified and quoted, as format('%I.%I') gives it
	Schema, Name string // unquoted, for pg_dump's patterns
	Bytes        int64  // pg_table_size: the heap and its TOAST
	Pages        int64  // blocks of the heap, which ctid ranges divide
}

// CopyTask is one COPY of a table's rows from the source to the cluster:
// the whole table, or the heap pages [From, To) of it (To 0: to its end,
// which takes rows on pages added since the plan too).
type CopyTask struct {
	Table    string
	From, To int64
	Bytes    int64 // about what the task carries, to order the tasks
}

// Where returns the condition that limits a COPY to the task's pages, ""
// for a whole table. PostgreSQL 14 and later answer it with a TID range
// scan, reading only those pages.
func (t CopyTask) Where() string {
	var conds []string
	if t.From > 0 {
		conds = append(conds, fmt.Sprintf("ctid >= '(%d,0)'::tid", t.From))
	}
	if t.To > 0 {
		conds = append(conds, fmt.Sprintf("ctid < '(%d,0)'::tid", t.To))
	}
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// PlanStream decides which tables an offline import copies itself and
// in how many parts. A table of streamAbove bytes or more is copied by
// COPY from the source straight into the cluster, with no file between
// (pg_dump's directory format would write it, compressed, and pg_restore
// read it back); one part per job when the source can scan ctid ranges
// (splitRanges: PostgreSQL 14 or later), each at least minRange, so that
// one big table, often most of a database, keeps every job busy. The
// parts of the biggest tables come first, so that the last part to
// finish is a small one. Smaller tables stay in pg_dump's data.
func PlanStream(tables []TableSize, jobs int, streamAbove int64, splitRanges bool) []CopyTask {
	var tasks []CopyTask
	for _, t := range tables {
		if t.Bytes < streamAbove {
			continue
		}
		parts := int64(1)
		if splitRanges {
			parts = min(int64(max(jobs, 1)), max(t.Bytes/minRange, 1), max(t.Pages, 1))
		}
		for i := range parts {
			c := CopyTask{Table: t.Table, Bytes: t.Bytes / parts}
			if i > 0 {
				c.From = i * t.Pages / parts
			}
			if i < parts-1 {
				c.To = (i + 1) * t.Pages / parts
			}
			tasks = append(tasks, c)
		}
	}
	sort.SliceStable(tasks, func(i, j int) bool { return tasks[i].Bytes > tasks[j].Bytes })
	return tasks
}

// Streamed returns the tables of a plan, once each, in the plan's order.
func Streamed(tasks []CopyTask) []string {
	var out []string
	seen := map[string]bool{}
	for _, t := range tasks {
		if !seen[t.Table] {
			seen[t.Table] = true
			out = append(out, t.Table)
		}
	}
	return out
}

// TablePattern returns the pg_dump pattern that matches exactly the
// table schema.name: each part in double quotes, in which every
// character but the doubled quote stands for itself.
func TablePattern(schema, name string) string {
	q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	return q(schema) + "." + q(name)
}

// RestoreSettings are the settings of pg_restore's sessions (PGOPTIONS),
// for the indexes and constraints it builds after the data: each build
// sorts in memory rather than in temporary files, and a big one shares
// its sort with parallel workers (each needs 32 MB of the budget). The
// budget is per session, so it shrinks as jobs grow.
func RestoreSettings(jobs int) []string {
	mem := max(512/max(jobs, 1), 64)
	return []string{
		fmt.Sprintf("maintenance_work_mem=%dMB", mem),
		"max_parallel_maintenance_workers=2",
	}
}

// firstUserOID is where PostgreSQL starts numbering the objects a
// database makes (FirstNormalObjectId): below it, a type is built in and
// has the same OID on every server.
const firstUserOID = 16384

// BinaryCopy reports whether a table's rows may travel in COPY's binary
// format, which both servers read and write with less work than text:
// only between the same major versions (the binary forms of a type may
// change between them), and only when every column's type is built in on
// both sides, with a binary form; an array or a record names its element
// types by OID in that form, and a type the database made has another
// OID on the other server.
func BinaryCopy(srcVersion, dstVersion int, srcTypes, dstTypes []TypeIO) bool {
	if srcVersion/10000 != dstVersion/10000 || len(srcTypes) != len(dstTypes) || len(srcTypes) == 0 {
		return false
	}
	for i := range srcTypes {
		s, d := srcTypes[i], dstTypes[i]
		if s != d || s.OID >= firstUserOID || !s.Binary || regTypes[s.OID] || regTypes[s.Elem] {
			return false
		}
	}
	return true
}

// TypeIO is a column's type as BinaryCopy needs it: its OID, its
// element type's for an array, and whether it has binary send and
// receive functions.
type TypeIO struct {
	OID, Elem uint32
	Binary    bool
}

// regTypes are the built-in types whose values name a database's own
// objects (regclass, regtype, ...): as text they carry the name, which
// the cluster looks up again; in binary, the source's OID, which means
// another object or none in the cluster.
var regTypes = map[uint32]bool{
	24: true, 2202: true, 2203: true, 2204: true, 2205: true, 2206: true, // regproc, regprocedure, regoper, regoperator, regclass, regtype
	3734: true, 3769: true, 4089: true, 4096: true, 4191: true, // regconfig, regdictionary, regnamespace, regrole, regcollation
}
