package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// LSN is a WAL position (pg_lsn), comparable with < to tell which server is
// further ahead.
type LSN uint64

// ParseLSN parses PostgreSQL's text form of an LSN, "16/B374D848": the high
// and low 32 bits in hexadecimal.
func ParseLSN(s string) (LSN, error) {
	bad := fmt.Errorf("LSN %q: want the form X/Y, e.g. 0/3000060", s)
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, bad
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, bad
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, bad
	}
	return LSN(h<<32 | l), nil
}

// String formats l as PostgreSQL does, "16/B374D848".
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l))
}

// MarshalText writes l as PostgreSQL does, so backup manifests read like
// psql output.
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

// Status is what a supervisor publishes each second.
type Status struct {
	InRecovery bool
	Timeline   int64
	WriteLSN   LSN    // primary: pg_current_wal_lsn()
	ReceiveLSN LSN    // standby: pg_last_wal_receive_lsn() (0 if null)
	ReplayLSN  LSN    // standby: pg_last_wal_replay_lsn(); primary: same as WriteLSN
	Streaming  bool   // standby: pg_stat_wal_receiver.status = 'streaming'
	Upstream   string // standby: sender_host from pg_stat_wal_receiver
}

// QueryStatus reads conn's server role, timeline and WAL positions.
//
// The timeline comes from where it is current: on a primary the WAL file name
// of the insert position (pg_control_checkpoint() still shows the old
// timeline until the first checkpoint after a promotion), on a standby the
// timeline the WAL receiver is receiving. pg_control_checkpoint() is only the
// fallback, e.g. for a standby that is not streaming.
func QueryStatus(ctx context.Context, conn *pgx.Conn) (Status, error) {
	var st Status
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&st.InRecovery); err != nil {
		return Status{}, fmt.Errorf("query status: %w", err)
	}
	var err error
	if st.InRecovery {
		err = queryStandby(ctx, conn, &st)
	} else {
		err = queryPrimary(ctx, conn, &st)
	}
	if err != nil {
		return Status{}, fmt.Errorf("query status: %w", err)
	}
	return st, nil
}

