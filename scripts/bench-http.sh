#!/usr/bin/env bash
# CRA's HTTP port and Open Inference Protocol against the original Flask service, in one sitting
# on one machine, loopback only, independent load generators:
#   1. POST /predict with wrk (-t2, CONNECTIONS connections, DURATION), the original's example
#      body, against: the original as it ships (gunicorn -w 2), the original in its best
#      configuration (the same with OMP_NUM_THREADS=1 in the workers), and CRA with the decision
#      log on (a fresh PostgreSQL database);
#   2. POST /predict/batch with BATCH applications per request (wrk, BATCH_CONNECTIONS
#      connections), the same three;
#   3. Open Inference Protocol ModelInfer over gRPC, BATCH rows per request, with h2load
#      (V2_CLIENTS connections, V2_STREAMS requests in flight on each), CRA with the decision log
#      off and on, and, for comparison with the log on, a ScoreBatch stream in the same sitting
#      (`cra bench --mode stream`, BATCH applications per message).
#
#   scripts/bench-http.sh PEER_DIR [CRA_BIN]     results go to results/http-<UTC time>/
# PEER_DIR: the original service's folder, its venv in PEER_DIR/.venv and its trained model in
# PEER_DIR/models (its bench.sh sets both up). CRA_BIN: default target/release/cra.
# env: DURATION (10s), CONNECTIONS (64), BATCH (1000), BATCH_CONNECTIONS (4), V2_CLIENTS (2),
#      V2_STREAMS (4), V2_REQUESTS (3000), PG_SERVER (postgres://postgres@127.0.0.1:5432),
#      HTTP_PYTHON (.tools/venv-http/bin/python, for the bodies; scripts/setup.sh --test)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
PEER=$(readlink -f "$1")
CRA=$(readlink -f "${2:-target/release/cra}")
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
BATCH=${BATCH:-1000}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-4}
V2_CLIENTS=${V2_CLIENTS:-2}
V2_STREAMS=${V2_STREAMS:-4}
V2_REQUESTS=${V2_REQUESTS:-3000}
PG_SERVER=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
HTTP_PY=${HTTP_PYTHON:-.tools/venv-http/bin/python}
for tool in wrk h2load psql; do
  command -v "$tool" >/dev/null || { echo "bench-http.sh: $tool is missing (apt-get install wrk nghttp2-client postgresql-client)" >&2; exit 1; }
done
[ -x "$PEER/.venv/bin/gunicorn" ] || { echo "bench-http.sh: no $PEER/.venv/bin/gunicorn: run the peer's bench.sh once to set it up" >&2; exit 1; }
OUT=results/http-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
"$HTTP_PY" scripts/http-bodies.py "$OUT" "$BATCH" >/dev/null
PEER_PORT=5077
GRPC_PORT=50591
HTTP_PORT=8591
PID=""
DB=""
SPOOL=""
stop() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
  if [ -n "$DB" ]; then psql -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; DB=""; fi
  if [ -n "$SPOOL" ]; then rm -rf "$SPOOL"; SPOOL=""; fi
}
trap stop EXIT
# A wrk script posting FILE's content.
lua() {
  cat >"$OUT/$1.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$OUT/$2", "rb"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format("LUA_SUMMARY requests=%d duration_us=%d errors_status=%d\n",
    summary.requests, summary.duration, summary.errors.status))
end
LUA
}
lua predict predict.json
lua batch batch.json
wait_http() { # URL
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || { echo "bench-http.sh: the server exited" >&2; return 1; }
    sleep 0.1
  done
  echo "bench-http.sh: $1 never answered" >&2; return 1
}
# wrk NAME URL SCRIPT CONNECTIONS: requests/s, and non-2xx responses (must be 0).
run_wrk() {
  local name=$1 url=$2 script=$3 c=$4
  timeout 120 wrk -t2 -c"$c" -d"$DURATION" --timeout 10s --latency -s "$OUT/$script.lua" "$url" >"$OUT/$name.txt" 2>&1
  local rps errs p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$OUT/$name.txt")
  errs=$(sed -n 's/.*errors_status=\([0-9]*\).*/\1/p' "$OUT/$name.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$OUT/$name.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$OUT/$name.txt")
  echo "$name: $rps requests/s (non-2xx: ${errs:-?}; latency p50 $p50, p99 $p99)" | tee -a "$OUT/summary.txt"
}
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "cra: $CRA ($("$CRA" --version))"
  echo "wrk: -t2 -c$CONNECTIONS -d$DURATION (/predict), -c$BATCH_CONNECTIONS ($BATCH per batch); h2load: -c$V2_CLIENTS -m$V2_STREAMS -n$V2_REQUESTS"
} | tee "$OUT/summary.txt"

