# Sourced by demo.sh and test.sh: makes sure Go and PostgreSQL 15 are there,
# installing PostgreSQL from the distribution's packages when it is missing.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
if ! command -v go >/dev/null 2>&1; then
	say "Go is not installed: install Go 1.26 or newer (https://go.dev/doc/install) so that /usr/local/go/bin/go exists, then run this again"
	exit 1
fi

have_postgres() {
	for d in /usr/lib/postgresql/*/bin; do
		[ -x "$d/postgres" ] || continue
		v=$(basename "$(dirname "$d")")
		[ "${v%%.*}" -ge 15 ] 2>/dev/null && return 0
	done
	return 1
}

if ! have_postgres || ! command -v psql >/dev/null 2>&1; then
	say "installing PostgreSQL 15 (apt-get install postgresql-15)"
	# pgfleet runs its own instances: keep the package from creating and
	# starting a cluster of its own on port 5432.
	as_root mkdir -p /etc/postgresql-common
	if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
		echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
	fi
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
fi

# The S3 tests of internal/backup run against VersityGW, a real S3 server
# started on loopback. Built from the Go module proxy into $HOME/go/bin
# (on PATH above) only when it is missing, and not for the demo, which does
# not need it (the build takes a few minutes).
if [ "$(basename "$0")" != demo.sh ] && ! command -v versitygw >/dev/null 2>&1; then
	say "installing versitygw v1.8.0 (S3 test server) into \$HOME/go/bin"
	GOFLAGS=-mod=mod GOBIN="$HOME/go/bin" go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi

# The web console's browser test (TestConsole in cmd/pgfleet) drives a real
# Chromium; installed from the distribution when missing, and not for the
# demo, which does not need it.
if [ "$(basename "$0")" != demo.sh ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
	say "installing chromium (the web console's browser test)"
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
