#!/usr/bin/env bash
# Import benchmark, one run on one machine: a plain PostgreSQL 15 that this
# script starts itself (its own initdb, as the postgres OS user, on a
# loopback port), filled by `pgbench -i -s SCALE` (default 50), copied into
# a pgfleet cluster's primary three ways, each into a fresh empty database,
# in interleaved rounds (the order turns each round):
#
#   pgfleet     `pgfleet import NAME --from URL`
#   dump-psql   `pg_dump | psql`, as `fly pg import` does
#   dump-fc-j2  `pg_dump -Fc` to a file, then `pg_restore -j 2`
#
# Then the write pause of an online import's cutover (`pgfleet import
# --online`, then `--cutover --lock-source`, CUTOVERS times, default 5) for
# an app that writes to the source and, once the cutover is done, through
# pgfleet's proxy; and the write pause of `pgfleet move NAME
# --primary-region ams` for writers through the proxy. Writes
# bench/results/import.md. ROUNDS (default 2), PHASES (default "offline
# online move").
#
# Everything it starts lives under one temporary directory (the source,
# the dev fleet and its PGFLEET_HOME) and is stopped and deleted at the
# end; the per-round logs are kept in bench/tmp/import.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
SCALE="${SCALE:-50}"
ROUNDS="${ROUNDS:-2}"
CUTOVERS="${CUTOVERS:-5}"
PHASES="${PHASES:-offline online move}"
PORT="${PORT:-5470}"
NET="${NET:-196}"
PGBIN=/usr/lib/postgresql/15/bin
ASPG=(setpriv --reuid=postgres --regid=postgres --init-groups)
OUT="${OUT:-bench/results/import.md}"