peer() { # NAME [ENV...]
  local name=$1; shift
  (cd "$PEER" && env "$@" .venv/bin/gunicorn -w 2 -b "127.0.0.1:$PEER_PORT" --no-control-socket app.api:app) >"$OUT/$name-server.log" 2>&1 &
  PID=$!
  wait_http "http://127.0.0.1:$PEER_PORT/health"
  run_wrk "$name-predict" "http://127.0.0.1:$PEER_PORT/predict" predict "$CONNECTIONS"
  run_wrk "$name-batch" "http://127.0.0.1:$PEER_PORT/predict/batch" batch "$BATCH_CONNECTIONS"
  stop
}
echo "== the original, as it ships (gunicorn -w 2)" | tee -a "$OUT/summary.txt"
peer original
echo "== the original, best configuration (gunicorn -w 2, OMP_NUM_THREADS=1)" | tee -a "$OUT/summary.txt"
peer original-omp1 OMP_NUM_THREADS=1

cra() { # AUDIT
  DB=cra_http_$$_$1
  SPOOL=$(mktemp -d)
  "$CRA" serve --listen "127.0.0.1:$GRPC_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
    --audit "$1" --database-url "$PG_SERVER/$DB" --spool-dir "$SPOOL" \
    --max-concurrent-requests 4096 >"$OUT/cra-$1-server.log" 2>&1 &
  PID=$!
  wait_http "http://127.0.0.1:$HTTP_PORT/health"
}
h2v2() { # NAME
  local name=$1
  timeout 300 h2load -n "$V2_REQUESTS" -c "$V2_CLIENTS" -m "$V2_STREAMS" -d "$OUT/v2.grpc" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$GRPC_PORT/inference.GRPCInferenceService/ModelInfer" >"$OUT/$name.txt" 2>&1
  local rps ok bytes
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$OUT/$name.txt")
  ok=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$OUT/$name.txt")
  bytes=$(sed -n 's/^traffic: .*, \([0-9]*\)B ([0-9]*) data.*/\1/p;s/^traffic: .* (\([0-9]*\)) data.*/\1/p' "$OUT/$name.txt" | tail -1)
  echo "$name: $rps requests/s of $BATCH rows = $(awk -v r="$rps" -v b="$BATCH" 'BEGIN {printf "%.0f", r * b}') rows/s ($ok of $V2_REQUESTS succeeded, $bytes bytes of answers)" | tee -a "$OUT/summary.txt"
}
echo "== CRA, decision log on" | tee -a "$OUT/summary.txt"
cra on
run_wrk cra-predict "http://127.0.0.1:$HTTP_PORT/predict" predict "$CONNECTIONS"
run_wrk cra-batch "http://127.0.0.1:$HTTP_PORT/predict/batch" batch "$BATCH_CONNECTIONS"
h2v2 cra-v2-log-on
"$CRA" bench --addr "http://127.0.0.1:$GRPC_PORT" --mode stream --connections "$V2_CLIENTS" \
  --concurrency "$((V2_CLIENTS * V2_STREAMS))" --chunk "$BATCH" --duration "$DURATION" >"$OUT/cra-stream-log-on.txt" 2>&1
echo "cra-stream-log-on: $(grep -i 'throughput' "$OUT/cra-stream-log-on.txt" | head -1)" | tee -a "$OUT/summary.txt"
rows=$(psql -tAq "$PG_SERVER/$DB" -c "SELECT rpc || '=' || count(*) FROM decisions GROUP BY rpc ORDER BY rpc" | tr '\n' ' ')
echo "decision log rows (so far; the rest are flushed at shutdown): $rows" | tee -a "$OUT/summary.txt"
stop
echo "== CRA, decision log off" | tee -a "$OUT/summary.txt"
cra off
h2v2 cra-v2-log-off
run_wrk cra-predict-log-off "http://127.0.0.1:$HTTP_PORT/predict" predict "$CONNECTIONS"
stop
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
echo "results in $OUT"
