package migrate

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
)

// tableTrees lists each user table of the summary (userTables) with the
// relations that hold its rows: itself and, recursively, its inheritance
// children and partitions (UNION: a child reached twice counts once, as
// count(*) reads it once). Names are format's %I quoting of the same
// database's catalog, as streamableTables gives them.
const tableTrees = `WITH RECURSIVE top AS (
  SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
), tree (top, rel) AS (
  SELECT oid, oid FROM top
  UNION
  SELECT t.top, i.inhrelid FROM tree t JOIN pg_inherits i ON i.inhparent = t.rel
)
SELECT format('%I.%I', tn.nspname, tc.relname), format('%I.%I', rn.nspname, rc.relname)
FROM tree
JOIN pg_class tc ON tc.oid = tree.top JOIN pg_namespace tn ON tn.oid = tc.relnamespace
JOIN pg_class rc ON rc.oid = tree.rel JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE rc.relkind <> 'p'
ORDER BY 1, 2`

// CountTables counts the rows of every user table of the connected
// database, as count(*) on each would (SumTrees), but scans only the
// relations known lacks: known holds rows already counted, by the
// connected side's names (the COPY commands' tags of a streamed table).
// A table whose relations are all known is not read at all.
func CountTables(ctx context.Context, conn *pgx.Conn, known map[string]int64) (map[string]int64, error) {
	rows, err := conn.Query(ctx, tableTrees)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	var trees []TableTree
	var table, rel string
	_, err = pgx.ForEachRow(rows, []any{&table, &rel}, func() error {
		if len(trees) == 0 || trees[len(trees)-1].Table != table {
			trees = append(trees, TableTree{Table: table})
		}
		trees[len(trees)-1].Relations = append(trees[len(trees)-1].Relations, rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	// A partitioned table without partitions has no relation with rows.
	got := make(map[string]int64, len(known))
	for _, t := range trees {
		for _, r := range t.Relations {
			if _, ok := got[r]; ok {
				continue
			}
			if n, ok := known[r]; ok {
				got[r] = n
				continue
			}
			var n int64
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM ONLY "+r).Scan(&n); err != nil {
				return nil, fmt.Errorf("count rows of %s: %w", r, err)
			}
			got[r] = n
		}
	}
	return SumTrees(trees, got)
}

// analyzeTables lists what a database-wide ANALYZE reaches among user
// relations, biggest first so the longest starts first: tables,
// partitioned tables (their ANALYZE covers their partitions, so those are
// not listed again) and materialized views.
const analyzeTables = `SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY pg_total_relation_size(c.oid) DESC, 1`

// Analyze gathers the planner's statistics for every user table of dst
// in jobs sessions side by side, so the cluster plans well from its first
// query. It runs after the indexes exist, never beside their build: the
// statistics of an expression index come from an ANALYZE after it, and
// ANALYZE and CREATE INDEX lock each other out of a table anyway.
func Analyze(ctx context.Context, dst Conn, jobs int) (int, error) {
	conn, err := dial(ctx, dst, "the cluster")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, analyzeTables)
	if err != nil {
		return 0, fmt.Errorf("list the tables to analyze: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("list the tables to analyze: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan string)
	errs := make(chan error, max(jobs, 1))
	var wg sync.WaitGroup
	for i := range min(max(jobs, 1), len(tables)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conn
			if i > 0 {
				var err error
				if c, err = dial(ctx, dst, "the cluster"); err != nil {
					errs <- err
					cancel()
					return
				}
				defer c.Close(context.Background())
			}
			for t := range work {
				if _, err := c.Exec(ctx, "ANALYZE "+t); err != nil {
					errs <- fmt.Errorf("analyze %s: %w", t, err)
					cancel()
					return
				}
			}
		}()
	}
feed:
	for _, t := range tables {
		select {
		case work <- t:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return len(tables), ctx.Err()
}
