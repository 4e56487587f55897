#!/usr/bin/env bash
# A PostgreSQL cluster of CRA's own, for machines where DATABASE_URL reaches no usable server:
# scripts/test.sh starts a throwaway one in a temporary folder, scripts/serve.sh a lasting one
# under .pgdata.
#
#   scripts/pg.sh usable URL     exit 0 if psql can connect to URL's database, or to the database
#                                `postgres` of the same server (URL's database may not exist yet)
#   scripts/pg.sh start DIR      create a cluster in DIR unless there is one, start it unless it
#                                runs, and print its server URL: postgres://postgres@127.0.0.1:PORT
#   scripts/pg.sh stop DIR       stop the cluster in DIR if it runs (its data stays)
#   scripts/pg.sh running DIR    exit 0 if the cluster in DIR runs
#
# The cluster in DIR: DIR/data (initdb: superuser `postgres`, trust authentication, UTF8),
# DIR/postgresql.log, the Unix socket in DIR; it listens on 127.0.0.1 only, on a free port that is
# kept in DIR/port and changed only when another process has taken it. It leaves every other
# PostgreSQL server on the machine alone.
#
# When no PostgreSQL server binaries (initdb, pg_ctl) are found, `start` installs Debian's
# `postgresql` package with apt-get (with sudo unless run as root). The package may create and
# start Debian's own cluster (`main`, port 5432 or the next free one); CRA does not use it.
# PostgreSQL refuses to run as root: run as root, the cluster belongs to the system user
# `postgres` (the package's; created if missing; another with CRA_PG_OS_USER), which must be able
# to reach DIR. PG_BINDIR names the folder of the server binaries when they are not Debian's
# /usr/lib/postgresql/<version>/bin or on PATH.
set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }

# Runs a command quietly; on failure shows its output and fails.
quiet() {
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    die "failed: $*"
  fi
}

