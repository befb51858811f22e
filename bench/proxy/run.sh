#!/usr/bin/env bash
# Proxy benchmark: pgbench -S (scale 10, 8 clients), pgbench -S -C (a new
# connection per transaction) and pgbench -S -M prepared straight to
# Postgres, through pgfleet's routing proxy, through HAProxy (tcp mode),
# through PgBouncer (session pooling), and, for the poolers, through
# pgfleet's pooled port and PgBouncer in transaction pooling, in interleaved
# rounds on one dev fleet; then the pause a client that connects per
# transaction sees through the proxy during a switchover. Writes
# bench/tmp/proxy/proxy.md (bench/results/proxy.md keeps the runs worth
# keeping). ROUNDS (default 3), T_SELECT and T_CONNECT (seconds per pgbench
# run, default 15 and 10), SWITCHOVERS (default 10; 0 skips them), TESTS
# (default "select connect prepared").
#
# Every path carries TLS from the client: Postgres (direct), pgfleet and
# HAProxy pass it through to Postgres; PgBouncer ends it and opens its own
# TLS connections to Postgres, as a pooler must.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
ROUNDS="${ROUNDS:-3}"
T_SELECT="${T_SELECT:-15}"
T_CONNECT="${T_CONNECT:-10}"
SWITCHOVERS="${SWITCHOVERS:-10}"
TESTS="${TESTS:-select connect prepared}"
NET="${NET:-199}"

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v pgbouncer >/dev/null || need+=(pgbouncer)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

TMP="$PWD/bench/tmp/proxy"
FLEET="$TMP/fleet"
export PGFLEET_HOME="$TMP/home"
PGF="$PWD/bin/pgfleet"
cleanup() {
	local f pid
	for f in "$TMP/haproxy.pid" "$TMP/pgbouncer.pid"; do
		[ -e "$f" ] || continue
		pid="$(head -1 "$f")"
		if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE 'haproxy|pgbouncer'; then
			kill "$pid" 2>/dev/null || true
		fi
	done
	"$PGF" dev down --dir "$FLEET" --purge >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
go build -o bin/pgfleet ./cmd/pgfleet
cleanup
rm -rf "$TMP"
mkdir -p "$TMP" "$PGFLEET_HOME"
chmod 755 "$TMP"

say "dev fleet (iad:2) and cluster bench (primary and one standby)"
"$PGF" dev up --dir "$FLEET" --regions iad:2 --net "$NET" >/dev/null
"$PGF" create bench --primary-region iad --ha 2 --wait >/dev/null
status="$("$PGF" status bench --json)"
read -r PRIMARY PHOST PPORT < <(python3 -c '
import json,sys
v=json.load(sys.stdin)
m=[m for m in v["members"] if m["id"]==v["primary"]][0]
h,p=m["addr"].rsplit(":",1)
print(m["id"], h, p)' <<<"$status")
PROXYPORT=$((PPORT + 1))
URL="$("$PGF" url bench --member "$PRIMARY")"
export PGPASSWORD="$(python3 -c 'import sys,urllib.parse as u; print(u.unquote(u.urlparse(sys.argv[1]).password))' "$URL")"
export PGUSER=postgres PGSSLMODE=require PGDATABASE=postgres
AGENT_PID="$(cat "$FLEET/$("$PGF" status bench --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print([m for m in v["members"] if m["id"]==v["primary"]][0]["host"])').pid")"
pgbench -h "$PHOST" -p "$PPORT" -i -s 10 -q 2>&1 | tail -1

HAPORT=$((PPORT + 7)) BOUNCERPORT=$((PPORT + 8)) POOLEDPORT=$((PPORT + 3))
cat >"$TMP/haproxy.cfg" <<CFG
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
listen pg
    bind $PHOST:$HAPORT
    server pg1 $PHOST:$PPORT
CFG
haproxy -f "$TMP/haproxy.cfg" -D -p "$TMP/haproxy.pid"

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pgbouncer -keyout "$TMP/bouncer.key" -out "$TMP/bouncer.crt" 2>/dev/null
printf '"postgres" "%s"\n' "$PGPASSWORD" >"$TMP/userlist.txt"
cat >"$TMP/pgbouncer.ini" <<CFG
[databases]
postgres = host=$PHOST port=$PPORT dbname=postgres
postgres_tx = host=$PHOST port=$PPORT dbname=postgres pool_mode=transaction
[pgbouncer]
listen_addr = $PHOST
listen_port = $BOUNCERPORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 20
client_tls_sslmode = require
client_tls_key_file = $TMP/bouncer.key
client_tls_cert_file = $TMP/bouncer.crt
server_tls_sslmode = require
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
CFG
chmod 600 "$TMP/userlist.txt" "$TMP/bouncer.key"
if [ "$(id -u)" -eq 0 ]; then
	chown postgres:postgres "$TMP"/pgbouncer.ini "$TMP"/userlist.txt "$TMP"/bouncer.* "$TMP"
	setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer -d "$TMP/pgbouncer.ini"
else
	pgbouncer -d "$TMP/pgbouncer.ini"
fi
for _ in $(seq 50); do
	psql -h "$PHOST" -p "$BOUNCERPORT" -Atqc 'select 1' >/dev/null 2>&1 &&
		psql -h "$PHOST" -p "$HAPORT" -Atqc 'select 1' >/dev/null 2>&1 &&
		psql -h "$PHOST" -p "$PROXYPORT" -Atqc 'select 1' >/dev/null 2>&1 &&
		psql -h "$PHOST" -p "$POOLEDPORT" -Atqc 'select 1' >/dev/null 2>&1 && break
	sleep 0.2
done

declare -A PORT=([direct]=$PPORT [pgfleet]=$PROXYPORT [haproxy]=$HAPORT [pgbouncer]=$BOUNCERPORT [pooled]=$POOLEDPORT [pgbouncer-tx]=$BOUNCERPORT)
declare -A DB=([pgbouncer-tx]=postgres_tx)
declare -A PIDF=([direct]="" [pgfleet]="agent" [haproxy]="$TMP/haproxy.pid" [pgbouncer]="$TMP/pgbouncer.pid" [pooled]="agent" [pgbouncer-tx]="$TMP/pgbouncer.pid")
# The paths each test runs through, in the order of the first round; later
# rounds rotate it.
declare -A TARGETS=(
	[select]="direct pgfleet haproxy pgbouncer"
	[connect]="direct pgfleet haproxy pgbouncer pooled pgbouncer-tx"
	[prepared]="direct pgfleet pooled pgbouncer-tx"
)
CSV="$TMP/runs.csv"
echo "round,test,target,tps,latency_ms,transactions,proxy_cpu_s,error,wall_s" >"$CSV"

cpu_of() { # pid -> utime+stime in clock ticks
	awk '{print $14 + $15}' "/proc/$1/stat"
}
proxy_pid() {
	case "$1" in
	direct) echo "" ;;
	pgfleet | pooled) echo "$AGENT_PID" ;;
	*) head -1 "${PIDF[$1]}" ;;
	esac
}

