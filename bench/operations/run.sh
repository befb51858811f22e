#!/usr/bin/env bash
# Rolling restart benchmark: a 3-member pgfleet cluster (`pgfleet restart`)
# beside a 3-member Patroni cluster (each replica with `patronictl restart`,
# `patronictl switchover`, then the old leader; and `patronictl restart`
# of the whole cluster as it comes), in interleaved rounds on one machine,
# while writers open a new connection for every INSERT through pgfleet's
# proxy or through HAProxy in front of Patroni, and straight to the members
# with a multi-host URL (target_session_attrs=read-write). Writes
# bench/tmp/operations/operations.md (bench/results/operations.md keeps the
# runs worth keeping). ROUNDS (default 3); PATRONI_ALL=0 leaves out the
# whole-cluster `patronictl restart`; PGFLEET_BIN measures that binary
# instead of building one.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
ROUNDS="${ROUNDS:-3}"
PATRONI_ALL="${PATRONI_ALL:-1}"
NET="${NET:-197}"
PEERS_DIR="${PEERS_DIR:-$PWD/../shared/peers}"
export PEERS_DIR

if ! command -v patroni >/dev/null || ! command -v etcd >/dev/null || ! command -v haproxy >/dev/null; then
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patroni etcd-server haproxy >/dev/null
fi

TMP="$PWD/bench/tmp/operations"
FLEET="$TMP/fleet"
export PGFLEET_HOME="$TMP/home"
# PGFLEET_BIN measures a pgfleet built elsewhere (say, from a clean
# checkout of a commit) instead of building the work tree's.
PGF="${PGFLEET_BIN:-$PWD/bin/pgfleet}"
PATRONI=(/usr/bin/python3 "$PWD/bench/operations/patroni.py")
cleanup() {
	KEEP_LOGS="$TMP/patroni-logs" "${PATRONI[@]}" down >/dev/null 2>&1 || true
	if ls "$FLEET"/*.log >/dev/null 2>&1; then # the agents' logs, postgres' lines in them
		rm -rf "$TMP/fleet-logs" && mkdir -p "$TMP/fleet-logs" && cp "$FLEET"/*.log "$TMP/fleet-logs/"
	fi
	"$PGF" dev down --dir "$FLEET" --purge >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
[ -n "${PGFLEET_BIN:-}" ] || go build -o bin/pgfleet ./cmd/pgfleet
go build -o "$TMP/operations.bin" ./bench/operations
cleanup
rm -rf "$FLEET" "$PGFLEET_HOME"
mkdir -p "$TMP" "$PGFLEET_HOME"
RUNS="$TMP/runs.jsonl"
: >"$RUNS"
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "start $(date -u +%FT%TZ) load $(load); $("$PGF" version 2>/dev/null | head -1)" >"$TMP/load.txt"

say "pgfleet dev fleet (iad:3) and cluster bench (primary and two standbys)"
t0=$SECONDS
"$PGF" dev up --dir "$FLEET" --regions iad:3 --net "$NET" >/dev/null
"$PGF" create bench --primary-region iad --ha 3 --wait >/dev/null
echo "pgfleet up in $((SECONDS - t0)) s" >>"$TMP/load.txt"
read -r PRIMARY PHOST PPORT MEMBERS < <("$PGF" status bench --json | python3 -c '
import json,sys
v=json.load(sys.stdin)
m=[m for m in v["members"] if m["id"]==v["primary"]][0]
h,p=m["addr"].rsplit(":",1)
print(m["id"], h, p, ",".join(m["addr"] for m in v["members"]))')
# The primary port of the proxy on the first primary's host, which routes
# to whichever member is primary and stays up while that host's postgres
# restarts; and every member's postgres in one multi-host URL that asks
# for the read-write one.
read -r PGFURL PGFDIRECT < <(python3 -c '
import sys, urllib.parse as u
p = u.urlparse(sys.argv[1])
host, port, members = sys.argv[2], int(sys.argv[3]) + 1, sys.argv[4]
auth = p.username + ":" + u.quote(u.unquote(p.password), safe="")
q = u.parse_qsl(p.query)
print(p._replace(netloc=f"{auth}@{host}:{port}").geturl(),
      p._replace(netloc=f"{auth}@{members}", query=u.urlencode(q + [("target_session_attrs", "read-write")])).geturl())
' "$("$PGF" url bench --member "$PRIMARY")" "$PHOST" "$PPORT" "$MEMBERS")

say "Patroni (3 members, etcd, HAProxy)"
t0=$SECONDS
{ read -r PATRONIURL; read -r PATRONIDIRECT; } < <("${PATRONI[@]}" up)
[ -n "$PATRONIDIRECT" ] || { say "Patroni did not start"; exit 1; }
echo "Patroni up in $((SECONDS - t0)) s" >>"$TMP/load.txt"

OPS=("$TMP/operations.bin" -out "$RUNS")
variants=(pgfleet patroni-rolling)
[ "$PATRONI_ALL" = 1 ] && variants+=(patroni-all)
measure() { # variant round
	case "$1" in
	pgfleet) "${OPS[@]}" -tool "$1" -round "$2" -url "$PGFURL" -direct "$PGFDIRECT" -- "$PGF" restart bench ;;
	patroni-rolling) "${OPS[@]}" -tool "$1" -round "$2" -url "$PATRONIURL" -direct "$PATRONIDIRECT" -- "${PATRONI[@]}" rolling ;;
	patroni-all) "${OPS[@]}" -tool "$1" -round "$2" -url "$PATRONIURL" -direct "$PATRONIDIRECT" -- "${PATRONI[@]}" restart-all ;;
	esac
}
for r in $(seq "$ROUNDS"); do
	for k in "${!variants[@]}"; do
		v="${variants[$(((k + r - 1) % ${#variants[@]}))]}"
		say "round $r: $v"
		measure "$v" "$r" || say "round $r: $v failed"
		sleep 2
	done
done
echo "end $(date -u +%FT%TZ) load $(load)" >>"$TMP/load.txt"
"$PGF" events bench >"$TMP/events.txt" 2>&1 || true

cleanup
python3 bench/operations/report.py "$RUNS" "$TMP/load.txt" "$ROUNDS" "$TMP/events.txt" "$TMP/patroni-logs" >"$TMP/operations.md"
cat "$TMP/operations.md"
