#!/usr/bin/env bash
# Backup benchmark: pgfleet's backup pipeline beside pgBackRest 2.45 on one
# PostgreSQL 15 filled by `pgbench -i -s SCALE` (default 50, about 750 MB), in
# one run, rounds interleaved: full base backup time and bytes stored (zstd
# level 3 for both; pgBackRest with process-max 1 and 2), restore time, the
# time to archive WAL segments one process per segment as archive_command
# does (pgfleet directly to the store, and through its agent's WAL socket
# with a backlog marked ready, as postgres leaves it), the time to restore
# them one process per segment as restore_command does, and pgfleet's RPO
# bound: how long a commit waits until the WAL holding it is in the store,
# through archive_command alone and through the WAL stream.
# Writes bench/results/backup.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
SCALE="${SCALE:-50}"
ROUNDS="${ROUNDS:-2}"
SEGMENTS="${SEGMENTS:-32}"
PORT="${PORT:-5460}"
PGBIN=/usr/lib/postgresql/15/bin
BASE="$PWD/bench/tmp/backup"
ASPG=(setpriv --reuid=postgres --regid=postgres --init-groups)
command -v pgbackrest >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null; }

cleanup() {
	if [ -e "$BASE/data/postmaster.pid" ]; then
		"${ASPG[@]}" "$PGBIN/pg_ctl" -D "$BASE/data" -m fast -w stop >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT INT TERM
cleanup
rm -rf "$BASE"
mkdir -p "$BASE"/{sock,store,repo,walsrc,log}
chmod 755 "$PWD/bench/tmp" "$BASE"
go build -o bin/pgfleet ./cmd/pgfleet
go build -o "$BASE/bench-backup" ./bench/backup
chown -R postgres:postgres "$BASE"

say "PostgreSQL with pgbench scale $SCALE"
"${ASPG[@]}" "$PGBIN/initdb" -D "$BASE/data" -U postgres -A trust --data-checksums >/dev/null
cat >>"$BASE/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$BASE/sock'
archive_mode = on
archive_command = 'true'
max_wal_size = 4GB
CONF
echo "host replication all 127.0.0.1/32 trust" >>"$BASE/data/pg_hba.conf"
# pgfleet's members speak only TLS, and its backup requires it.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench -keyout "$BASE/data/server.key" -out "$BASE/data/server.crt" 2>/dev/null
chown postgres:postgres "$BASE/data/server.key" "$BASE/data/server.crt"
chmod 600 "$BASE/data/server.key"
echo "ssl = on" >>"$BASE/data/postgresql.conf"
"${ASPG[@]}" "$PGBIN/pg_ctl" -D "$BASE/data" -l "$BASE/log/postgres.log" -w start >/dev/null
PSQL=(psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtX)
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -1
DBSIZE="$("${PSQL[@]}" -c "select pg_size_pretty(pg_database_size('postgres'))")"

cat >"$BASE/pgbackrest.conf" <<CONF
[global]
repo1-path=$BASE/repo
compress-type=zst
compress-level=3
start-fast=y
archive-check=n
log-level-console=warn
log-path=$BASE/log
lock-path=$BASE/log
[bench]
pg1-path=$BASE/data
pg1-port=$PORT
pg1-socket-path=$BASE/sock
CONF
chown postgres:postgres "$BASE/pgbackrest.conf"
PGBR=("${ASPG[@]}" pgbackrest --config="$BASE/pgbackrest.conf" --stanza=bench)
"${PGBR[@]}" stanza-create >/dev/null

CSV="$BASE/runs.csv"
echo "round,op,tool,seconds,stored_bytes" >"$CSV"
# How busy the shared machine was, for the report.
echo "start $(cut -d' ' -f1-3 /proc/loadavg)" >"$BASE/load.txt"
secs() { python3 -c "import time; print(time.time())"; }
last_label() { "${PGBR[@]}" info --output=json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["label"])'; }

pgfleet_backup() {
	local r=$1 out
	out="$("$BASE/bench-backup" -op backup -port "$PORT" -store "file://$BASE/store" -work "$BASE")"
	echo "$r,backup,pgfleet,$(awk '{print $4}' <<<"$out"),$(awk '{print $8}' <<<"$out")" >>"$CSV"
	PGFLEET_ID="$(awk '{print $2}' <<<"$out")"
}
pgbr_backup() {
	local r=$1 pm=$2 t0 t1 label
	t0="$(secs)"
	"${PGBR[@]}" --process-max="$pm" --type=full backup
	t1="$(secs)"
	label="$(last_label)"
	echo "$r,backup,pgbackrest-pm$pm,$(python3 -c "print(round($t1-$t0,2))"),$(du -sb "$BASE/repo/backup/bench/$label" | cut -f1)" >>"$CSV"
	PGBR_LABEL="$label"
}
pgfleet_restore() {
	local r=$1 out
	rm -rf "$BASE/restore"
	out="$("$BASE/bench-backup" -op restore -store "file://$BASE/store" -id "$PGFLEET_ID" -dest "$BASE/restore")"
	echo "$r,restore,pgfleet,$(awk '{print $2}' <<<"$out")," >>"$CSV"
}
pgbr_restore() {
	local r=$1 pm=$2 t0 t1
	rm -rf "$BASE/restore"
	mkdir -m 700 "$BASE/restore"
	chown postgres:postgres "$BASE/restore"
	t0="$(secs)"
	"${PGBR[@]}" --process-max="$pm" --pg1-path="$BASE/restore" --set="$PGBR_LABEL" restore
	t1="$(secs)"
	echo "$r,restore,pgbackrest-pm$pm,$(python3 -c "print(round($t1-$t0,2))")," >>"$CSV"
}

for r in $(seq "$ROUNDS"); do
	say "round $r of $ROUNDS: backups"
	if [ $((r % 2)) -eq 1 ]; then
		pgfleet_backup "$r"; pgbr_backup "$r" 1; pgbr_backup "$r" 2
	else
		pgbr_backup "$r" 2; pgbr_backup "$r" 1; pgfleet_backup "$r"
	fi
	say "round $r of $ROUNDS: restores"
	if [ $((r % 2)) -eq 1 ]; then
		pgfleet_restore "$r"; pgbr_restore "$r" 1; pgbr_restore "$r" 2
	else
		pgbr_restore "$r" 2; pgbr_restore "$r" 1; pgfleet_restore "$r"
	fi
done
rm -rf "$BASE/restore"

say "WAL: $SEGMENTS segments, one process each"
"${PSQL[@]}" -c "create table filler (i int, pad text)"
for i in $(seq "$SEGMENTS"); do
	"${PSQL[@]}" -c "insert into filler select g, md5(g::text) from generate_series(1, 60000) g" -c "select pg_switch_wal()" >/dev/null
	cp "$BASE/data/pg_wal/$("${PSQL[@]}" -c "select pg_walfile_name(pg_current_wal_lsn() - 1)")" "$BASE/walsrc/" 2>/dev/null || true
done
chown -R postgres:postgres "$BASE/walsrc"
N="$(ls "$BASE/walsrc" | wc -l)"
# Through the agent, as a member's postgres archives and restores: the
# benchmark serves the WAL socket with a file store, marks the segments
# ready in a pg_wal as postgres does, and runs bin/pgfleet once per segment.
agent_bench() {
	local ms
	ms="$(PGFLEET_BENCH_WAL_DIR="$BASE/walsrc" PGFLEET_BENCH_BIN="$PWD/bin/pgfleet" \
		go test -count=1 -run '^$' -bench "$1" -benchtime 1x ./internal/agent | awk '$1 ~ /^Benchmark/ {for (i = 1; i <= NF; i++) if ($(i+1) == "ms/segment") print $i}')"
	python3 -c "print(round($ms*$N/1000,2))"
}
# Each round archives into an empty archive: a segment already archived
# is only compared, which would flatter the second round.
wal_push() {
	local r=$1 tool=$2 t0 t1 s
	case "$tool" in
	pgfleet)
		t0="$(secs)"
		for f in "$BASE"/walsrc/*; do "${ASPG[@]}" bin/pgfleet wal-push --store "file://$BASE/walstore-$r" --cluster bench "$f"; done
		t1="$(secs)"
		s="$(python3 -c "print(round($t1-$t0,2))")" ;;
	pgbackrest)
		rm -rf "$BASE"/repo/archive/bench/*-*/
		t0="$(secs)"
		for f in "$BASE"/walsrc/*; do "${PGBR[@]}" archive-push "$f"; done
		t1="$(secs)"
		s="$(python3 -c "print(round($t1-$t0,2))")" ;;
	pgfleet-agent) s="$(agent_bench BenchmarkWALPushThroughAgent)" ;;
	esac
	echo "$r,wal-push,$tool,$s,$N" >>"$CSV"
}
wal_fetch() {
	local r=$1 tool=$2 t0 t1 s
	case "$tool" in
	pgbackrest)
		t0="$(secs)"
		for f in "$BASE"/walsrc/*; do "${PGBR[@]}" archive-get "$(basename "$f")" "$BASE/walget/RECOVERYXLOG"; done
		t1="$(secs)"
		s="$(python3 -c "print(round($t1-$t0,2))")" ;;
	pgfleet-agent) s="$(agent_bench BenchmarkWALFetchThroughAgent)" ;;
	esac
	echo "$r,wal-fetch,$tool,$s,$N" >>"$CSV"
}
mkdir -p "$BASE/walget"
chown postgres:postgres "$BASE/walget"
for r in $(seq "$ROUNDS"); do
	say "round $r of $ROUNDS: $N WAL segments archived, then restored, one process each"
	if [ $((r % 2)) -eq 1 ]; then
		wal_push "$r" pgfleet; wal_push "$r" pgfleet-agent; wal_push "$r" pgbackrest
		wal_fetch "$r" pgfleet-agent; wal_fetch "$r" pgbackrest
	else
		wal_push "$r" pgbackrest; wal_push "$r" pgfleet-agent; wal_push "$r" pgfleet
		wal_fetch "$r" pgbackrest; wal_fetch "$r" pgfleet-agent
	fi
done

say "RPO bound: archive_command = pgfleet wal-push, archive_timeout = 5s"
"${PSQL[@]}" -c "alter system set archive_command = '$PWD/bin/pgfleet wal-push --store file://$BASE/store --cluster rpo %p'" -c "alter system set archive_timeout = '5s'" -c "select pg_reload_conf()" >/dev/null
sleep 6 # the fault injected: a quiet database, so archive_timeout is what archives
RPO=()
for i in 1 2 3 4 5; do
	seg="$("${PSQL[@]}" -c "insert into filler values ($i, 'rpo')" -c "select pg_walfile_name(pg_current_wal_insert_lsn())" | tail -1)"
	t0="$(secs)"
	until [ "$("${PSQL[@]}" -c "select coalesce(last_archived_wal >= '$seg', false) from pg_stat_archiver")" = t ]; do sleep 0.05; done
	t1="$(secs)"
	RPO+=("$(python3 -c "print(round($t1-$t0,2))")")
	sleep 1
done
echo "rpo,${RPO[*]}" >"$BASE/rpo.txt"
say "RPO bound: WAL streamed to the store as a primary's agent streams it"
"$BASE/bench-backup" -op rpo -port "$PORT" -store "file://$BASE/streamstore" -commits 20 >>"$BASE/rpo.txt"
echo "end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$BASE/load.txt"

python3 bench/backup/report.py "$CSV" "$BASE/rpo.txt" "$SCALE" "$DBSIZE" "$ROUNDS" "$BASE/load.txt" >bench/results/backup.md
cat bench/results/backup.md
