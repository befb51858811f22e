package backup

import "github.com/pgfleet/pgfleet/internal/postgres"

// LSN is a PostgreSQL WAL location; manifests write it as PostgreSQL does,
// "16/B374D848".
type LSN = postgres.LSN

// ParseLSN parses an LSN written as PostgreSQL writes it.
func ParseLSN(s string) (LSN, error) { return postgres.ParseLSN(s) }