run() { # test target round
	local test=$1 target=$2 round=$3 out tps lat n pid c0 c1 cpu extra err
	case "$test" in
	select) extra=(-T "$T_SELECT") ;;
	connect) extra=(-C -T "$T_CONNECT") ;;
	prepared) extra=(-M prepared -T "$T_SELECT") ;;
	esac
	pid="$(proxy_pid "$target")"
	c0=0; [ -n "$pid" ] && c0="$(cpu_of "$pid")"
	w0="$(date +%s.%N)"
	out="$(PGDATABASE="${DB[$target]:-postgres}" pgbench -h "$PHOST" -p "${PORT[$target]}" -n -S -c 8 -j 2 "${extra[@]}" 2>&1)" || true
	w1="$(date +%s.%N)"
	c1=0; [ -n "$pid" ] && c1="$(cpu_of "$pid")"
	cpu="$(python3 -c "print(($c1 - $c0) / $(getconf CLK_TCK))")"
	tps="$(awk '/^tps = /{print $3; exit}' <<<"$out")"
	lat="$(awk '/^latency average = /{print $4; exit}' <<<"$out")"
	n="$(awk '/^number of transactions actually processed:/{print $6; exit}' <<<"$out")"
	# A run that aborts (PgBouncer 1.18 in transaction pooling loses
	# prepared statements) counts as failed, with pgbench's first error.
	err=""
	if grep -q 'aborted' <<<"$out"; then
		err="$(grep -m1 'error' <<<"$out" | tr ',' ';' | cut -c1-160)"
		tps="" lat=""
	fi
	echo "$round,$test,$target,$tps,$lat,$n,$cpu,$err,$(python3 -c "print($w1 - $w0)")" | tee -a "$CSV" >&2
}

# idle TEST: the agent's own CPU over IDLE seconds with no client, so that
# the report can tell the proxy's share of the agent's CPU from the rest
# of its work (etcd, supervision), which goes on with or without clients.
IDLE="${IDLE:-10}"
idle() {
	local c0 c1 w0 w1
	c0="$(cpu_of "$AGENT_PID")" w0="$(date +%s.%N)"
	sleep "$IDLE"
	c1="$(cpu_of "$AGENT_PID")" w1="$(date +%s.%N)"
	echo "0,$1,agent-idle,,,0,$(python3 -c "print(($c1 - $c0) / $(getconf CLK_TCK))"),,$(python3 -c "print($w1 - $w0)")" | tee -a "$CSV" >&2
}

say "warm-up"
pgbench -h "$PHOST" -p "$PPORT" -n -S -c 8 -j 2 -T 5 >/dev/null 2>&1
for test in $TESTS; do
	read -r -a ts <<<"${TARGETS[$test]}"
	idle "$test"
	for r in $(seq "$ROUNDS"); do
		for k in "${!ts[@]}"; do
			run "$test" "${ts[$(((k + r - 1) % ${#ts[@]}))]}" "$r"
		done
	done
done

: >"$TMP/pause.txt"
[ "$SWITCHOVERS" -gt 0 ] && say "switchover pause through the proxy, $SWITCHOVERS switchovers"
PROXYURL="postgres://postgres:$(python3 -c 'import sys,urllib.parse as u; print(u.quote(sys.argv[1], safe=""))' "$PGPASSWORD")@$PHOST:$PROXYPORT/postgres?sslmode=require"
if [ "$SWITCHOVERS" -gt 0 ]; then
	go run ./bench/proxy -url "$PROXYURL" -pgfleet "$PGF" -cluster bench -n "$SWITCHOVERS" >"$TMP/pause.txt"
	cat "$TMP/pause.txt" >&2
fi

python3 bench/proxy/report.py "$CSV" "$TMP/pause.txt" "$ROUNDS" "$T_SELECT" "$T_CONNECT" >"$TMP/proxy.md"
cat "$TMP/proxy.md"
