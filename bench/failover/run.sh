#!/usr/bin/env bash
# Failover benchmark: pgfleet (lease TTL 3 s and 2 s) and Patroni (defaults
# and its most aggressive valid tuning) in one run on this machine. Writes
# bench/results/failover.md. ITERS (default 10) repetitions of each pgfleet
# fault; PATRONI_ITERS (default 5) of each Patroni mode.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
ITERS="${ITERS:-10}"
PATRONI_ITERS="${PATRONI_ITERS:-5}"
mkdir -p bench/tmp
go build -o bin/pgfleet ./cmd/pgfleet

say "Patroni (defaults and aggressive), $PATRONI_ITERS each"
PEERS_RESULTS="$PWD/bench/tmp/peers" MODES="default aggressive" ITERS="$PATRONI_ITERS" \
	bash ../shared/peers/patroni-failover.sh >bench/tmp/patroni.log 2>&1 || {
	tail -20 bench/tmp/patroni.log; exit 1; }

for ttl in 3 2; do
	say "pgfleet, lease TTL ${ttl}s, $ITERS of each fault"
	go run ./bench/failover -ttl "$ttl" -iters "$ITERS" -out "bench/tmp/pgfleet-ttl$ttl.json"
done
say "pgfleet, lease TTL 3s, sync on, $ITERS host losses"
go run ./bench/failover -ttl 3 -sync on -iters "$ITERS" -out bench/tmp/pgfleet-sync.json
go run ./bench/failover -report bench/tmp/pgfleet-ttl3.json,bench/tmp/pgfleet-ttl2.json,bench/tmp/pgfleet-sync.json -peers bench/tmp/peers
cat bench/results/failover.md
