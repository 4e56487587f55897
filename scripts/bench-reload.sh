#!/usr/bin/env bash
# Hot reload under load, loopback only, decision log off (it measures the registry, not the log):
#   1. baseline: unary load at saturation for DURATION against `cra serve --models FILE` (A/B);
#   2. the same load while the models file is rewritten and SIGHUP sent RELOADS times;
#   3. memory: a fresh server's RSS after 1 reload and after 100 (SIGHUP each, waiting for it).
# Reports failed calls, p50/p99 of both runs, the reload counters of GetModelInfo and the RSS.
#
#   scripts/bench-reload.sh [CRA_BIN]       results go to results/reload-<UTC time>/
# env: DURATION (20s), CONCURRENCY (64), CONNECTIONS (2), RELOADS (10), PORT (50591)
set -euo pipefail
# Servers started here listen for HTTP on any free port (not the default 8080), so that they
# never collide with each other or with a server already running.
export CRA_HTTP_LISTEN=${CRA_HTTP_LISTEN:-127.0.0.1:0}
cd "$(dirname "$(readlink -f "$0")")/.."
BIN=$(readlink -f "${1:-target/release/cra}")
DURATION=${DURATION:-20s}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-2}
RELOADS=${RELOADS:-10}
PORT=${PORT:-50591}
GRPCURL=${GRPCURL:-$(command -v grpcurl || echo .tools/bin/grpcurl)}
OUT=results/reload-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
ADDR=127.0.0.1:$PORT
MODELS=$OUT/models.toml
PID=""
stop() { if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap stop EXIT

write_models() { # champion weight, challenger weight
  cat >"$MODELS.tmp" <<EOF
[[models]]
path = "$PWD/models/default"
role = "champion"
weight = $1
[[models]]
path = "$PWD/models/challenger"
role = "challenger"
weight = $2
EOF
  mv "$MODELS.tmp" "$MODELS"
}

start() {
  "$BIN" serve --listen "$ADDR" --models "$MODELS" --watch-models false --audit off \
    >"$OUT/serve-$1.log" 2>&1 &
  PID=$!
  for _ in $(seq 200); do
    "$GRPCURL" -plaintext -d '{"service":"creditrisk.v1.CreditRiskService"}' "$ADDR" \
      grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"' && return 0
    sleep 0.1
  done
  echo "server did not become ready" >&2
  exit 1
}

registry() { "$GRPCURL" -plaintext "$ADDR" creditrisk.v1.CreditRiskService/GetModelInfo | python3 -c 'import json,sys; r=json.load(sys.stdin)["registry"]; print(json.dumps({k: r.get(k) for k in ("generation","reloads","refusals","lastError")}))'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
bench() { "$BIN" bench --addr "http://$ADDR" --mode unary --connections "$CONNECTIONS" \
  --concurrency "$CONCURRENCY" --duration "$DURATION" --json; }

{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "bin: $BIN ($("$BIN" --version))"
  echo "duration: $DURATION concurrency: $CONCURRENCY connections: $CONNECTIONS reloads: $RELOADS"
} | tee "$OUT/machine.txt"

echo "== 1. baseline: no reload"
write_models 50 50
start baseline
bench >"$OUT/baseline.json"
echo "registry: $(registry)" | tee -a "$OUT/registry.txt"
stop

echo "== 2. $RELOADS reloads under the same load"
write_models 50 50
start reloads
bench >"$OUT/reloads.json" &
BENCH=$!
secs=${DURATION%s}
gap=$(python3 -c "print(max(0.2, ($secs - 4) / $RELOADS))")
sleep 2
for k in $(seq 1 "$RELOADS"); do
  write_models $((10 + k * 8)) $((90 - k * 8))
  kill -HUP "$PID"
  sleep "$gap"
done
wait "$BENCH"
echo "registry: $(registry)" | tee -a "$OUT/registry.txt"
stop

echo "== 3. memory after 1 and after 100 reloads"
write_models 50 50
start memory
wait_generation() {
  for _ in $(seq 300); do
    [ "$(registry | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')" -ge "$1" ] && return 0
    sleep 0.05
  done
  echo "reload $1 did not happen" >&2
  exit 1
}
kill -HUP "$PID"; wait_generation 2; sleep 1
after1=$(rss_kib)
for g in $(seq 3 101); do kill -HUP "$PID"; wait_generation "$g"; done
sleep 1
after100=$(rss_kib)
echo "registry: $(registry)" | tee -a "$OUT/registry.txt"
echo "rss_kib_after_1_reload: $after1" | tee "$OUT/memory.txt"
echo "rss_kib_after_100_reloads: $after100" | tee -a "$OUT/memory.txt"
stop

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
b = json.load(open(os.path.join(out, "baseline.json")))
r = json.load(open(os.path.join(out, "reloads.json")))
lines = ["| run | calls ok | failed | calls/s | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|"]
for name, x in (("no reload", b), ("10 reloads", r)):
    l = x["latency_ms"]
    lines.append(f"| {name} | {x['ok']} | {x['failed']} | {x['requests_per_s']:.0f} | {l['p50']:.3f} | {l['p99']:.3f} | {l['max']:.3f} |")
text = "\n".join(lines)
print(text)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
PY
