package backup

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL WAL location (log sequence number). It is written and
// parsed in PostgreSQL's own form, "16/B374D848": the high and the low 32 bits
// in hexadecimal.
type LSN uint64

// ParseLSN parses an LSN written as PostgreSQL writes it.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("LSN %q: want the form X/Y, e.g. 0/3000060", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: want the form X/Y, e.g. 0/3000060", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: want the form X/Y, e.g. 0/3000060", s)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// MarshalText writes l as PostgreSQL does, so manifests read like psql output.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses PostgreSQL's form.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}
