#!/usr/bin/env bash
# Set-up command 2: install everything the tests need, start the services they use (Apache Kafka
# in KRaft mode, PostgreSQL), run the whole suite, stop the services. Fails loudly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GPUCOST_INSTALL_TEST_DEPS=1
source "$ROOT/scripts/install.sh"
cd "$ROOT"

WORK="$(mktemp -d /tmp/gpucost-test.XXXXXX)"
export GPUCOST_DATA_DIR="$WORK/data"          # the broker's storage and default SQLite live here
PG_DIR="$WORK/pg"; PG_PORT="${GPUCOST_TEST_PG_PORT:-55432}"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
RUN_AS=""; [ "$(id -u)" = 0 ] && RUN_AS="runuser -u postgres --"

cleanup() {
  status=$?
  echo "==> stopping services"
  gpucost kafka stop || true
  if [ -f "$PG_DIR/postmaster.pid" ]; then $RUN_AS "$PG_BIN/pg_ctl" -D "$PG_DIR" -m fast stop >/dev/null || true; fi
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT

echo "==> starting Kafka (KRaft, one node)"
gpucost kafka start

echo "==> starting PostgreSQL on port $PG_PORT"
mkdir -p "$PG_DIR"; [ -n "$RUN_AS" ] && chown postgres "$WORK" "$PG_DIR"
$RUN_AS "$PG_BIN/initdb" -D "$PG_DIR" -U postgres --auth=trust -E UTF8 >/dev/null
$RUN_AS "$PG_BIN/pg_ctl" -D "$PG_DIR" -l "$PG_DIR/server.log" -w \
  -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
export GPUCOST_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/postgres"
export GPUCOST_TEST_REQUIRE_PG=1

echo "==> pytest"
set +e
python -m pytest -q -p no:cacheprovider -o console_output_style=classic --durations=15 "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit $rc