func queryPrimary(ctx context.Context, conn *pgx.Conn, st *Status) error {
	var lsn, walfile string
	var cpTLI int64
	err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn()),
		(SELECT timeline_id FROM pg_control_checkpoint())`).Scan(&lsn, &walfile, &cpTLI)
	if err != nil {
		return err
	}
	if st.WriteLSN, err = ParseLSN(lsn); err != nil {
		return err
	}
	st.ReplayLSN = st.WriteLSN
	st.Timeline = cpTLI
	if len(walfile) >= 8 {
		if tli, err := strconv.ParseInt(walfile[:8], 16, 64); err == nil && tli > 0 {
			st.Timeline = tli
		}
	}
	return nil
}

func queryStandby(ctx context.Context, conn *pgx.Conn, st *Status) error {
	var receive, replay, status, sender *string
	var receivedTLI *int64
	var cpTLI int64
	// The LEFT JOIN yields one row even when no WAL receiver runs.
	err := conn.QueryRow(ctx, `SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
			r.status, r.received_tli, r.sender_host,
			(SELECT timeline_id FROM pg_control_checkpoint())
		FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true`).
		Scan(&receive, &replay, &status, &receivedTLI, &sender, &cpTLI)
	if err != nil {
		return err
	}
	if receive != nil {
		if st.ReceiveLSN, err = ParseLSN(*receive); err != nil {
			return err
		}
	}
	if replay != nil {
		if st.ReplayLSN, err = ParseLSN(*replay); err != nil {
			return err
		}
	}
	st.Streaming = status != nil && *status == "streaming"
	if sender != nil {
		st.Upstream = *sender
	}
	st.Timeline = cpTLI
	if receivedTLI != nil && *receivedTLI > 0 {
		st.Timeline = *receivedTLI
	}
	return nil
}

// EnsureRole makes a LOGIN role name with password exist, with REPLICATION
// when replication is true, creating or altering it as needed; it changes
// nothing when the role already matches, so a reconcile loop may call it
// every time. The password travels as a SCRAM verifier computed here (see
// scramVerifier), so it is never in a statement the server could log.
// conn must be a superuser's, on a primary.
func EnsureRole(ctx context.Context, conn *pgx.Conn, name, password string, replication bool) error {
	if err := ensureRole(ctx, conn, name, password, replication); err != nil {
		return fmt.Errorf("ensure role %s: %w", name, err)
	}
	return nil
}

func ensureRole(ctx context.Context, conn *pgx.Conn, name, password string, replication bool) error {
	if name == "" {
		return errors.New("empty role name")
	}
	var stored *string
	var canLogin, canReplicate bool
	err := conn.QueryRow(ctx, "SELECT rolpassword, rolcanlogin, rolreplication FROM pg_authid WHERE rolname = $1", name).
		Scan(&stored, &canLogin, &canReplicate)
	exists := true
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		exists = false
	case err != nil:
		return err
	case canLogin && canReplicate == replication && stored != nil && scramMatches(*stored, password):
		return nil
	}

	verifier, err := newSCRAMVerifier(password)
	if err != nil {
		return err
	}
	repl := "NOREPLICATION"
	if replication {
		repl = "REPLICATION"
	}
	// DDL takes no bind parameters. The identifier is quoted by pgx and the
	// verifier is base64 plus '$' and ':', so it cannot break out of the
	// literal.
	attrs := fmt.Sprintf("LOGIN %s PASSWORD '%s'", repl, strings.ReplaceAll(verifier, "'", "''"))
	ident := pgx.Identifier{name}.Sanitize()
	if !exists {
		_, err = conn.Exec(ctx, "CREATE ROLE "+ident+" "+attrs)
		if !isCode(err, "42710") { // duplicate_object: created concurrently; alter it below
			return err
		}
	}
	_, err = conn.Exec(ctx, "ALTER ROLE "+ident+" "+attrs)
	return err
}

// EnsureSlots creates the physical replication slots in want that do not
// exist yet, reserving WAL immediately so a standby cloned through the slot
// finds every segment it needs. Slots not in want are left alone: dropping
// one is a decision about a member, not about a list.
func EnsureSlots(ctx context.Context, conn *pgx.Conn, want []string) error {
	have, err := slots(ctx, conn)
	if err != nil {
		return fmt.Errorf("ensure slots: %w", err)
	}
	for _, name := range want {
		st, ok := have[name]
		if ok && (st.reserved || st.active) {
			continue
		}
		if ok {
			// Made unreserved while this member was a standby
			// (PrepareSlots), and its standby has not connected yet: a
			// reserved one keeps the WAL it will need.
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name); err != nil {
				if isCode(err, "55006") { // object_in_use: its standby just connected
					continue
				}
				return fmt.Errorf("ensure slots: replace unreserved %s: %w", name, err)
			}
		}
		_, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", name)
		if err != nil && !isCode(err, "42710") { // duplicate_object: created concurrently
			return fmt.Errorf("ensure slots: create %s: %w", name, err)
		}
	}
	return nil
}

// PrepareSlots creates the slots in want that do not exist, without
// reserving WAL. It works on a standby, and the slots survive a promotion.
func PrepareSlots(ctx context.Context, conn *pgx.Conn, want []string) error {
	have, err := slots(ctx, conn)
	if err != nil {
		return fmt.Errorf("prepare slots: %w", err)
	}
	for _, name := range want {
		if _, ok := have[name]; ok {
			continue
		}
		_, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, false)", name)
		if err != nil && !isCode(err, "42710") {
			return fmt.Errorf("prepare slots: create %s: %w", name, err)
		}
	}
	return nil
}

type slotState struct{ reserved, active bool }

func slots(ctx context.Context, conn *pgx.Conn) (map[string]slotState, error) {
	rows, err := conn.Query(ctx, "SELECT slot_name, restart_lsn IS NOT NULL, active FROM pg_replication_slots WHERE slot_type = 'physical'")
	if err != nil {
		return nil, err
	}
	have := map[string]slotState{}
	var name string
	var st slotState
	_, err = pgx.ForEachRow(rows, []any{&name, &st.reserved, &st.active}, func() error {
		have[name] = st
		return nil
	})
	return have, err
}

// maxSlotName is NAMEDATALEN-1, the longest replication slot name.
const maxSlotName = 63

// SlotName returns the replication slot name for a member. Member ids are DNS
// labels like "demo-1", but slot names allow only lower-case letters, digits
// and '_', so it lower-cases and maps every other character to '_'.
func SlotName(memberID string) string {
	b := []byte(strings.ToLower(memberID))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > maxSlotName {
		b = b[:maxSlotName]
	}
	return string(b)
}

// promoteWait is how long pg_promote waits for the end of recovery.
const promoteWait = 60

// Promote makes the standby reachable through superuser a primary with
// pg_promote(true, 60) and returns once it is out of recovery. Promoting a
// server that is already a primary succeeds, so a supervisor may retry it.
func (i *Instance) Promote(ctx context.Context, superuser ConnInfo) error {
	if i.Fenced() {
		return fmt.Errorf("promote %s: %w", i.cfg.DataDir, ErrFenced)
	}
	if err := promote(ctx, superuser); err != nil {
		return fmt.Errorf("promote %s: %w", i.cfg.DataDir, err)
	}
	return nil
}

func promote(ctx context.Context, superuser ConnInfo) error {
	conn, err := Connect(ctx, superuser)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return err
	}
	if !inRecovery {
		return nil
	}
	// pg_promote(wait => true) checks for the end of recovery only ten
	// times a second; asking without waiting and polling here makes the
	// new primary writable up to 100 ms sooner, which a switchover's clients
	// feel.
	ctx, cancel := context.WithTimeout(ctx, (promoteWait+5)*time.Second)
	defer cancel()
	var signalled bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(false)").Scan(&signalled); err != nil {
		return err
	}
	if !signalled {
		return errors.New("pg_promote could not signal the server")
	}
	for {
		if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			return err
		}
		if !inRecovery {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still in recovery after %d s", promoteWait)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// isCode reports whether err is a server error with SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// BusySessions counts the client sessions in a transaction or running a
// statement, pgfleet's own connections aside. A switchover waits for it to
// reach zero, so that shutting the old primary down aborts no one's work.
func BusySessions(ctx context.Context, conn *pgx.Conn) (int, error) {
	var n int
	err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
		  AND application_name <> 'pgfleet' AND state IS DISTINCT FROM 'idle'`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count busy sessions: %w", err)
	}
	return n, nil
}

