#!/usr/bin/env bash
# What security costs, and what the rate limits buy, in one sitting, loopback only, the decision
# log off (so that the figures are the security layers' own):
#
#  1. overhead: unary Score throughput (cra bench, closed loop) with everything off, against API
#     keys + a rate limit too high to bind + TLS on both ports; ROUNDS rounds, alternating;
#  2. fairness: an "interactive" client at a steady RATE_B calls/s (open loop: latency counts
#     from each call's scheduled start), alone, then beside a "batch" client at full speed
#     (closed loop, concurrency 64): without rate limits; with a limit of LIMIT_A for the batch
#     client that it honours (RetryInfo), that it ignores (retries at once), and as a ScoreBatch
#     stream (paced by back-pressure). Calls over the limit wait for their turn up to the
#     server's --rate-limit-wait (default 500ms) before they are refused.
#
#   scripts/bench-security.sh [CRA_BIN]     results go to results/security-<UTC time>/
# env: ROUNDS (3), DURATION (10s), RATE_B (200), LIMIT_A (5000/s),
#      PIN (0): 1 runs the server on CPU 0 and the clients on the others (taskset), the batch
#      client at the lowest priority (nice 19), so that on one small machine the batch client's
#      own CPU (the load generator's, which in production is on another machine) does not count
#      against the interactive client: what is left is what the server does for each of them.
#      FAIR_SERVE_ARGS: more `cra serve` arguments for the fairness part, e.g.
#      "--rate-limit-wait 0" (every call over the limit refused at once).
set -euo pipefail
export CRA_HTTP_LISTEN=127.0.0.1:0
cd "$(dirname "$(readlink -f "$0")")/.."
CRA=$(readlink -f "${1:-target/release/cra}")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
RATE_B=${RATE_B:-200}
LIMIT_A=${LIMIT_A:-5000/s}
PIN=${PIN:-0}
SERVER_CPU=()
CLIENT_CPU=()
BATCH_NICE=()
if [ "$PIN" = 1 ]; then
  SERVER_CPU=(taskset -c 0)
  CLIENT_CPU=(taskset -c "1-$(($(nproc) - 1))")
  BATCH_NICE=(nice -n 19)
fi
OUT=results/security-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
WORK=$(mktemp -d)
PID=""
stop() { if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
cleanup() { stop; rm -rf "$WORK"; }
trap cleanup EXIT
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cra: $("$CRA" --version)"
  echo "pinned: $PIN"
} | tee "$OUT/env.txt"

# Test certificates: a CA and a server certificate for localhost (openssl).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$WORK/ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/ext" -out "$WORK/server.crt" 2>/dev/null

KEYS=$WORK/api-keys.toml
KEY_A=$("$CRA" keys --api-keys "$KEYS" add batch 2>/dev/null)
KEY_B=$("$CRA" keys --api-keys "$KEYS" add interactive 2>/dev/null)
KEY_LIMITED=$("$CRA" keys --api-keys "$KEYS" add batch-limited --rate "$LIMIT_A" 2>/dev/null)

PORT=50593
serve() {
  "${SERVER_CPU[@]}" "$CRA" serve --audit off --listen "127.0.0.1:$PORT" "$@" >"$OUT/serve.log" 2>&1 &
  PID=$!
}
# Waits until the server answers a call made with the bench arguments given.
wait_up() {
  for _ in $(seq 1 300); do
    "$CRA" bench "$@" --requests 10 --concurrency 1 --warmup 0s >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the server did not come up; see $OUT/serve.log" >&2
  exit 1
}

echo "== 1. overhead: unary, concurrency 64, 2 connections, $DURATION per run" | tee -a "$OUT/summary.txt"
PLAIN=(--addr "127.0.0.1:$PORT")
SECURE=(--addr "localhost:$PORT" --tls-ca "$WORK/ca.crt" --api-key "$KEY_A")
for round in $(seq 1 "$ROUNDS"); do
  serve
  wait_up "${PLAIN[@]}"
  "$CRA" bench "${PLAIN[@]}" --duration "$DURATION" --json >"$OUT/off-$round.json"
  stop
  serve --api-keys "$KEYS" --rate-limit 10000000/s --tls-cert "$WORK/server.crt" --tls-key "$WORK/server.key"
  wait_up "${SECURE[@]}"
  "$CRA" bench "${SECURE[@]}" --duration "$DURATION" --json >"$OUT/on-$round.json"
  stop
  python3 - "$OUT/off-$round.json" "$OUT/on-$round.json" "$round" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
off, on = (json.load(open(p)) for p in sys.argv[1:3])
print(f"round {sys.argv[3]}: all off {off['requests_per_s']:,.0f} calls/s (p99 {off['latency_ms']['p99']:.2f} ms); "
      f"keys + rate limit + TLS {on['requests_per_s']:,.0f} calls/s (p99 {on['latency_ms']['p99']:.2f} ms); "
      f"ratio {on['requests_per_s'] / off['requests_per_s']:.3f}; failed {off['failed']} / {on['failed']}")
EOF
done

echo "== 2. fairness: interactive client at $RATE_B calls/s for $DURATION; batch client at full speed" | tee -a "$OUT/summary.txt"
B=(--addr "127.0.0.1:$PORT" --api-key "$KEY_B" --connections 1 --concurrency 16 --rate "$RATE_B" --duration "$DURATION" --json)
fair() { # NAME, then the batch client's bench arguments (none: the interactive client alone)
  local name=$1; shift
  local apid=""
  if [ $# -gt 0 ]; then
    "${CLIENT_CPU[@]}" "${BATCH_NICE[@]}" "$CRA" bench --addr "127.0.0.1:$PORT" --connections 2 --duration "$((${DURATION%s} + 4))s" --warmup 0s --json "$@" \
      >"$OUT/fair-$name-batch.json" 2>&1 &
    apid=$!
    sleep 2
  fi
  "${CLIENT_CPU[@]}" "$CRA" bench "${B[@]}" >"$OUT/fair-$name.json"
  if [ -n "$apid" ]; then wait "$apid" || true; fi
  python3 - "$OUT/fair-$name.json" "$OUT/fair-$name-batch.json" "$name" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys, os
b = json.load(open(sys.argv[1]))
line = (f"{sys.argv[3]}: interactive p50 {b['latency_ms']['p50']:.2f} ms, p99 {b['latency_ms']['p99']:.2f} ms, "
        f"p99.9 {b['latency_ms']['p999']:.2f} ms, {b['ok']} ok, {b['failed']} failed")
if os.path.exists(sys.argv[2]):
    try:
        a = json.load(open(sys.argv[2]))
        line += f"; batch client {a['applications_per_s']:,.0f} applications/s scored, {a['failed']:,} refused"
    except Exception:
        pass
print(line)
EOF
}
read -r -a FAIR_ARGS <<<"${FAIR_SERVE_ARGS:-}"
echo "fairness server arguments: --api-keys ${FAIR_ARGS[*]}" | tee -a "$OUT/summary.txt"
serve --api-keys "$KEYS" "${FAIR_ARGS[@]}"
wait_up --addr "127.0.0.1:$PORT" --api-key "$KEY_B"
fair alone
fair "no-limit" --api-key "$KEY_A" --concurrency 64
fair "limited-honours-retry" --api-key "$KEY_LIMITED" --concurrency 64 --respect-retry
fair "limited-ignores-retry" --api-key "$KEY_LIMITED" --concurrency 64
fair "limited-stream" --api-key "$KEY_LIMITED" --mode stream --concurrency 4 --chunk 1000
stop
echo "results: $OUT"
