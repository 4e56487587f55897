#!/usr/bin/env bash
# The test command on a fresh machine: install what the tests need, then run them all:
#   - buf lint of the contract; kubernetes-validate (and, for cert-manager's kinds,
#     scripts/validate-cert-manager.py) and hadolint on deploy/;
#   - tests/pg_cluster.sh: the local PostgreSQL cluster of scripts/pg.sh;
#   - cargo test: unit tests, and integration tests that start the server in-process on port 0
#     against a real PostgreSQL (each test creates and drops its own database);
#     and tests/report.rs, which renders `cra report`'s page in headless Chromium;
#   - end-to-end checks of the real `cra` binary with real clients: grpcurl (via reflection) and a
#     Python grpcio client generated from proto/;
#   - tests/prometheus.sh: the alert rules (promtool check rules, promtool test rules), the example
#     Prometheus configuration (promtool check config), the Grafana dashboard
#     (scripts/check_dashboard.py) and the real binary's GET /metrics (promtool check metrics,
#     and every metric name the rules and the dashboard use);
#   - tests/python/run.sh: the `cra` wheel built with maturin and installed into a fresh venv,
#     then pytest: bit-identical to `cra score` and `cra serve`, the scikit-learn export and
#     `cra import`, and the Spark job in local mode on 1,000,000 rows.
# The last line sums every check: "total: N passed, M failed".
#
# PostgreSQL: the server of CRA_TEST_PG, else of DATABASE_URL, else postgres://postgres@127.0.0.1:5432,
# with trust authentication for its user. When psql cannot connect to it, the tests get a throwaway
# cluster instead (scripts/pg.sh: Debian's postgresql is installed if missing; initdb into a
# temporary folder, a free port on 127.0.0.1, trust authentication), stopped and deleted at the
# end, on failure and on Ctrl-C too.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
scripts/setup.sh --test
export PATH="$PWD/.tools/bin:$PATH"
LOG=$(mktemp)
PG_TMP=""
cleanup() {
  if [ -n "$PG_TMP" ]; then
    scripts/pg.sh stop "$PG_TMP" || echo "test.sh: could not stop the throwaway cluster in $PG_TMP" >&2
    rm -rf "$PG_TMP"
  fi
  rm -f "$LOG"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== PostgreSQL"
# The tests read CRA_TEST_PG, then DATABASE_URL (whose database name they ignore); tests/e2e.sh
# reads DATABASE_URL. Both are set below to the same server.
if [ -n "${CRA_TEST_PG:-}" ]; then
  PG_SERVER=${CRA_TEST_PG%/}
elif [ -n "${DATABASE_URL:-}" ]; then
  rest=${DATABASE_URL#*://}
  PG_SERVER=${DATABASE_URL%%://*}://${rest%%/*}
else
  PG_SERVER=postgres://postgres@127.0.0.1:5432
fi
if scripts/pg.sh usable "$PG_SERVER/postgres"; then
  echo "PostgreSQL: the server at ${PG_SERVER##*@}"
else
  echo "PostgreSQL: nothing usable at ${PG_SERVER##*@}; starting a throwaway cluster"
  PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/cra-test-pg.XXXXXX")
  PG_SERVER=$(scripts/pg.sh start "$PG_TMP")
  echo "PostgreSQL: throwaway cluster at $PG_SERVER (stopped and deleted at the end)"
fi
export CRA_TEST_PG=$PG_SERVER DATABASE_URL=$PG_SERVER/postgres

echo "== buf lint"
buf lint
echo "buf lint: clean"

echo "== deployment files"
.tools/venv/bin/kubernetes-validate --strict --quiet deploy/k8s/*.yaml deploy/k8s/mtls/*.yaml
# kubernetes-validate lets kinds it has no schema for through unchecked: cert-manager's are
# checked against cert-manager's own models instead.
.tools/venv-k8s/bin/python scripts/validate-cert-manager.py deploy/k8s/cert-manager/*.yaml
.tools/venv/bin/hadolint deploy/Dockerfile
echo "deploy/k8s and deploy/Dockerfile: valid"

echo "== scripts/pg.sh, the cluster of the newcomer's machine"
tests/pg_cluster.sh 2>&1 | tee -a "$LOG"

echo "== the model runtime crate links no tokio, tonic, PostgreSQL or libxgboost"
deps=$(cargo tree --locked -p cra-model -e normal --prefix none)
if bad=$(grep -E '^(tokio|tonic|tokio-postgres|postgres|xgb|xgboost)[ -]' <<<"$deps"); then
  echo "cra-model depends on: $bad" >&2
  exit 1
fi
echo "ok: cra-model's $(sort -u <<<"$deps" | wc -l) dependencies include none of them"

echo "== cargo test"
cargo test --locked --workspace --all-targets --features trainer 2>&1 | tee -a "$LOG"

echo "== end-to-end: grpcurl and the Python client against target/debug/cra"
tests/e2e.sh target/debug/cra 2>&1 | tee -a "$LOG"

echo "== monitoring: alert rules, Prometheus configuration, dashboard, GET /metrics of target/debug/cra"
tests/prometheus.sh target/debug/cra 2>&1 | tee -a "$LOG"

echo "== the Python package: maturin build, a fresh venv, pytest (and Spark local mode)"
tests/python/run.sh target/debug/cra 2>&1 | tee -a "$LOG"

# cargo test's "test result" lines, the "ok:" lines of pg_cluster.sh, grpcurl.sh, e2e.sh and
# prometheus.sh, the Python client's checks, pytest's summary line.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^ok: / { p += 1 }
  /^python client: [0-9]+ of [0-9]+ checks ok/ { p += $3 }
  /^[0-9]+ (passed|failed).* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { printf "total: %d passed, %d failed\n", p, f }
' "$LOG"