# postgres://user@host:port/db?x -> postgres://user@host:port
server_of() {
  local rest=${1#*://}
  rest=${rest%%/*}
  echo "${1%%://*}://${rest%%\?*}"
}

usable() {
  command -v psql >/dev/null || die "psql is missing (scripts/setup.sh installs postgresql-client)"
  local url=$1
  PGCONNECT_TIMEOUT=3 psql -X -q -w -At -d "$url" -c 'SELECT 1' >/dev/null 2>&1 && return 0
  PGCONNECT_TIMEOUT=3 psql -X -q -w -At -d "$(server_of "$url")/postgres" -c 'SELECT 1' >/dev/null 2>&1
}

# The directory of initdb/pg_ctl/postgres: PG_BINDIR, else Debian's newest
# /usr/lib/postgresql/<version>/bin (the version DIR's cluster was made with, if there is one),
# else initdb on PATH. Empty if none.
find_bindir() {
  local want=${1:-} d v
  if [ -n "${PG_BINDIR:-}" ]; then echo "$PG_BINDIR"; return; fi
  if [ -n "$want" ]; then
    [ -x "/usr/lib/postgresql/$want/bin/initdb" ] && echo "/usr/lib/postgresql/$want/bin"
    return
  fi
  for v in $(ls /usr/lib/postgresql 2>/dev/null | sort -rV); do
    d=/usr/lib/postgresql/$v/bin
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then echo "$d"; return; fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"
  fi
}

install_postgresql() {
  command -v apt-get >/dev/null \
    || die "no PostgreSQL server (initdb, pg_ctl) and no apt-get to install one: install PostgreSQL, or set DATABASE_URL to a running server"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "PostgreSQL is not installed and installing it needs root: run 'apt-get install postgresql' as root, or set DATABASE_URL to a running server"
    sudo=(sudo)
  fi
  echo "pg.sh: installing PostgreSQL from Debian (apt-get install postgresql)" >&2
  quiet "${sudo[@]}" apt-get update -qq
  quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
}

# The OS user that runs the cluster: ourselves; when we are root (PostgreSQL refuses to run as
# root), the owner of DIR/data if there is one, else CRA_PG_OS_USER (default `postgres`).
OS_USER=""
pick_os_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  local owner=""
  [ -d "$DIR/data" ] && owner=$(stat -c %U "$DIR/data")
  if [ -n "$owner" ] && [ "$owner" != root ]; then OS_USER=$owner; else OS_USER=${CRA_PG_OS_USER:-postgres}; fi
}

# Creates OS_USER if it is missing (only after the postgresql package had its chance to).
ensure_os_user() {
  [ -n "$OS_USER" ] || return 0
  id -u "$OS_USER" >/dev/null 2>&1 && return 0
  echo "pg.sh: creating the system user $OS_USER (PostgreSQL does not run as root)" >&2
  quiet useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
    --shell /bin/bash "$OS_USER"
}

# Runs a command as the cluster's OS user, from / (initdb and pg_ctl need a readable cwd).
as_pg() {
  if [ -n "$OS_USER" ]; then
    (cd / && runuser -u "$OS_USER" -- "$@")
  else
    (cd / && "$@")
  fi
}

# The cluster's folder DIR (absolute) and BINDIR, the server binaries for it; with "make", DIR is
# created if missing.
DIR=""
BINDIR=""
locate() {
  [ -n "${1:-}" ] || die "usage: pg.sh start|stop|running DIR"
  if [ "${2:-}" = make ]; then mkdir -p "$1"; fi
  DIR=$(readlink -m "$1")
  pick_os_user
  local version=""
  [ -f "$DIR/data/PG_VERSION" ] && version=$(cat "$DIR/data/PG_VERSION")
  BINDIR=$(find_bindir "$version")
  if [ -z "$BINDIR" ] && [ -n "$version" ]; then
    die "the cluster in $DIR was made by PostgreSQL $version, whose server is not installed: install postgresql-$version, or delete $DIR to start afresh"
  fi
}

is_running() {
  [ -f "$DIR/data/PG_VERSION" ] && [ -n "$BINDIR" ] \
    && as_pg "$BINDIR/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1
}

running_port() { sed -n 4p "$DIR/data/postmaster.pid"; }

# A port in 20000-32767 (below Linux's ephemeral range) where nothing listens on 127.0.0.1.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12768))
    if ! timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then echo "$p"; return; fi
  done
  die "found no free port in 20000-32767"
}

create() {
  if [ -z "$BINDIR" ]; then
    install_postgresql
    BINDIR=$(find_bindir)
    [ -n "$BINDIR" ] || die "installed postgresql, but found no initdb under /usr/lib/postgresql/*/bin"
  fi
  ensure_os_user
  [ -z "$(ls -A "$DIR/data" 2>/dev/null)" ] || die "$DIR/data exists, is not empty and is not a cluster: move it away"
  if [ -n "$OS_USER" ]; then
    chown -R "$OS_USER:" "$DIR"
    as_pg test -w "$DIR" || die "the user $OS_USER, which runs PostgreSQL for root, cannot write to $DIR (is a parent folder closed to others?): run as another user, or choose a folder it can reach (serve.sh: CRA_PGDATA)"
  fi
  echo "pg.sh: creating a PostgreSQL cluster in $DIR (PostgreSQL $(basename "$(dirname "$BINDIR")"))" >&2
  quiet as_pg "$BINDIR/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C
  # The socket path must fit in 107 bytes; without one, pg_ctl and every client use TCP anyway.
  local sockdir=$DIR
  [ ${#DIR} -le 90 ] || sockdir=""
  cat >>"$DIR/data/postgresql.conf" <<EOF

# scripts/pg.sh: local connections over TCP only; the port is given at start (DIR/port)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockdir'
EOF
}

start() {
  locate "${1:-}" make
  if is_running; then
    echo "postgres://postgres@127.0.0.1:$(running_port)"
    return
  fi
  [ -f "$DIR/data/PG_VERSION" ] || create
  local port="" out=""
  [ -f "$DIR/port" ] && port=$(cat "$DIR/port")
  for _ in $(seq 1 10); do
    if [ -z "$port" ] || timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
      port=$(free_port)
    fi
    echo "$port" >"$DIR/port"
    if out=$(as_pg "$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/postgresql.log" -o "-p $port" -w -t 120 \
         start 2>&1); then
      echo "postgres://postgres@127.0.0.1:$port"
      return
    fi
    # Another process may have taken the port between the check and the start: try another.
    if tail -n 5 "$DIR/postgresql.log" 2>/dev/null | grep -q 'could not bind\|Address already in use\|could not create any TCP/IP sockets'; then
      port=""
      continue
    fi
    break
  done
  printf '%s\n' "$out" >&2
  tail -n 20 "$DIR/postgresql.log" >&2 2>/dev/null || true
  die "could not start the PostgreSQL cluster in $DIR (log: $DIR/postgresql.log)"
}

stop() {
  locate "${1:-}"
  if is_running; then
    quiet as_pg "$BINDIR/pg_ctl" -D "$DIR/data" -m fast -w -t 60 stop
  fi
}

case "${1:-}" in
  usable) [ -n "${2:-}" ] || die "usage: pg.sh usable URL"; usable "$2" ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  running) locate "${2:-}"; is_running ;;
  *) die "usage: pg.sh usable URL | start DIR | stop DIR | running DIR" ;;
esac
