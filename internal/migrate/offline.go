package migrate

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/pgfleet/pgfleet/internal/fleet"
)

// CopyOptions says how Copy moves a database.
type CopyOptions struct {
	Jobs    int
	Clean   bool // drop what the source also has in the target before loading
	NoOwner bool // leave owners and privileges out (the roles did not come along)
	// StreamAbove is the size from which a table's rows are copied COPY
	// to COPY (PlanStream); 0 means DefaultStreamAbove.
	StreamAbove int64
	// Table is told of each table whose rows start loading, with how
	// many tables have rows to load.
	Table func(name string, total int)
	// Step is told of each step done, in a line for the user.
	Step func(line string)
}

// CopyResult is what Copy learnt of the rows it copied.
type CopyResult struct {
	// Source is every user table's rows on the source (CountTables), read
	// in the copy's own snapshot: the streamed tables' from their COPY
	// commands, the others' counted. Nil when the copy had no snapshot
	// of its own (Clean): then only a count of the source can tell.
	Source map[string]int64
	// Loaded is the rows the cluster's COPY commands took into each
	// streamed table, by the cluster's names: CountTables's known rows
	// in the cluster.
	Loaded map[string]int64
}

// Copy copies the database src into the empty database dst: its schema
// and small tables through pg_dump's directory format and pg_restore,
// its big tables (PlanStream) COPY to COPY in parts side by side, every
// table read in one snapshot of the source. The indexes and constraints
// come last, built with RestoreSettings.
//
// With Clean, which must first drop what the target holds in the order
// of its dependencies, everything goes through pg_dump and pg_restore:
// only pg_restore knows that order.
func (t Tool) Copy(ctx context.Context, src, dst Conn, o CopyOptions) (CopyResult, error) {
	step := func(format string, a ...any) {
		if o.Step != nil {
			o.Step(fmt.Sprintf(format, a...))
		}
	}
	dir := filepath.Join(t.Dir, "dump")
	settings := RestoreSettings(o.Jobs)
	if o.Clean {
		t0 := time.Now()
		if err := t.DumpWith(ctx, src, dir, DumpOptions{Jobs: o.Jobs}); err != nil {
			return CopyResult{}, err
		}
		total, err := t.TableData(ctx, dir)
		if err != nil {
			return CopyResult{}, err
		}
		step("dumped %d table(s) in %s", total, since(t0))
		t0 = time.Now()
		err = t.Restore(ctx, dst, dir, RestoreOptions{
			Jobs: o.Jobs, Clean: true, NoOwner: o.NoOwner, Settings: settings,
			Table: func(name string) { o.tell(name, total) },
		})
		if err != nil {
			return CopyResult{}, err
		}
		step("restored in %s", since(t0))
		return CopyResult{}, nil
	}

	var res CopyResult
	var copied streamCounts
	t0 := time.Now()
	snap, err := openSnapshot(ctx, src)
	if err != nil {
		return CopyResult{}, err
	}
	defer snap.close()
	tables, err := snap.tables(ctx)
	if err != nil {
		return CopyResult{}, err
	}
	above := o.StreamAbove
	if above <= 0 {
		above = DefaultStreamAbove
	}
	tasks := PlanStream(tables, o.Jobs, above, snap.versionNum >= 140000)
	streamed := Streamed(tasks)
	if err := snap.lock(ctx, streamed); err != nil {
		return CopyResult{}, err
	}
	var noData []string
	var streamedBytes int64
	for _, tb := range tables {
		for _, s := range streamed {
			if s == tb.Table {
				noData = append(noData, TablePattern(tb.Schema, tb.Name))
				streamedBytes += tb.Bytes
			}
		}
	}
	if err := t.DumpWith(ctx, src, dir, DumpOptions{Jobs: o.Jobs, Snapshot: snap.id, NoData: noData}); err != nil {
		return CopyResult{}, err
	}
	dumped, err := t.TableData(ctx, dir)
	if err != nil {
		return CopyResult{}, err
	}
	total := dumped + len(streamed)
	step("dumped the schema and %d table(s) in %s", dumped, since(t0))

	restore := func(section string, jobs int, table func(string)) error {
		return t.Restore(ctx, dst, dir, RestoreOptions{Jobs: jobs, NoOwner: o.NoOwner, Section: section, Settings: settings, Table: table})
	}
	t0 = time.Now()
	if err := restore("pre-data", 1, nil); err != nil {
		return CopyResult{}, err
	}
	if len(tasks) > 0 {
		copied, err = stream(ctx, src, dst, tasks, streamOptions{
			Jobs: o.Jobs, Snapshot: snap.id,
			Table: func(name string) { o.tell(name, total) },
		})
		if err != nil {
			return CopyResult{}, err
		}
		res.Loaded = copied.Loaded
		var rows int64
		for _, n := range copied.Read {
			rows += n
		}
		step("copied %d big table(s) (%s, %d row(s)) in %d part(s) by %d session(s) in %s",
			len(streamed), fleet.FormatBytes(streamedBytes), rows, len(tasks), min(o.Jobs, len(tasks)), since(t0))
		t0 = time.Now()
	}
	if err := restore("data", o.Jobs, func(name string) { o.tell(name, total) }); err != nil {
		return CopyResult{}, err
	}
	step("restored the other tables in %s", since(t0))
	// Every table is read: count the source's rows in the same snapshot
	// (only the tables not streamed are scanned), then the snapshot and
	// its locks may go.
	t0 = time.Now()
	if res.Source, err = CountTables(ctx, snap.conn, copied.Read); err != nil {
		return CopyResult{}, fmt.Errorf("count the source's rows: %w", err)
	}
	step("counted the source's rows in its snapshot in %s", since(t0))
	snap.close()
	t0 = time.Now()
	if err := restore("post-data", o.Jobs, nil); err != nil {
		return CopyResult{}, err
	}
	step("built the indexes and constraints in %s", since(t0))
	return res, nil
}

func (o CopyOptions) tell(name string, total int) {
	if o.Table != nil {
		o.Table(name, total)
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }
