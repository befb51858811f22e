#!/usr/bin/env bash
# Idle cost of pgfleet's agents: a dev fleet of five hosts (iad:3,ams,syd,
# three of them store voters), CLUSTERS clusters placed on it (a primary
# and a standby in iad, a replica in ams), no client traffic. Measures each
# agent's share of one core and its resident memory over IDLE seconds
# (default 600), after SETTLE seconds (default 30) for the fleet to calm
# down, and takes a 30 s CPU profile and a heap profile of a voter that
# runs a primary (`go tool pprof -top`). Writes bench/results/agent.md and
# bench/results/agent-profile-{cpu,heap}.txt; LABEL (default: the commit)
# names the run in them.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
IDLE="${IDLE:-600}"
SETTLE="${SETTLE:-30}"
CLUSTERS="${CLUSTERS:-5}"
NET="${NET:-198}"
LABEL="${LABEL:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench' || echo +)}"

TMP="$PWD/bench/tmp/agent"
FLEET="$TMP/fleet"
export PGFLEET_HOME="$TMP/home"
PGF="$PWD/bin/pgfleet"
cleanup() { "$PGF" dev down --dir "$FLEET" --purge >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
go build -o bin/pgfleet ./cmd/pgfleet
cleanup
rm -rf "$TMP"
mkdir -p "$TMP" "$PGFLEET_HOME"
chmod 755 "$TMP"

say "dev fleet (iad:3,ams,syd) and $CLUSTERS clusters"
"$PGF" dev up --dir "$FLEET" --regions iad:3,ams,syd --net "$NET" >/dev/null
for i in $(seq 1 "$CLUSTERS"); do
	"$PGF" create "idle$i" --primary-region iad --ha 2 --replicas ams --wait >/dev/null
done
sleep "$SETTLE" # the fleet's first backups and catch-up are not idle cost

args=()
for f in "$FLEET"/*.pid; do
	args+=("$(basename "$f" .pid)=$(head -1 "$f")")
done
# The CPU profile is taken of the first host, a voter, in the middle of the
# window; its own cost (a few ms) lands in that agent's figure.
API="$(python3 -c 'import json,os;print(json.load(open(os.environ["PGFLEET_HOME"]+"/config.json"))["endpoints"][0])')"
TOKEN="$(python3 -c 'import json,os;print(json.load(open(os.environ["PGFLEET_HOME"]+"/config.json"))["token"])')"
CA="$TMP/ca.pem"
python3 -c 'import json,os;print(json.load(open(os.environ["PGFLEET_HOME"]+"/config.json"))["ca"])' >"$CA"
say "idle for ${IDLE}s: sampling CPU and memory of ${#args[@]} agents"
python3 bench/agent/sample.py "$IDLE" 10 "${args[@]}" >"$TMP/sample.json" &
sampler=$!
sleep $((IDLE / 2 > 30 ? IDLE / 2 - 30 : 0))
curl -fsS --cacert "$CA" -H "Authorization: Bearer $TOKEN" "https://$API/debug/pprof/profile?seconds=30" -o "$TMP/cpu.pprof"
curl -fsS --cacert "$CA" -H "Authorization: Bearer $TOKEN" "https://$API/debug/pprof/heap" -o "$TMP/heap.pprof"
wait "$sampler"

mkdir -p bench/results
{
	echo "# CPU profile of an idle agent ($LABEL): 30 s, the first host of the dev fleet"
	echo
	go tool pprof -top -nodecount=40 bin/pgfleet "$TMP/cpu.pprof" 2>/dev/null
} >bench/results/agent-profile-cpu.txt
{
	echo "# Heap profile of an idle agent ($LABEL): in-use space, the first host of the dev fleet"
	echo
	go tool pprof -top -sample_index=inuse_space -nodecount=40 bin/pgfleet "$TMP/heap.pprof" 2>/dev/null
} >bench/results/agent-profile-heap.txt
python3 bench/agent/report.py "$TMP/sample.json" "$LABEL" "$CLUSTERS" | tee "$TMP/report.md"
cp "$TMP/report.md" bench/results/agent.md
