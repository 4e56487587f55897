#!/usr/bin/env bash
# End-to-end checks of the real `cra` binary with real clients, each against its own server and
# its own fresh PostgreSQL database (dropped afterwards):
#   1. tests/grpcurl.sh: grpcurl 1.8 through reflection (list, describe, Score, health, SIGTERM);
#   2. the Python grpcio client generated from proto/ (clients/python/score_client.py), after which
#      the server is stopped with SIGTERM and the decision log must hold exactly its 2 decisions;
#   3. the HTTP port: the original Flask service's own load script (tests/compat/
#      flask_stress_test.py, unchanged) against /predict, which must succeed for every request,
#      then tests/e2e_http.py: the OpenAPI document through openapi-spec-validator, and
#      tritonclient over gRPC and HTTP (raw and typed contents); the decision log must then hold
#      their rows as rpc rest and v2;
#   4. traces: tests/e2e_otel.py, a real OTLP receiver (opentelemetry-proto's TraceService) fed by
#      the server's --otlp-endpoint, with grpcurl and REST calls carrying W3C traceparents.
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
HTTP_PY=${HTTP_PYTHON:-.tools/venv-http/bin/python}
OTEL_PY=${OTEL_PYTHON:-.tools/venv-otel/bin/python}

# The binary runs as built: no LD_LIBRARY_PATH (without the trainer it links no libxgboost; with
# it, build.rs records libxgboost's folder as an rpath).
unset LD_LIBRARY_PATH

WORK=$(mktemp -d)
# One database per server; named here (not inside $(...), a subshell) so cleanup drops them.
DBS=("cra_e2e_$$_grpcurl" "cra_e2e_$$_python" "cra_e2e_$$_http" "cra_e2e_$$_otel")
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
echo "-- HTTP: the original's load script, OpenAPI, tritonclient"
DB_URL=$(fresh_db http)
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HTTP_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATABASE_URL="$DB_URL" "$CRA" serve --listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
  --spool-dir "$WORK/spool-http" --require-database >"$WORK/serve-http.log" 2>&1 &
PID=$!
ready=0
for _ in $(seq 1 150); do
  if curl -fsS "http://127.0.0.1:$HTTP_PORT/health" 2>/dev/null | grep -q '"healthy"'; then ready=1; break; fi
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve-http.log"; echo "e2e.sh: cra serve exited" >&2; exit 1; }
  sleep 0.2
done
[ "$ready" = 1 ] || { cat "$WORK/serve-http.log"; echo "e2e.sh: /health never answered healthy" >&2; exit 1; }
"$HTTP_PY" tests/compat/flask_stress_test.py --url "http://127.0.0.1:$HTTP_PORT" --requests 1000 \
  --concurrency 10 --json-out "$WORK/stress.json"
rate=$("$HTTP_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["success_rate"])' "$WORK/stress.json")
[ "$rate" = "1.0" ] || { echo "e2e.sh: the original's load script succeeded for $rate of its requests, not all" >&2; exit 1; }
echo "ok: the original's load script: 1000 of 1000 /predict requests succeeded"
"$HTTP_PY" tests/e2e_http.py --grpc "127.0.0.1:$PORT" --http "127.0.0.1:$HTTP_PORT"
kill -TERM "$PID"; wait "$PID"; PID=""
counts=$(psql -tAq "$DB_URL" -c "SELECT rpc || '=' || count(*) FROM decisions GROUP BY rpc ORDER BY rpc" | tr '\n' ' ')
echo "decision log: $counts"
rest=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM decisions WHERE rpc = 'rest'")
v2=$(psql -tAq "$DB_URL" -c "SELECT count(*) FROM decisions WHERE rpc = 'v2'")
# 1000 from the load script and 100 from e2e_http.py's REST batch; 100 + 100 over HTTP and 100 +
# 100 over gRPC through /v2 (the refused batch records its one bad row).
[ "$rest" -eq 1100 ] || { echo "e2e.sh: expected 1100 rest rows, got $rest" >&2; exit 1; }
[ "$v2" -eq 401 ] || { echo "e2e.sh: expected 401 v2 rows, got $v2" >&2; exit 1; }
echo "ok: the decision log holds every REST and V2 decision ($rest rest, $v2 v2)"

echo "-- traces: a real OTLP receiver"
DB_URL=$(fresh_db otel)
"$OTEL_PY" tests/e2e_otel.py --cra "$CRA" --database-url "$DB_URL" --grpcurl "$GRPCURL"
echo "e2e.sh: all end-to-end checks passed"
