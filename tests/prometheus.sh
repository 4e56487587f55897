#!/usr/bin/env bash
# The monitoring files against promtool and the real `cra` binary:
#   1. deploy/prometheus/alerts.yaml: `promtool check rules`, and `promtool test rules` on
#      alerts.test.yaml (each rule fires in one case and stays silent near its threshold);
#   2. deploy/prometheus/prometheus.yml: `promtool check config` (Debian's promtool is built
#      without Kubernetes service discovery: then the kubernetes_sd job is checked, relabelling
#      included, with file discovery in its place, and the line says so);
#   3. deploy/k8s: the StatefulSets' scrape annotations name the container port `http` and
#      /metrics;
#   4. `cra serve` (its own fresh PostgreSQL database, dropped afterwards) answers 150 good
#      /predict calls, some with explanations, and a bad one; its GET /metrics must pass
#      `promtool check metrics` with nothing to report, and hold every cra_* metric name the
#      alert rules and the dashboard use (the drift gauges exist once a model's window holds
#      100 decisions);
#   5. deploy/grafana/cra.json: scripts/check_dashboard.py (JSON, ids, grid, every expression
#      parsed by promtool).
# Prints "ok: ..." per check (scripts/test.sh counts them); exits non-zero at the first failure.
#
#   tests/prometheus.sh [path/to/cra]      (default: target/debug/cra)
# Needs promtool (Debian's prometheus; scripts/setup.sh --test), curl, python3, psql, and
# PostgreSQL at DATABASE_URL's server (default postgres://postgres@127.0.0.1:5432).
#
# Developer aid, never in CI: CRA_PROM_CHECK_SKIP=cra_drift_ (comma-separated prefixes) leaves
# names out of the metric name check, e.g. to run this on a branch where a metric does not
# exist yet. The default is strict.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
CRA=$(readlink -f "${1:-target/debug/cra}")
[ -x "$CRA" ] || { echo "prometheus.sh: $CRA is not built (cargo build)" >&2; exit 1; }
PROMTOOL=${PROMTOOL:-promtool}
command -v "$PROMTOOL" >/dev/null || { echo "prometheus.sh: no promtool (scripts/setup.sh --test installs Debian's prometheus)" >&2; exit 1; }
PG=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_SERVER=${PG%/*}
SKIP=${CRA_PROM_CHECK_SKIP:-}
# At least this many decisions, so that the drift gauges (100 decisions in a model's window)
# exist at the scrape.
REQUESTS=150
unset LD_LIBRARY_PATH

WORK=$(mktemp -d)
DB="cra_prom_$$"
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  psql -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
die() { echo "FAIL: $*" >&2; exit 1; }
# Runs a command, shows its output indented, fails with it.
show() {
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ -z "$out" ] || sed 's/^/    /' <<<"$out"
  return "$rc"
}

echo "-- alert rules"
show "$PROMTOOL" check rules deploy/prometheus/alerts.yaml || die "promtool check rules deploy/prometheus/alerts.yaml"
echo "ok: promtool check rules deploy/prometheus/alerts.yaml"
show "$PROMTOOL" test rules deploy/prometheus/alerts.test.yaml || die "promtool test rules deploy/prometheus/alerts.test.yaml"
rules=$(grep -c '^ *- alert: ' deploy/prometheus/alerts.yaml)
tested=$(grep -o 'alertname: [A-Za-z0-9]*' deploy/prometheus/alerts.test.yaml | sort -u | wc -l)
for a in $(sed -n 's/^ *- alert: *//p' deploy/prometheus/alerts.yaml); do
  grep -q "alertname: $a\$" deploy/prometheus/alerts.test.yaml || die "alert $a has no test in alerts.test.yaml"
  # A case where it fires (exp_labels) and one where it does not (exp_alerts: []).
  awk -v a="$a" '$0 ~ "alertname: "a"$" { getline; getline; if ($0 ~ /exp_alerts: \[\]/) silent = 1; else if ($0 ~ /exp_alerts:$/) fires = 1 }
                 END { exit !(silent && fires) }' deploy/prometheus/alerts.test.yaml \
    || die "alert $a lacks a firing case or a silent case in alerts.test.yaml"
  anchor=$(tr '[:upper:]' '[:lower:]' <<<"$a")
  grep -q "^## $a\$" docs/RUNBOOK.md || die "docs/RUNBOOK.md has no section '## $a'"
  grep -q "runbook: docs/RUNBOOK.md#$anchor\$" deploy/prometheus/alerts.yaml || die "alert $a's runbook annotation does not point to docs/RUNBOOK.md#$anchor"
done
echo "ok: promtool test rules deploy/prometheus/alerts.test.yaml: $rules rules, $tested tested, each firing and silent; each with its docs/RUNBOOK.md section"

echo "-- Prometheus configuration"
if out=$("$PROMTOOL" check config deploy/prometheus/prometheus.yml 2>&1); then
  sed 's/^/    /' <<<"$out"
  echo "ok: promtool check config deploy/prometheus/prometheus.yml"
elif grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
  # This promtool has no Kubernetes discovery (Debian's build): check the same file with file
  # discovery in its place, so that everything else (the relabelling too) is still checked.
  cp deploy/prometheus/alerts.yaml "$WORK/"
  echo '[]' >"$WORK/pods.json"
  sed -e 's/^\( *\)kubernetes_sd_configs:/\1file_sd_configs:/' -e 's/^\( *\)- role: pod$/\1- files: [pods.json]/' \
    deploy/prometheus/prometheus.yml >"$WORK/prometheus.yml"
  show "$PROMTOOL" check config "$WORK/prometheus.yml" || die "promtool check config deploy/prometheus/prometheus.yml"
  echo "ok: promtool check config deploy/prometheus/prometheus.yml (this promtool has no Kubernetes discovery: the cra-pods job checked with file_sd_configs in place of kubernetes_sd_configs)"
else
  sed 's/^/    /' <<<"$out"
  die "promtool check config deploy/prometheus/prometheus.yml"
fi

echo "-- Kubernetes scrape annotations"
for f in deploy/k8s/cra.yaml deploy/k8s/mtls/cra-mtls.yaml; do
  # The StatefulSet's pod template: prometheus.io annotations, and the container port `http`.
  port=$(sed -n 's/^ *prometheus.io\/port: *"\([0-9]*\)"$/\1/p' "$f")
  http=$(awk '/^ *- name: http$/ { getline; if ($1 == "containerPort:") print $2 }' "$f")
  grep -q '^ *prometheus.io/scrape: "true"$' "$f" || die "$f: no prometheus.io/scrape: \"true\""
  grep -q '^ *prometheus.io/path: /metrics$' "$f" || die "$f: no prometheus.io/path: /metrics"
  [ -n "$port" ] && [ "$port" = "$http" ] || die "$f: prometheus.io/port ($port) is not the container port http ($http)"
done
echo "ok: the StatefulSets of deploy/k8s/cra.yaml and mtls/cra-mtls.yaml carry the scrape annotations, port $port (the container port http), path /metrics"

echo "-- cra serve: GET /metrics"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
HTTP_PORT=$(free_port)
DATABASE_URL="$PG_SERVER/$DB" "$CRA" serve --listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
  --model models/default --spool-dir "$WORK/spool" --require-database --metrics true >"$WORK/serve.log" 2>&1 &
PID=$!
BASE="http://127.0.0.1:$HTTP_PORT"
ready=0
for _ in $(seq 1 150); do
  if curl -fsS "$BASE/health" 2>/dev/null | grep -q '"healthy"'; then ready=1; break; fi
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve.log"; die "cra serve exited"; }
  sleep 0.2
done
[ "$ready" = 1 ] || { cat "$WORK/serve.log"; die "/health never answered healthy"; }

APP='{"age": 45, "income": 75000, "employment_length": 10, "credit_score": 720,
  "num_credit_lines": 5, "credit_utilization": 0.3, "debt_to_income": 0.35,
  "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36,
  "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
  "employment_status": "employed", "home_ownership": "mortgage",
  "loan_purpose": "debt_consolidation"}'
