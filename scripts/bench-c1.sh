#!/usr/bin/env bash
# Like for like at concurrency 1, in one sitting, loopback only: one client sending one
# application at a time to the seed-flask peer (gunicorn -w 2, as it ships, `/predict`) and to
# CRA (`Score`, decision log on). For each: client latency, the service's own per-call time
# (the peer's `processing_time_ms`, CRA's `processing_time`: both the handler's time, not
# decode and encode), and the server processes' CPU time per call (utime + stime from /proc,
# summed over the peer's gunicorn master and workers).
#
#   scripts/bench-c1.sh PEER_DIR [CRA_BIN]      results go to results/c1-<UTC time>/
# PEER_DIR must hold a trained model (models/credit_risk_model.pkl) and a virtualenv
# (PEER_VENV, default PEER_DIR/.venv) with its requirements.
# env: N_REQ (2000, peer), DURATION (10s, CRA), PEER_PORT (5055), PORT (50591),
#      PG_SERVER (postgres://postgres@127.0.0.1:5432)
set -euo pipefail
# Servers started here listen for HTTP on any free port (not the default 8080), so that they
# never collide with each other or with a server already running.
export CRA_HTTP_LISTEN=${CRA_HTTP_LISTEN:-127.0.0.1:0}
cd "$(dirname "$(readlink -f "$0")")/.."
PEER=$(readlink -f "$1"); CRA=$(readlink -f "${2:-target/release/cra}")
PEER_VENV=${PEER_VENV:-$PEER/.venv}
N_REQ=${N_REQ:-2000}
DURATION=${DURATION:-10s}
PEER_PORT=${PEER_PORT:-5055}
PORT=${PORT:-50591}
PG_SERVER=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
OUT=results/c1-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
PID=""; DB=cra_c1_$$; SPOOL=$(mktemp -d)
stop() { if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
cleanup() { stop; psql -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$SPOOL"; }
trap cleanup EXIT
# CPU ticks of a process and its children that are alive now.
ticks() { local t=0 p; for p in "$1" $(pgrep -P "$1" || true); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cra: $("$CRA" --version)"
} | tee "$OUT/env.txt"

echo "== seed-flask peer: gunicorn -w 2, stress_test.py --concurrency 1 --requests $N_REQ" | tee -a "$OUT/summary.txt"
(cd "$PEER" && exec "$PEER_VENV/bin/gunicorn" -w 2 -b "127.0.0.1:$PEER_PORT" --no-control-socket app.api:app) >"$OUT/peer.log" 2>&1 &
PID=$!
for _ in $(seq 1 150); do curl -fsS "http://127.0.0.1:$PEER_PORT/health" >/dev/null 2>&1 && break; sleep 0.2; done
"$PEER_VENV/bin/python" "$PEER/tests/stress_test.py" --url "http://127.0.0.1:$PEER_PORT" --requests 100 --concurrency 1 >/dev/null
t0=$(ticks "$PID")
"$PEER_VENV/bin/python" "$PEER/tests/stress_test.py" --url "http://127.0.0.1:$PEER_PORT" --requests "$N_REQ" \
  --concurrency 1 --json-out "$OUT/peer.json" | tee -a "$OUT/summary.txt"
t1=$(ticks "$PID")
echo "  server CPU per call: $(python3 -c "print(f'{($t1 - $t0) / $hz / $N_REQ * 1e6:.0f}')") us ($N_REQ calls)" | tee -a "$OUT/summary.txt"
stop

echo "== CRA: cra serve (decision log on), cra bench --connections 1 --concurrency 1 --duration $DURATION" | tee -a "$OUT/summary.txt"
"$CRA" serve --listen "127.0.0.1:$PORT" --database-url "$PG_SERVER/$DB" --spool-dir "$SPOOL/spool" >"$OUT/cra.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do "$CRA" bench --addr "127.0.0.1:$PORT" --mode unary --requests 100 --concurrency 1 >/dev/null 2>&1 && break; sleep 0.1; done
t0=$(ticks "$PID")
"$CRA" bench --addr "127.0.0.1:$PORT" --mode unary --connections 1 --concurrency 1 --duration "$DURATION" --json >"$OUT/cra.json"
t1=$(ticks "$PID")
python3 - "$OUT/cra.json" "$t0" "$t1" "$hz" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
l, s = r["latency_ms"], r["server_time_us"]
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(f"  {r['ok']} ok, {r['failed']} failed, {r['requests_per_s']:.0f} req/s")
print(f"  latency ms: median {l['p50']:.3f}  p99 {l['p99']:.3f}  max {l['max']:.3f}")
print(f"  handler time (processing_time) us: median {s['p50']:.1f}  p99 {s['p99']:.1f}")
print(f"  server CPU per call: {cpu / r['ok'] * 1e6:.1f} us ({r['ok']} calls)")
PY
echo "results in $OUT"
