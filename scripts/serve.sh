#!/usr/bin/env bash
# The main job on a fresh machine: install build deps, build in release mode, and run
# `cra serve` with the committed default model (models/default) on 0.0.0.0:50051.
# Extra arguments go to `cra serve`, e.g. `scripts/serve.sh --listen 127.0.0.1:6000`.
#
# The decision log's database is --database-url, else DATABASE_URL, else
# postgres://postgres@127.0.0.1:5432/cra. When that server is on this machine (127.0.0.1,
# localhost, ::1) and psql cannot connect to it, serve.sh uses a PostgreSQL cluster of its own
# under ./.pgdata instead (another folder with CRA_PGDATA; scripts/pg.sh): created on the first
# run (installing Debian's postgresql if missing), kept between runs, listening on 127.0.0.1 only;
# the database keeps its name (`cra`). serve.sh starts that cluster before `cra serve` and stops it
# after `cra serve` exits (Ctrl-C); its data stays. A database on another host that cannot be
# reached is left to `cra serve`, which spools decisions until it is back.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
scripts/setup.sh
cargo build --release --locked --bin cra

url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/cra}
audit=${CRA_AUDIT:-on}
help=no
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --database-url) if [ $# -ge 2 ]; then url=$2; shift 2; continue; fi ;;
    --database-url=*) url=${1#*=}; shift; continue ;;
    --audit) [ $# -ge 2 ] && audit=$2 ;;
    --audit=*) audit=${1#*=} ;;
    -h | --help | -V | --version) help=yes ;;
  esac
  args+=("$1")
  shift
done

# postgres://user:pw@host:port/db?opts -> host
rest=${url#*://}
rest=${rest%%/*}
rest=${rest%%\?*}
host=${rest##*@}
case $host in
  \[*) host=${host%%]*}; host=${host#[} ;;
  *) host=${host%%:*} ;;
esac

PGDIR=${CRA_PGDATA:-.pgdata}
stop_pg=no
case $host in 127.* | localhost | ::1 | "") local_db=yes ;; *) local_db=no ;; esac
if [ "$audit" != off ] && [ "$help" = no ] && [ "$local_db" = yes ] && ! scripts/pg.sh usable "$url"; then
  db=${url#*://}
  db=${db#*/}
  [ "$db" != "${url#*://}" ] || db=""
  db=${db%%\?*}
  db=${db:-cra}
  scripts/pg.sh running "$PGDIR" || stop_pg=yes
  if [ "$stop_pg" = yes ]; then
    trap 'scripts/pg.sh stop "$PGDIR" && echo "serve.sh: stopped the PostgreSQL cluster in $PGDIR" >&2' EXIT
  fi
  server=$(scripts/pg.sh start "$PGDIR")
  echo "serve.sh: no usable PostgreSQL at $host; decisions go to the cluster in $PGDIR: $server/$db" >&2
  if [ "$stop_pg" = yes ]; then
    echo "serve.sh: the cluster stops when cra serve does (its data stays); to query it meanwhile: psql $server/$db" >&2
  fi
  url=$server/$db
fi
export DATABASE_URL=$url

[ "$stop_pg" = yes ] || exec cargo run --release --locked --bin cra -- serve "${args[@]}"

# Run cra in the background so that SIGTERM to this script reaches it too; stop the cluster only
# after cra has flushed its decision log and exited.
cargo run --release --locked --bin cra -- serve "${args[@]}" &
cra_pid=$!
trap 'kill -TERM "$cra_pid" 2>/dev/null || true' INT TERM
status=0
while :; do
  wait "$cra_pid" && status=0 || status=$?
  kill -0 "$cra_pid" 2>/dev/null || break
done
exit "$status"
