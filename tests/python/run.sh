#!/usr/bin/env bash
# The Python package's tests: builds the wheel with maturin (python/, its own target dir),
# installs it with pip into a fresh venv, and runs tests/python with pytest against the real
# `cra` binary: the wheel against `cra score` and `cra serve` (bit-identical probabilities,
# invalid rows named), cra.export_sklearn and `cra import` (within 1e-6 of predict_proba, the
# refusals), and clients/spark/score_parquet.py in Spark's local mode on 1,000,000 rows.
#
#   tests/python/run.sh [path/to/cra]     (default: target/debug/cra)
# Needs scripts/setup.sh --test: .tools/venv-py (maturin, pytest, pyarrow, pandas, scikit-learn,
# xgboost, pyspark) and Java 17 for Spark. The fresh venv holds the wheel alone; the test
# dependencies come from .tools/venv-py through a .pth file.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."
CRA=$(readlink -f "${1:-target/debug/cra}")
[ -x "$CRA" ] || { echo "run.sh: $CRA is not built (cargo build)" >&2; exit 1; }
DEPS=.tools/venv-py
[ -x "$DEPS/bin/maturin" ] || { echo "run.sh: $DEPS is missing: run scripts/setup.sh --test" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

started=$(date +%s)
"$DEPS/bin/maturin" build --release --quiet -m python/Cargo.toml --out "$WORK/dist" \
  --interpreter "$DEPS/bin/python" >"$WORK/maturin.log" 2>&1 \
  || { cat "$WORK/maturin.log"; echo "run.sh: maturin build failed" >&2; exit 1; }
wheel=$(ls "$WORK"/dist/cra-*.whl)
echo "built $(basename "$wheel") in $(( $(date +%s) - started ))s"

"$DEPS/bin/python" -m venv "$WORK/venv"
site=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$DEPS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/cra-test-deps.pth"
"$WORK/venv/bin/pip" install --quiet --no-deps --no-index "$wheel"
"$WORK/venv/bin/python" -c 'import cra, os; assert "venv" in os.path.dirname(cra.__file__) and "'"$WORK"'" in cra.__file__, cra.__file__; print("cra from", os.path.dirname(cra.__file__))'

cd tests/python
CRA_BIN="$CRA" "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider -rs --durations=5 .
