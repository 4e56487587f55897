#!/usr/bin/env bash
# Side-by-side benchmark, in one sitting on this machine, loopback only:
#   1. CRA with the decision log off and on (alternating runs): unary saturation, unary at a fixed
#      10,000 req/s, one ScoreBatch stream, and h2load as an independent client;
#   2. the same unary comparison with PostgreSQL on a core of its own (as on a separate database
#      host): the postgres processes pinned to CPU 1, server and load generator to CPU 0, for
#      both the log-off and log-on runs (needs taskset and the right to pin PostgreSQL);
#   3. optionally the seed-flask peer's own bench.sh (pass its folder as the first argument).
#
#   scripts/bench.sh [PEER_DIR]          results go to results/bench-<UTC time>/
# env: DURATION (10s per run), PORT (50571), DATABASE_URL server (postgres://postgres@127.0.0.1:5432)
set -euo pipefail
# Servers started here listen for HTTP on any free port (not the default 8080), so that they
# never collide with each other or with a server already running.
export CRA_HTTP_LISTEN=${CRA_HTTP_LISTEN:-127.0.0.1:0}
cd "$(dirname "$(readlink -f "$0")")/.."
PEER_DIR=${1:-}
DURATION=${DURATION:-10s}
PORT=${PORT:-50571}
PG_SERVER=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
OUT=results/bench-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
scripts/setup.sh --test >/dev/null
cargo build --release --locked --bin cra 2>&1 | tail -1
CRA=target/release/cra   # links no libxgboost: runs as built
ADDR=127.0.0.1:$PORT
DB=cra_bench_$$
SPOOL=$(mktemp -d)
PID=""
PIN=""
stop() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
}
unpin_pg() { for p in $(pgrep -x postgres || true); do taskset -a -p "$(( (1 << $(nproc)) - 1 ))" "$p" >/dev/null 2>&1 || true; done; }
cleanup() { stop; unpin_pg; psql -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$SPOOL"; }
trap cleanup EXIT
start() { # start LOGNAME ARGS...
  local log=$1; shift
  $PIN "$CRA" serve --listen "$ADDR" "$@" >"$OUT/$log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    if .tools/bin/grpcurl -plaintext -max-time 1 -d '{"service":"creditrisk.v1.CreditRiskService"}' \
         "$ADDR" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then return 0; fi
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/$log"; exit 1; }
    sleep 0.1
  done
  echo "server not ready"; cat "$OUT/$log"; exit 1
}
bench() { # bench NAME ARGS...
  local name=$1; shift
  echo "== $name (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/summary.txt"
  $PIN "$CRA" bench --addr "$ADDR" "$@" | tee "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
}
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cra: $(git rev-parse --short HEAD) $("$CRA" --version)"
} | tee "$OUT/env.txt"

# A pre-encoded ScoreRequest frame for h2load (5-byte gRPC prefix + message).
.tools/venv/bin/python - "$OUT/score.frame" <<'PY'
import os, struct, sys, tempfile
from grpc_tools import protoc
out = tempfile.mkdtemp()
inc = os.path.join(os.path.dirname(protoc.__file__), "_proto")
assert protoc.main(["protoc", "-Iproto", f"-I{inc}", f"--python_out={out}", "proto/creditrisk/v1/credit_risk.proto"]) == 0
sys.path.insert(0, out)
from creditrisk.v1 import credit_risk_pb2 as pb
a = pb.CreditApplication(age=45, income=75000, employment_length=10, credit_score=720, num_credit_lines=5,
    credit_utilization=0.3, debt_to_income=0.35, total_debt=25000, savings=15000, loan_amount=20000,
    loan_term=36, num_late_payments=0, num_bankruptcies=0, inquiries_last_6m=1,
    employment_status=pb.EMPLOYMENT_STATUS_EMPLOYED, home_ownership=pb.HOME_OWNERSHIP_MORTGAGE,
    loan_purpose=pb.LOAN_PURPOSE_DEBT_CONSOLIDATION)
msg = pb.ScoreRequest(application=a).SerializeToString()
open(sys.argv[1], "wb").write(struct.pack(">BI", 0, len(msg)) + msg)
PY

