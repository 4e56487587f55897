#!/usr/bin/env bash
# Checks of scripts/pg.sh, the PostgreSQL cluster that scripts/test.sh and scripts/serve.sh start
# when DATABASE_URL reaches no usable server: a port where nothing listens is not usable; a cluster
# is created, listens on 127.0.0.1 only with trust authentication for `postgres`, is reused with
# its data after a stop, and stops. Prints one "ok: ..." line per check.
#   tests/pg_cluster.sh
# Needs psql (scripts/setup.sh). Without PostgreSQL's server binaries (initdb) it says so and
# checks nothing more: scripts/pg.sh would install Debian's postgresql.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
fail() { echo "pg_cluster.sh: FAILED: $*" >&2; exit 1; }

[ -x scripts/pg.sh ] || fail "scripts/pg.sh is missing"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/cra-pg-check.XXXXXX")
cleanup() { scripts/pg.sh stop "$DIR" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

# A port where nothing listens.
port=1
while timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; do port=$((port + 1)); done
if scripts/pg.sh usable "postgres://postgres@127.0.0.1:$port/cra"; then
  fail "pg.sh usable says yes for 127.0.0.1:$port, where nothing listens"
fi
echo "ok: pg.sh usable: no for a port where nothing listens"

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "pg_cluster.sh: no PostgreSQL server binaries here; skipping the cluster checks"
  exit 0
fi

url=$(scripts/pg.sh start "$DIR")
[[ $url =~ ^postgres://postgres@127\.0\.0\.1:[0-9]+$ ]] || fail "pg.sh start printed '$url'"
scripts/pg.sh running "$DIR" || fail "pg.sh running says no after start"
scripts/pg.sh usable "$url/cra" || fail "pg.sh usable says no for the cluster it started"
q() { PGCONNECT_TIMEOUT=5 psql -X -q -w -At -d "$url/postgres" -c "$1"; }
[ "$(q 'SHOW listen_addresses')" = 127.0.0.1 ] || fail "listen_addresses is $(q 'SHOW listen_addresses')"
[ "$(q 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user')" = t ] || fail "postgres is not a superuser"
[ "$(q 'SHOW server_encoding')" = UTF8 ] || fail "encoding is $(q 'SHOW server_encoding')"
q 'CREATE DATABASE cra_check' && q 'DROP DATABASE cra_check' || fail "cannot create a database"
echo "ok: pg.sh start: a cluster on 127.0.0.1 only, trust for the superuser postgres, UTF8"

[ "$(scripts/pg.sh start "$DIR")" = "$url" ] || fail "a second start did not give the running cluster's URL"
q 'CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)'
scripts/pg.sh stop "$DIR"
! scripts/pg.sh running "$DIR" || fail "pg.sh running says yes after stop"
! scripts/pg.sh usable "$url/postgres" || fail "the cluster still answers after stop"
url=$(scripts/pg.sh start "$DIR")
[ "$(q 'SELECT x FROM kept')" = 42 ] || fail "the data did not survive a stop and a start"
scripts/pg.sh stop "$DIR"
echo "ok: pg.sh stop, then start: the same cluster with its data"

# The folders the scripts write into are not committed.
for p in .pgdata/x spool/x; do git check-ignore -q "$p" || fail "$p is not ignored by git"; done
echo "ok: .pgdata/ and spool/ are ignored by git"
