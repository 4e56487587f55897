#!/usr/bin/env bash
# Two builds of `cra` side by side, in one sitting, loopback only: unary saturation with the
# decision log on (PostgreSQL), in alternating rounds A, B, A, B, ... so that both see the same
# machine. Each round starts a fresh server with a fresh database and spool, runs `cra bench`
# (of build B, the same client for both) and records client latency, throughput and the
# handler's time (`processing_time`: p50, p99, p99.9, max), plus the server's CPU time per call.
#
#   scripts/bench-ab.sh A_BIN B_BIN [ROUNDS]      results go to results/ab-<UTC time>/
# A build from before issue 9 links libxgboost: give it LD_LIBRARY_PATH (builds since then link
# none, or carry an rpath when built with the trainer).
# env: MODE (unary, or stream: ScoreBatch streams of CHUNK applications per message),
#      DURATION (15s), CONCURRENCY (64; streams in stream mode), CONNECTIONS (2), CHUNK (1000),
#      PORT (50581), PG_SERVER (postgres://postgres@127.0.0.1:5432), AUDIT (on),
#      EXTRA_SERVE_ARGS ("", both sides), A_SERVE_ARGS / B_SERVE_ARGS ("", one side each)
set -euo pipefail
# Servers started here listen for HTTP on any free port (not the default 8080), so that they
# never collide with each other or with a server already running.
export CRA_HTTP_LISTEN=${CRA_HTTP_LISTEN:-127.0.0.1:0}
cd "$(dirname "$(readlink -f "$0")")/.."
A=$(readlink -f "$1"); B=$(readlink -f "$2"); ROUNDS=${3:-2}
DURATION=${DURATION:-15s}
MODE=${MODE:-unary}
CHUNK=${CHUNK:-1000}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-2}
PORT=${PORT:-50581}
PG_SERVER=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
AUDIT=${AUDIT:-on}
EXTRA_SERVE_ARGS=${EXTRA_SERVE_ARGS:-}
A_SERVE_ARGS=${A_SERVE_ARGS:-}
B_SERVE_ARGS=${B_SERVE_ARGS:-}
OUT=results/ab-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
ADDR=127.0.0.1:$PORT
PID=""
DB=""
SPOOL=""
stop() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
  if [ -n "$DB" ]; then psql -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; DB=""; fi
  if [ -n "$SPOOL" ]; then rm -rf "$SPOOL"; SPOOL=""; fi
}
trap stop EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "A: $A ($("$A" --version))"
  echo "B: $B ($("$B" --version))"
  echo "serve args: both '$EXTRA_SERVE_ARGS', A '$A_SERVE_ARGS', B '$B_SERVE_ARGS'"
  echo "bench: --mode $MODE --connections $CONNECTIONS --concurrency $CONCURRENCY --chunk $CHUNK --duration $DURATION, audit $AUDIT"
} | tee "$OUT/env.txt"
for r in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    bin=$A; side_args=$A_SERVE_ARGS
    if [ "$side" = B ]; then bin=$B; side_args=$B_SERVE_ARGS; fi
    DB=cra_ab_$$_$r$side
    SPOOL=$(mktemp -d)
    # shellcheck disable=SC2086
    "$bin" serve --listen "$ADDR" --audit "$AUDIT" --database-url "$PG_SERVER/$DB" \
      --spool-dir "$SPOOL/spool" $EXTRA_SERVE_ARGS $side_args >"$OUT/serve-$r$side.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 300); do
      if "$B" bench --addr "$ADDR" --mode unary --requests 200 --concurrency 1 >/dev/null 2>&1; then break; fi
      kill -0 "$PID" 2>/dev/null || { cat "$OUT/serve-$r$side.log"; exit 1; }
      sleep 0.1
    done
    before=$(ticks "$PID")
    echo "== round $r $side (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/summary.txt"
    "$B" bench --addr "$ADDR" --mode "$MODE" --connections "$CONNECTIONS" --chunk "$CHUNK" \
      --concurrency "$CONCURRENCY" --duration "$DURATION" --json >"$OUT/bench-$r$side.json"
    after=$(ticks "$PID")
    python3 - "$OUT/bench-$r$side.json" "$before" "$after" "$(getconf CLK_TCK)" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
cpu_s = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
calls = r["requests_ok"] if "requests_ok" in r else r.get("ok", 0)
l, s = r["latency_ms"], r["server_time_us"]
print(f"  throughput {r['requests_per_s']:.0f} req/s, {r['applications_per_s']:.0f} applications/s; client latency ms p50 {l['p50']:.3f} p99 {l['p99']:.3f} "
      f"p99.9 {l['p999']:.3f} max {l['max']:.3f}")
print(f"  handler time us p50 {s['p50']:.1f} p99 {s['p99']:.1f} p99.9 {s['p999']:.1f} max {s['max']:.1f}")
if calls:
    print(f"  server CPU per call {cpu_s / calls * 1e6:.1f} us ({cpu_s:.2f} s of CPU over {calls} calls, "
          f"bench and warm-up included in the CPU, only bench calls counted)")
PY
    stop
  done
done
echo "results in $OUT"