for round in 1 2; do
  start "serve-off-$round.log" --audit off
  bench "unary-off-$round" --mode unary --connections 2 --concurrency 64 --duration "$DURATION"
  if [ "$round" = 1 ]; then
    bench "unary-rate10k-off" --mode unary --connections 2 --concurrency 64 --rate 10000 --duration 15s
    bench "stream-off" --mode stream --connections 1 --concurrency 1 --chunk 1000 --requests 3000000
    echo "== h2load (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/summary.txt"
    h2load -n 300000 -c 2 -m 32 -t 1 -d "$OUT/score.frame" -H 'content-type: application/grpc' \
      -H 'te: trailers' "http://$ADDR/creditrisk.v1.CreditRiskService/Score" \
      | grep -E 'finished in|requests:|time for request' | tee "$OUT/h2load.txt" | tee -a "$OUT/summary.txt"
  fi
  stop
  start "serve-on-$round.log" --audit on --database-url "$PG_SERVER/$DB" --spool-dir "$SPOOL" --require-database
  before=$(psql -tAq "$PG_SERVER/$DB" -c "SELECT count(*) FROM decisions")
  bench "unary-on-$round" --mode unary --connections 2 --concurrency 64 --duration "$DURATION"
  if [ "$round" = 1 ]; then
    bench "stream-on" --mode stream --connections 1 --concurrency 1 --chunk 1000 --requests 3000000
  fi
  stop   # SIGTERM: drains and flushes the decision log
  after=$(psql -tAq "$PG_SERVER/$DB" -c "SELECT count(*) FROM decisions")
  echo "decision log rows added in round $round: $((after - before))" | tee -a "$OUT/summary.txt"
done

# PostgreSQL on a core of its own: alternating rounds, log off and on, same pinning for both.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null && pgrep -x postgres >/dev/null \
   && taskset -a -p 2 "$(pgrep -x postgres | head -1)" >/dev/null 2>&1; then
  for p in $(pgrep -x postgres); do taskset -a -p 2 "$p" >/dev/null; done
  PIN="taskset -c 0"
  echo "== PostgreSQL pinned to CPU 1; server and load generator to CPU 0" | tee -a "$OUT/summary.txt"
  for round in 1 2 3; do
    start "serve-pinned-off-$round.log" --audit off
    bench "unary-pinned-off-$round" --mode unary --connections 2 --concurrency 64 --duration "$DURATION"
    stop
    start "serve-pinned-on-$round.log" --audit on --database-url "$PG_SERVER/$DB" --spool-dir "$SPOOL" --require-database
    bench "unary-pinned-on-$round" --mode unary --connections 2 --concurrency 64 --duration "$DURATION"
    stop
  done
  PIN=""
  unpin_pg
  python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import re, sys
def thr(name):
    return float(re.search(r"throughput: (\d+)", open(f"{sys.argv[1]}/{name}.txt").read()).group(1))
ratios = [thr(f"unary-pinned-on-{r}") / thr(f"unary-pinned-off-{r}") for r in (1, 2, 3)]
print("pinned unary, log on / log off per round: " + ", ".join(f"{x:.3f}" for x in ratios)
      + f"; mean {sum(ratios) / 3:.3f}")
PY
else
  echo "== (skipped the pinned rounds: need 2+ CPUs, taskset and the right to pin PostgreSQL)" | tee -a "$OUT/summary.txt"
fi

if [ -n "$PEER_DIR" ]; then
  echo "== seed-flask peer: its bench.sh, in a scratch copy" | tee -a "$OUT/summary.txt"
  peer=$(mktemp -d)
  cp -r "$PEER_DIR"/. "$peer"/
  RESULTS_DIR="$PWD/$OUT/peer" VENV="${PEER_VENV:-$peer/.venv}" bash "$peer/bench.sh" >"$OUT/peer.log" 2>&1 \
    || { tail -20 "$OUT/peer.log"; exit 1; }
  grep -hE 'throughput|Throughput|req/s|Requests/sec|median|p50|Latency' "$OUT"/peer/*.txt | head -40 | tee -a "$OUT/summary.txt"
  rm -rf "$peer"
fi
echo "results in $OUT/"
