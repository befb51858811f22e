#!/usr/bin/env bash
# The web console's idle cost in a real agent: a dev fleet (iad:3,ams) with
# CLUSTERS clusters (default 4: a primary and a standby in iad, a replica in
# ams), then the CPU time of iad-1's agent process (/proc, user + system)
# over WINDOW seconds (default 60) without a console, and over the same
# window with five consoles open on iad-1's clusters page (curl holding the
# live streams), then again without (the consoles closed): the two windows
# without tell the noise. Prints all three, in % of one core.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
CLUSTERS=${CLUSTERS:-4}
WINDOW=${WINDOW:-60}
NET=${NET:-77}
go build -o bin/pgfleet ./cmd/pgfleet
work=$(mktemp -d /tmp/pgfleet-console-bench.XXXXXX)
chmod 755 "$work"
export PGFLEET_HOME=$work/home
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	bin/pgfleet dev down --dir "$work/fleet" --purge >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
bin/pgfleet dev up --dir "$work/fleet" --net "$NET" --regions iad:3,ams >/dev/null
for i in $(seq 1 "$CLUSTERS"); do
	bin/pgfleet create "db$i" --primary-region iad --ha 2 --replicas ams --wait >/dev/null
done
api="https://127.$NET.1.1:7480"
ca=$work/fleet/iad-1/tls/ca.crt
token=$(cat "$work/fleet/iad-1/token")
pid=$(cat "$work/fleet/iad-1.pid")
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
measure() {
	local a b
	a=$(ticks)
	sleep "$WINDOW"
	b=$(ticks)
	awk -v d=$((b - a)) -v hz="$hz" -v w="$WINDOW" 'BEGIN { printf "%.2f", 100 * d / hz / w }'
}
sleep 5 # the fleet settles after the last create
without=$(measure)
jar=$work/cookies
csrf=$(curl -sS --cacert "$ca" -c "$jar" "$api/signin" | sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p')
curl -sS --cacert "$ca" -b "$jar" -c "$jar" -o /dev/null -H "Origin: $api" \
	--data-urlencode "csrf=$csrf" --data-urlencode "token=$token" "$api/signin"
for _ in 1 2 3 4 5; do
	curl -sSN --cacert "$ca" -b "$jar" "$api/live?page=clusters" >/dev/null &
	pids+=($!)
done
sleep 5 # the streams' first events
with=$(measure)
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()
after=$(measure)
echo "iad-1's agent, $CLUSTERS clusters ($((CLUSTERS * 3)) members), ${WINDOW}s windows, % of a core: without a console ${without}; with 5 idle consoles ${with}; without again ${after}; extra $(awk -v a="$with" -v b="$without" -v c="$after" 'BEGIN { printf "%.2f", a - (b + c) / 2 }')"
