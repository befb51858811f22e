#!/usr/bin/env bash
# The fault suite at length: FAULTS (default 250) faults in sync mode, then
# as many in asynchronous mode, on a three-host fleet in network namespaces.
# Writes bench/results/chaos.md. Needs root (network namespaces). About
# 20 s per fault.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
FAULTS="${FAULTS:-250}"
MODES="${MODES:-sync,async}"
go build -o bin/pgfleet ./cmd/pgfleet
say "fault suite: $FAULTS rounds per mode ($MODES); a round injects one fault or two at once"
go run ./bench/chaos -faults "$FAULTS" -modes "$MODES" ${SEED:+-seed "$SEED"}
cat bench/results/chaos.md
