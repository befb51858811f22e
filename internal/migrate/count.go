package migrate

import (
	"context"
	"fmt"

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