BASE="$(mktemp -d /tmp/pgfleet-bench-import.XXXXXX)"
chmod 755 "$BASE"
KEEP="$PWD/bench/tmp/import"
FLEET="$BASE/fleet"
export PGFLEET_HOME="$BASE/home"
# PGFLEET_BIN measures a pgfleet built elsewhere (say, from a clean
# checkout of a commit) instead of building the work tree's.
PGF="${PGFLEET_BIN:-$PWD/bin/pgfleet}"
SAMPLER=""
cleanup() {
	set +e
	[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
	if [ -e "$BASE/src/postmaster.pid" ]; then
		"${ASPG[@]}" "$PGBIN/pg_ctl" -D "$BASE/src" -m immediate -w stop >/dev/null 2>&1
	fi
	if [ -d "$FLEET" ]; then
		mkdir -p "$KEEP/fleet-logs" && cp "$FLEET"/*.log "$KEEP/fleet-logs/" 2>/dev/null
		"$PGF" dev down --dir "$FLEET" --purge >/dev/null 2>&1
	fi
	rm -rf "$BASE"
}
trap cleanup EXIT INT TERM
[ -n "${PGFLEET_BIN:-}" ] || go build -o bin/pgfleet ./cmd/pgfleet
go build -o "$BASE/bench-import" ./bench/import
go build -o "$BASE/operations" ./bench/operations
rm -rf "$KEEP"
mkdir -p "$KEEP" "$PGFLEET_HOME" "$BASE"/{sock,log,work,src}
chown postgres:postgres "$BASE/sock" "$BASE/log" "$BASE/src"
chmod 700 "$BASE/src"
CSV="$KEEP/runs.csv"
echo "round,method,seconds,rows" >"$CSV"
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "start $(date -u +%FT%TZ) load $(load)" >"$KEEP/load.txt"
# The 1-minute load average every 10 s, for the report's "during the run".
(while sleep 10; do echo "$(date -u +%T) $(cut -d' ' -f1 /proc/loadavg)"; done >"$KEEP/load-samples.txt") &
SAMPLER=$!

say "source: PostgreSQL 15 on 127.0.0.1:$PORT, pgbench -i -s $SCALE"
"${ASPG[@]}" "$PGBIN/initdb" -D "$BASE/src" -U postgres -A trust >/dev/null
cat >>"$BASE/src/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$BASE/sock'
max_wal_size = 4GB
wal_level = logical
CONF
"${ASPG[@]}" "$PGBIN/pg_ctl" -D "$BASE/src" -l "$BASE/log/source.log" -w start >/dev/null
SRC="postgres://postgres@127.0.0.1:$PORT"
PSQL=(psql -qAtX -v ON_ERROR_STOP=1)
"${PSQL[@]}" "$SRC/postgres" -c "CREATE DATABASE bench" -c "CREATE DATABASE live"
pgbench -i -s "$SCALE" -q "$SRC/bench" 2>&1 | tail -1
"${PSQL[@]}" "$SRC/bench" -c "VACUUM ANALYZE"
DBSIZE="$("${PSQL[@]}" "$SRC/bench" -c "SELECT pg_size_pretty(pg_database_size('bench'))")"
SRCSUM="$("${PSQL[@]}" "$SRC/bench" -c "SELECT count(*), sum(abalance), md5(string_agg(filler, '' ORDER BY aid)) FROM pgbench_accounts")"

say "pgfleet dev fleet (iad, ams) and clusters imp (offline), live (online), mv (move)"
t0=$SECONDS
"$PGF" dev up --dir "$FLEET" --regions iad,ams --net "$NET" >/dev/null
for c in imp live mv; do
	"$PGF" create "$c" --primary-region iad --backup-store none --wait >/dev/null
done
echo "pgfleet up in $((SECONDS - t0)) s; $("$PGF" version 2>/dev/null | head -1)" >>"$KEEP/load.txt"

# member_url CLUSTER direct|proxy DATABASE: the superuser's URL of database
# DATABASE on the cluster's primary (its own postgres, or the routing proxy
# on its host), without the password, which goes to PGPASSWORD; printed as
# "URL PASSWORD".
member_url() {
	local primary
	primary="$("$PGF" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"])')"
	python3 -c '
import sys, urllib.parse as u
p = u.urlparse(sys.argv[1])
port = p.port + (1 if sys.argv[2] == "proxy" else 0)
print(p._replace(netloc=f"{p.username}@{p.hostname}:{port}", path="/" + sys.argv[3]).geturl(), u.unquote(p.password))
' "$("$PGF" url "$1" --member "$primary")" "$2" "$3"
}
secs() { echo "$EPOCHREALTIME"; }
elapsed() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$1" "$2"; }

if [[ " $PHASES " == *" offline "* ]]; then
	read -r TGTADMIN IMPPW < <(member_url imp direct postgres)
	read -r TGT _ < <(member_url imp direct bench)
	export PGPASSWORD="$IMPPW"
	fresh() { "${PSQL[@]}" "$TGTADMIN" -c "DROP DATABASE IF EXISTS bench (FORCE)" -c "CHECKPOINT"; }
	check() { # round method t0 t1: the copy must be whole
		local got
		got="$("${PSQL[@]}" "$TGT" -c "SELECT count(*), sum(abalance), md5(string_agg(filler, '' ORDER BY aid)) FROM pgbench_accounts")"
		[ "$got" = "$SRCSUM" ] || { say "$2: pgbench_accounts differs from the source: $got, want $SRCSUM"; exit 1; }
		echo "$1,$2,$(elapsed "$3" "$4"),${got%%|*}" >>"$CSV"
	}
	method() { # round method
		local r=$1 m=$2 t0 t1
		fresh
		say "round $r: $m"
		t0="$(secs)"
		case "$m" in
		pgfleet)
			# --from carries no password: the source trusts loopback.
			"$PGF" import imp --from "$SRC/bench" --jobs 2 >"$KEEP/pgfleet-$r.log" 2>&1 ||
				{ cat "$KEEP/pgfleet-$r.log"; exit 1; } ;;
		dump-psql)
			"${PSQL[@]}" "$TGTADMIN" -c "CREATE DATABASE bench"
			pg_dump -d "$SRC/bench" | PGOPTIONS="-c client_min_messages=warning" "${PSQL[@]}" "$TGT" >"$KEEP/$m-$r.log" 2>&1 ;;
		dump-fc-j2)
			"${PSQL[@]}" "$TGTADMIN" -c "CREATE DATABASE bench"
			pg_dump -Fc -d "$SRC/bench" -f "$BASE/work/bench.dump"
			pg_restore -j 2 -d "$TGT" "$BASE/work/bench.dump" >"$KEEP/$m-$r.log" 2>&1
			rm -f "$BASE/work/bench.dump" ;;
		esac
		t1="$(secs)"
		check "$r" "$m" "$t0" "$t1"
		say "round $r: $m $(elapsed "$t0" "$t1") s"
	}
	methods=(pgfleet dump-psql dump-fc-j2)
	for r in $(seq "$ROUNDS"); do
		for k in "${!methods[@]}"; do
			method "$r" "${methods[$(((k + r - 1) % ${#methods[@]}))]}"
		done
	done
	fresh
	unset PGPASSWORD
fi

if [[ " $PHASES " == *" online "* ]]; then
	say "online import and cutover, $CUTOVERS times"
	pgbench -i -s 1 -q "$SRC/live" 2>&1 | tail -1
	"${PSQL[@]}" "$SRC/live" -c "CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
	read -r LIVEADMIN LIVEPW < <(member_url live direct postgres)
	read -r LIVEPROXY _ < <(member_url live proxy live)
	for r in $(seq "$CUTOVERS"); do
		"${PSQL[@]}" "$SRC/postgres" -c "ALTER DATABASE live RESET default_transaction_read_only"
		PGPASSWORD="$LIVEPW" "${PSQL[@]}" "$LIVEADMIN" -c "DROP DATABASE IF EXISTS live (FORCE)"
		"$PGF" import live --online --replica-identity-full --from "$SRC/live" >"$KEEP/online-$r.log" 2>&1 ||
			{ cat "$KEEP/online-$r.log"; exit 1; }
		PGPASSWORD="$LIVEPW" "$BASE/bench-import" -source "$SRC/live" -target "$LIVEPROXY" \
			-round "$r" -out "$KEEP/cutover.jsonl" -- \
			"$PGF" import live --cutover --lock-source --from "$SRC/live"
	done
	"${PSQL[@]}" "$SRC/postgres" -c "ALTER DATABASE live RESET default_transaction_read_only"
fi

if [[ " $PHASES " == *" move "* ]]; then
	say "move mv from iad to ams under writers through the proxy"
	read -r MVPROXY MVPW < <(member_url mv proxy postgres)
	PGPASSWORD="$MVPW" "$BASE/operations" -url "$MVPROXY" -tool move -round 1 -out "$KEEP/move.jsonl" -- \
		"$PGF" move mv --primary-region ams
	"$PGF" status mv >"$KEEP/move-status.txt" 2>&1 || true
fi

echo "end $(date -u +%FT%TZ) load $(load)" >>"$KEEP/load.txt"
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=""
python3 bench/import/report.py "$KEEP" "$SCALE" "$DBSIZE" "$ROUNDS" >"$OUT"
cat "$OUT"
