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

// Copy copies the database src into the empty database dst: its schema
// and small tables through pg_dump's directory format and pg_restore,
// its big tables (PlanStream) COPY to COPY in parts side by side, every
// table read in one snapshot of the source. The indexes and constraints
// come last, built with RestoreSettings.
//
// With Clean, which must first drop what the target holds in the order
// of its dependencies, everything goes through pg_dump and pg_restore:
// only pg_restore knows that order.
func (t Tool) Copy(ctx context.Context, src, dst Conn, o CopyOptions) error {
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
			return err
		}
		total, err := t.TableData(ctx, dir)
		if err != nil {
			return err
		}
		step("dumped %d table(s) in %s", total, since(t0))
		t0 = time.Now()
		err = t.Restore(ctx, dst, dir, RestoreOptions{
			Jobs: o.Jobs, Clean: true, NoOwner: o.NoOwner, Settings: settings,
			Table: func(name string) { o.tell(name, total) },
		})
		if err != nil {
			return err
		}
		step("restored in %s", since(t0))
		return nil
	}

	t0 := time.Now()
	snap, err := openSnapshot(ctx, src)
	if err != nil {
		return err
	}
	defer snap.close()
	tables, err := snap.tables(ctx)
	if err != nil {
		return err
	}
	above := o.StreamAbove
	if above <= 0 {
		above = DefaultStreamAbove
	}
	tasks := PlanStream(tables, o.Jobs, above, snap.versionNum >= 140000)
	streamed := Streamed(tasks)
	if err := snap.lock(ctx, streamed); err != nil {
		return err
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
		return err
	}
	dumped, err := t.TableData(ctx, dir)
	if err != nil {
		return err
	}
	total := dumped + len(streamed)
	step("dumped the schema and %d table(s) in %s", dumped, since(t0))

	restore := func(section string, jobs int, table func(string)) error {
		return t.Restore(ctx, dst, dir, RestoreOptions{Jobs: jobs, NoOwner: o.NoOwner, Section: section, Settings: settings, Table: table})
	}
	t0 = time.Now()
	if err := restore("pre-data", 1, nil); err != nil {
		return err
	}
	if len(tasks) > 0 {
		rows, err := stream(ctx, src, dst, tasks, streamOptions{
			Jobs: o.Jobs, Snapshot: snap.id,
			Table: func(name string) { o.tell(name, total) },
		})
		if err != nil {
			return err
		}
		step("copied %d big table(s) (%s, %d row(s)) in %d part(s) by %d session(s) in %s",
			len(streamed), fleet.FormatBytes(streamedBytes), rows, len(tasks), min(o.Jobs, len(tasks)), since(t0))
		t0 = time.Now()
	}
	if err := restore("data", o.Jobs, func(name string) { o.tell(name, total) }); err != nil {
		return err
	}
	// Every table is read: the snapshot and its locks may go.
	snap.close()
	if err := restore("post-data", o.Jobs, nil); err != nil {
		return err
	}
	step("restored the other tables, indexes and constraints in %s", since(t0))
	return nil
}

func (o CopyOptions) tell(name string, total int) {
	if o.Table != nil {
		o.Table(name, total)
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }
