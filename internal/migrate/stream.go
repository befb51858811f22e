package migrate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// streamableTables lists the source's tables whose rows the import may
// copy itself: ordinary tables (partitions too, each on its own), logged
// or unlogged, outside the system schemas, not an extension's (pg_dump
// leaves those to the extension), with a column to copy.
const streamableTables = `SELECT format('%I.%I', n.nspname, c.relname), n.nspname, c.relname,
  pg_table_size(c.oid), pg_relation_size(c.oid) / current_setting('block_size')::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
ORDER BY 1`

// copyColumns lists a table's columns that COPY carries: not dropped,
// not generated (the cluster computes those itself), in order, with
// their types (BinaryCopy).
const copyColumns = `SELECT format('%I', a.attname), a.atttypid, CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0 END,
  t.typsend <> 0 AND t.typreceive <> 0
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum`

// targetTable names a table, given as a value, as the cluster's catalog
// does, qualified and quoted.
const targetTable = `SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass`

// snapshot is a transaction on the source whose snapshot pg_dump and the
// copy sessions share, so that every table is read as of one moment. It
// holds an ACCESS SHARE lock on the tables the import streams, so none is
// dropped or altered meanwhile, until it ends.
type snapshot struct {
	conn       *pgx.Conn
	id         string
	versionNum int
}

func openSnapshot(ctx context.Context, src Conn) (*snapshot, error) {
	conn, err := dial(ctx, src, "the source")
	if err != nil {
		return nil, err
	}
	s := &snapshot{conn: conn}
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		s.close()
		return nil, fmt.Errorf("begin the source's snapshot: %w", err)
	}
	err = conn.QueryRow(ctx, "SELECT pg_export_snapshot(), current_setting('server_version_num')::int").Scan(&s.id, &s.versionNum)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("export the source's snapshot: %w", err)
	}
	return s, nil
}

// tables lists the tables the import may stream, as of the snapshot.
func (s *snapshot) tables(ctx context.Context) ([]TableSize, error) {
	rows, err := s.conn.Query(ctx, streamableTables)
	if err != nil {
		return nil, fmt.Errorf("list the source's tables: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (TableSize, error) {
		var t TableSize
		err := r.Scan(&t.Table, &t.Schema, &t.Name, &t.Bytes, &t.Pages)
		return t, err
	})
}

// lock takes ACCESS SHARE on the tables, as pg_dump does on what it dumps.
func (s *snapshot) lock(ctx context.Context, tables []string) error {
	for _, t := range tables {
		if _, err := s.conn.Exec(ctx, "LOCK TABLE "+t+" IN ACCESS SHARE MODE"); err != nil {
			return fmt.Errorf("lock %s on the source: %w", t, err)
		}
	}
	return nil
}

func (s *snapshot) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.conn.Close(ctx) // the read-only transaction ends with the session
}

// dial connects as a Conn says, giving up within 5 s.
func dial(ctx context.Context, c Conn, what string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(c.URL)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if c.Password != "" {
		cfg.Password = c.Password
	}
	cfg.ConnectTimeout = 5 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", what, err)
	}
	return conn, nil
}

// columns returns the columns COPY carries of table, as the connected
// side's catalog names them, and their types.
func columns(ctx context.Context, conn *pgx.Conn, table string) (string, []TypeIO, error) {
	rows, err := conn.Query(ctx, copyColumns, table)
	if err != nil {
		return "", nil, err
	}
	defer rows.Close()
	var names []string
	var types []TypeIO
	for rows.Next() {
		var n string
		var t TypeIO
		if err := rows.Scan(&n, &t.OID, &t.Elem, &t.Binary); err != nil {
			return "", nil, err
		}
		names = append(names, n)
		types = append(types, t)
	}
	return strings.Join(names, ", "), types, rows.Err()
}

// streamOptions says how stream runs a plan.
type streamOptions struct {
	Jobs     int
	Snapshot string
	// Table is told of each table whose first part starts.
	Table func(name string)
}

// stream runs the plan's COPY tasks with Jobs sessions on each side, the
// source's in the snapshot. Each task is one COPY ... TO STDOUT on the
// source piped into one COPY ... FROM STDIN in the cluster; the columns
// come from each side's own catalog and must be the same, so a name the
// source sent is never run in the cluster. The cluster's tables have no
// indexes or constraints yet (pg_restore's post-data section builds them
// after), so the parts of one table load side by side.
// streamCounts is what stream copied, per table, as the COPY commands' tags
// say: Read by the source's names, Loaded by the cluster's. They count
// the rows of each part exactly, in the import's snapshot.
type streamCounts struct {
	Read, Loaded map[string]int64
}

