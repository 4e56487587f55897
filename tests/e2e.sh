#!/usr/bin/env bash
# End-to-end checks of the real `cra` binary with real clients, each against its own server and
# its own fresh PostgreSQL database (dropped afterwards):
#   1. tests/grpcurl.sh: grpcurl 1.8 through reflection (list, describe, Score, health, SIGTERM);
#   2. the Python grpcio client generated from proto/ (clients/python/score_client.py), after which
#      the server is stopped with SIGTERM and the decision log must hold exactly its 2 decisions.
#
#   tests/e2e.sh [path/to/cra]      (default: target/debug/cra)
# Needs scripts/setup.sh --test (grpcurl, the Python venv) and PostgreSQL at DATABASE_URL's server
# (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
# Servers started here listen for HTTP on any free port (not the default 8080), so that they
# never collide with each other or with a server already running.
export CRA_HTTP_LISTEN=${CRA_HTTP_LISTEN:-127.0.0.1:0}
cd "$(dirname "$(readlink -f "$0")")/.."
CRA=$(readlink -f "${1:-target/debug/cra}")
[ -x "$CRA" ] || { echo "e2e.sh: $CRA is not built (cargo build)" >&2; exit 1; }
PG=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_SERVER=${PG%/*}
PY=${PYTHON:-.tools/venv/bin/python}

# The binary runs as built: no LD_LIBRARY_PATH (without the trainer it links no libxgboost; with
# it, build.rs records libxgboost's folder as an rpath).
unset LD_LIBRARY_PATH

WORK=$(mktemp -d)
# One database per server; named here (not inside $(...), a subshell) so cleanup drops them.
DBS=("cra_e2e_$$_grpcurl" "cra_e2e_$$_python")
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  for db in "${DBS[@]}"; do psql -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
fresh_db() { echo "$PG_SERVER/cra_e2e_$$_$1"; }

echo "-- grpcurl"
DATABASE_URL=$(fresh_db grpcurl) CRA_SPOOL_DIR="$WORK/spool-grpcurl" REQUIRE_GRPCURL=1 \
  tests/grpcurl.sh "$CRA"

echo "-- Python grpcio client"
DB_URL=$(fresh_db python)
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATABASE_URL="$DB_URL" "$CRA" serve --listen "127.0.0.1:$PORT" --spool-dir "$WORK/spool-python" \
  --require-database >"$WORK/serve.log" 2>&1 &
PID=$!
GRPCURL=${GRPCURL:-$(command -v grpcurl || echo .tools/bin/grpcurl)}
ready=0
for _ in $(seq 1 150); do
  if "$GRPCURL" -plaintext -max-time 2 -d '{"service":"creditrisk.v1.CreditRiskService"}' \
       "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then ready=1; break; fi
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve.log"; echo "e2e.sh: cra serve exited" >&2; exit 1; }
  sleep 0.2
done
[ "$ready" = 1 ] || { cat "$WORK/serve.log"; echo "e2e.sh: server never became ready" >&2; exit 1; }
before=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM decisions")
"$PY" clients/python/score_client.py --addr "127.0.0.1:$PORT"
kill -TERM "$PID"; wait "$PID"; PID=""
after=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM decisions")
rows=$(psql -tAq "$DB_URL" -c "SELECT outcome || ':' || coalesce(application_id, '') FROM decisions ORDER BY decided_at DESC LIMIT 2" | sort | tr '\n' ' ')
echo "decision log: $before rows before the client, $after after ($rows)"
[ $((after - before)) -eq 2 ] || { echo "e2e.sh: expected 2 new decisions, got $((after - before))" >&2; exit 1; }
grep -q "invalid:" <<<"$rows" && grep -q "ok:python-client-1" <<<"$rows" \
  || { echo "e2e.sh: decision rows do not match the client's calls: $rows" >&2; exit 1; }
echo "e2e.sh: all end-to-end checks passed"
