#!/usr/bin/env bash
# Measures the web console (bench/results/console.md): the server time of
# the clusters page with 50 clusters in a real store (their specs, members
# and statuses; no postgres, which 50 clusters' worth a 2-core machine
# cannot run), and the CPU five idle consoles add over a minute while every
# member republishes its status each second. PGFLEET_BENCH_WINDOW=30s
# shortens the CPU windows.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
PGFLEET_BENCH=1 go test -count=1 -run '^TestBenchConsole$' -timeout 10m -v ./internal/console/ |
	grep -E '^(clusters page|GET /v1|CPU over)'
