#!/usr/bin/env bash
# Builds pgfleet and runs its main job on this machine: a local fleet of five
# hosts in three regions (iad x3, ams, syd) and a cluster "demo" in it with a
# primary and two standbys in iad and a read replica in ams and in syd.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

say "building bin/pgfleet"
go build -o bin/pgfleet ./cmd/pgfleet

say "starting the dev fleet"
bin/pgfleet dev up

if bin/pgfleet status demo >/dev/null 2>&1; then
	say "cluster demo exists already"
else
	say "creating cluster demo"
	bin/pgfleet create demo --primary-region iad --ha 3 --replicas ams,syd --wait
fi
bin/pgfleet status demo

cat <<MSG

pgfleet is running. Try:
  export PATH=\$PWD/bin:\$PATH
  pgfleet connect demo                       # psql on the primary, through iad's proxies
  pgfleet connect demo --region syd --replica   # psql on the nearest replica from syd
  pgfleet url demo                           # a libpq URL for your app (through the proxies)
  pgfleet url demo --region ams              # the same from the ams region
  pgfleet dev down                           # stop it all (--purge deletes the data)
MSG
