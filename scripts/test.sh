#!/usr/bin/env bash
# The test command on a fresh machine: install what the tests need, then run them all:
#   - buf lint of the contract; kubernetes-validate and hadolint on deploy/;
#   - cargo test: unit tests, and integration tests that start the server in-process on port 0
#     against the real PostgreSQL (DATABASE_URL or CRA_TEST_PG, default
#     postgres://postgres@127.0.0.1:5432; each test creates and drops its own database);
#   - end-to-end checks of the real `cra` binary with real clients: grpcurl (via reflection) and a
#     Python grpcio client generated from proto/.
# The last line sums every check: "total: N passed, M failed".
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
scripts/setup.sh --test
export PATH="$PWD/.tools/bin:$PATH"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

echo "== buf lint"
buf lint
echo "buf lint: clean"

echo "== deployment files"
.tools/venv/bin/kubernetes-validate --strict --quiet deploy/k8s/*.yaml
.tools/venv/bin/hadolint deploy/Dockerfile
echo "deploy/k8s and deploy/Dockerfile: valid"

echo "== cargo test"
cargo test --locked --all-targets 2>&1 | tee "$LOG"

echo "== end-to-end: grpcurl and the Python client against target/debug/cra"
tests/e2e.sh target/debug/cra 2>&1 | tee -a "$LOG"

# cargo test's "test result" lines, grpcurl.sh's "ok:" lines, the Python client's checks.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^ok: / { p += 1 }
  /^python client: [0-9]+ of [0-9]+ checks ok/ { p += $3 }
  END { printf "total: %d passed, %d failed\n", p, f }
' "$LOG"