post() { curl -sS -o /dev/null -w '%{http_code}' "$BASE/predict$1" -H 'Content-Type: application/json' -d "$2"; }
for i in $(seq 1 "$REQUESTS"); do
  # Every tenth asks for the explanation, so that cra_explanations_total exists.
  q=""; [ $((i % 10)) -eq 0 ] && q="?explain=true"
  code=$(post "$q" "$APP")
  [ "$code" = 200 ] || die "POST /predict$q answered $code"
done
code=$(post "" "${APP/\"age\": 45/\"age\": 12}")
[ "$code" = 400 ] || die "POST /predict with age 12 answered $code, not 400"
echo "ok: cra serve answered $REQUESTS POST /predict with 200 and a bad application with 400"

# Scrape until every name used is there (gauges computed in the background may need a moment),
# at most 20 s; then the last scrape is the one checked.
check_names() {
  python3 scripts/check_dashboard.py deploy/grafana/cra.json --promtool "$PROMTOOL" \
    --metrics "$WORK/metrics.txt" --rules deploy/prometheus/alerts.yaml --skip "$SKIP"
}
for _ in $(seq 1 20); do
  curl -fsS "$BASE/metrics" -o "$WORK/metrics.txt" || die "GET /metrics failed"
  if check_names >/dev/null 2>&1; then break; fi
  sleep 1
done
echo "    scrape: $(grep -c '^cra_' "$WORK/metrics.txt") samples of $(grep -c '^# TYPE cra_' "$WORK/metrics.txt") cra_* metrics"
out=$("$PROMTOOL" check metrics <"$WORK/metrics.txt" 2>&1) || { sed 's/^/    /' <<<"$out"; die "promtool check metrics"; }
[ -z "$out" ] || { sed 's/^/    /' <<<"$out"; die "promtool check metrics reported problems"; }
echo "ok: promtool check metrics on GET /metrics: nothing to report"

echo "-- dashboard, and the metric names of the dashboard and the alert rules"
[ -z "$SKIP" ] || echo "NOTE: CRA_PROM_CHECK_SKIP=$SKIP: names with these prefixes are not checked (a developer aid; the default is strict)"
check_names || { echo "    the scrape's cra_* metrics: $(sed -n 's/^# TYPE \(cra_[^ ]*\).*/\1/p' "$WORK/metrics.txt" | tr '\n' ' ')"; die "scripts/check_dashboard.py"; }

kill -TERM "$PID"; wait "$PID" || die "cra serve did not stop cleanly: $(tail -5 "$WORK/serve.log")"; PID=""
echo "prometheus.sh: all checks passed"