// ArchiverStatus is what pg_stat_archiver and pg_wal say about archiving.
type ArchiverStatus struct {
	LastArchivedWAL string
	LastArchivedAt  time.Time
	LastFailedWAL   string
	LastFailedAt    time.Time
	FailedCount     int64
	// PendingBytes is the size of the segments waiting to be archived.
	PendingBytes int64
}

// Failing reports whether the last attempt to archive failed.
func (a ArchiverStatus) Failing() bool {
	return !a.LastFailedAt.IsZero() && a.LastFailedAt.After(a.LastArchivedAt)
}

// QueryArchiver reads the archiver's state.
func QueryArchiver(ctx context.Context, conn *pgx.Conn) (ArchiverStatus, error) {
	var st ArchiverStatus
	var archived, failed pgtype.Text
	var archivedAt, failedAt pgtype.Timestamptz
	err := conn.QueryRow(ctx, `SELECT last_archived_wal, last_archived_time, last_failed_wal, last_failed_time, failed_count,
		(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')
		  * (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')
		FROM pg_stat_archiver`).Scan(&archived, &archivedAt, &failed, &failedAt, &st.FailedCount, &st.PendingBytes)
	if err != nil {
		return st, fmt.Errorf("query archiver: %w", err)
	}
	st.LastArchivedWAL, st.LastFailedWAL = archived.String, failed.String
	st.LastArchivedAt, st.LastFailedAt = archivedAt.Time, failedAt.Time
	return st, nil
}