func stream(ctx context.Context, src, dst Conn, tasks []CopyTask, o streamOptions) (streamCounts, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		res      = streamCounts{Read: map[string]int64{}, Loaded: map[string]int64{}}
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	work := make(chan CopyTask)
	for range min(max(o.Jobs, 1), len(tasks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := openCopySession(ctx, src, dst, o.Snapshot)
			if err != nil {
				fail(err)
				return
			}
			defer s.close()
			for t := range work {
				read, loaded, dstTable, err := s.copy(ctx, t)
				if err != nil {
					fail(err)
					return
				}
				mu.Lock()
				res.Read[t.Table] += read
				res.Loaded[dstTable] += loaded
				mu.Unlock()
			}
		}()
	}
	started := map[string]bool{}
feed:
	for _, t := range tasks {
		select {
		case work <- t:
		case <-ctx.Done():
			break feed
		}
		if !started[t.Table] && o.Table != nil {
			started[t.Table] = true
			o.Table(t.Table)
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return res, firstErr
}

// copyBuffer is how much of a COPY's rows go across in one write.
const copyBuffer = 256 << 10

// copySession is one source session in the import's snapshot and one
// cluster session.
type copySession struct {
	src, dst               *pgx.Conn
	srcVersion, dstVersion int
	tables                 map[string]tableCopy
}

// tableCopy is how a session copies one table.
type tableCopy struct {
	dstTable         string // the table as the cluster's catalog names it
	srcCols, dstCols string // as each side's catalog names them
	format           string // COPY's FORMAT: text, or binary (BinaryCopy)
}

func openCopySession(ctx context.Context, src, dst Conn, snapshotID string) (*copySession, error) {
	s := &copySession{tables: map[string]tableCopy{}}
	var err error
	if s.src, err = dial(ctx, src, "the source"); err != nil {
		return nil, err
	}
	if s.dst, err = dial(ctx, dst, "the cluster"); err != nil {
		s.close()
		return nil, err
	}
	for _, q := range []string{
		"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
		"SET TRANSACTION SNAPSHOT " + quoteLiteral(snapshotID),
		// As pg_dump: all rows or an error, never a policy's subset.
		"SET LOCAL row_security = off",
		"SET LOCAL statement_timeout = 0",
	} {
		if _, err := s.src.Exec(ctx, q); err != nil {
			s.close()
			return nil, fmt.Errorf("join the source's snapshot: %w", err)
		}
	}
	// Rows as text read back as what they were, whatever either server's
	// defaults: dates in ISO order, intervals in one style, floats with
	// every digit (an older server's default drops some), as pg_dump and
	// pg_restore set them. No name is looked up on a search path.
	for _, side := range []struct {
		conn *pgx.Conn
		what string
		q    string
	}{
		{s.src, "the source", "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; SET search_path = ''"},
		{s.dst, "the cluster", "SET DateStyle = ISO; SET IntervalStyle = postgres; SET search_path = ''; SET statement_timeout = 0"},
	} {
		if _, err := side.conn.Exec(ctx, side.q); err != nil {
			s.close()
			return nil, fmt.Errorf("set up a session on %s: %w", side.what, err)
		}
	}
	for _, side := range []struct {
		conn *pgx.Conn
		v    *int
	}{{s.src, &s.srcVersion}, {s.dst, &s.dstVersion}} {
		if err := side.conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(side.v); err != nil {
			s.close()
			return nil, fmt.Errorf("read the server's version: %w", err)
		}
	}
	return s, nil
}

func (s *copySession) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.src != nil {
		s.src.Close(ctx)
	}
	if s.dst != nil {
		s.dst.Close(ctx)
	}
}

// copy runs one task and returns the rows the source's COPY sent and the
// cluster's COPY took, by their command tags, and the table's name in the
// cluster.
func (s *copySession) copy(ctx context.Context, t CopyTask) (read, loaded int64, dstTable string, err error) {
	tc, ok := s.tables[t.Table]
	if !ok {
		var srcCols, dstCols string
		var srcTypes, dstTypes []TypeIO
		srcCols, srcTypes, err = columns(ctx, s.src, t.Table)
		if err != nil {
			return 0, 0, "", fmt.Errorf("read the columns of %s on the source: %w", t.Table, err)
		}
		dstCols, dstTypes, err = columns(ctx, s.dst, t.Table)
		if err != nil {
			return 0, 0, "", fmt.Errorf("read the columns of %s in the cluster: %w", t.Table, err)
		}
		if srcCols != dstCols {
			return 0, 0, "", fmt.Errorf("table %s has columns (%s) on the source and (%s) in the cluster", t.Table, srcCols, dstCols)
		}
		// The cluster's statement names the table as its own catalog
		// does: the name the source sent is only looked up, as a value.
		var name string
		if err := s.dst.QueryRow(ctx, targetTable, t.Table).Scan(&name); err != nil {
			return 0, 0, "", fmt.Errorf("find %s in the cluster: %w", t.Table, err)
		}
		tc = tableCopy{dstTable: name, srcCols: srcCols, dstCols: dstCols, format: "text"}
		if BinaryCopy(s.srcVersion, s.dstVersion, srcTypes, dstTypes) {
			tc.format = "binary"
		}
		s.tables[t.Table] = tc
	}
	pr, pw := io.Pipe()
	srcErr := make(chan error, 1)
	go func() {
		// The source sends a message per row; the pipe hands over and
		// the cluster's side sends what one read returns: batch the rows
		// into big writes, or each row costs a hand-over between
		// goroutines and a network write (a TLS record) of its own.
		bw := bufio.NewWriterSize(pw, copyBuffer)
		srcTag, err := s.src.PgConn().CopyTo(ctx, bw, "COPY (SELECT "+tc.srcCols+" FROM ONLY "+t.Table+t.Where()+") TO STDOUT (FORMAT "+tc.format+")")
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err) // nil: the reader sees the end of the data
		read = srcTag.RowsAffected()
		srcErr <- err
	}()
	tag, err := s.dst.PgConn().CopyFrom(ctx, pr, "COPY "+tc.dstTable+" ("+tc.dstCols+") FROM STDIN (FORMAT "+tc.format+")")
	pr.CloseWithError(errors.New("the cluster's COPY ended")) // unblocks the source's side if it is still writing
	if serr := <-srcErr; serr != nil {
		return 0, 0, "", fmt.Errorf("copy %s from the source: %w", t.Table, serr)
	}
	if err != nil {
		return 0, 0, "", fmt.Errorf("copy %s into the cluster: %w", t.Table, err)
	}
	return read, tag.RowsAffected(), tc.dstTable, nil
}
