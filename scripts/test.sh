#!/usr/bin/env bash
# Runs pgfleet's whole test suite: unit tests, and integration tests that
# start real PostgreSQL and etcd (embedded) on loopback addresses.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

say "go vet"
go vet ./...
say "go test (integration tests start real postgres and etcd)"
# Two packages at a time: each integration test runs several postgres
# instances, and the suite must stay quick on a 2-core machine.
go test -p 2 -count=1 -timeout 25m "$@" ./...
