#!/usr/bin/env bash
# `cra score` against the original's offline pipeline (pandas + scikit-learn + xgboost
# `predict_proba`, its tests/offline_bench.py), on the same Parquet file, in one sitting, in
# alternating rounds; then `cra score`'s peak RSS on a second, larger file.
#
#   scripts/bench-score.sh PEER_DIR FILE_1M [FILE_10M] [CRA_BIN]   results: results/score-<UTC>/
#
# PEER_DIR holds the original with its venv (.venv) and trained model; FILE_1M must carry the
# peer's columns (its 17 inputs and the two derived ones it selects); cra reads the 17 inputs
# and ignores the rest. What each figure includes:
#   cra:  the whole command: start, read and decode the Parquet file, validate, score, write
#         the output Parquet file, exit (wall time), and its peak RSS;
#   peer: pipeline.predict_proba on the DataFrame already in memory (the script's own timer;
#         reading the file is outside it), median of its repeats.
# Each timed `cra score` follows one untimed run of the same command, as the peer's script
# times only repeats after its first (its figure is the median of warm repeats): right after
# the peer's process exits, the machine spends a while taking back its gigabyte, and a command
# started then ran at half speed for the same CPU time.
# env: ROUNDS (3), THREADS (cra's --threads; default all CPUs)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
PEER=$(readlink -f "$1"); DATA=$(readlink -f "$2"); BIG=${3:-}; BIN=$(readlink -f "${4:-target/release/cra}")
ROUNDS=${ROUNDS:-3}
OUT=results/score-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
THREAD_ARGS=()
[ -n "${THREADS:-}" ] && THREAD_ARGS=(--threads "$THREADS")
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cra: $BIN ($("$BIN" --version))"
  echo "peer: $PEER ($("$PEER/.venv/bin/python" -c 'import xgboost, sklearn, pandas; print("xgboost", xgboost.__version__, "scikit-learn", sklearn.__version__, "pandas", pandas.__version__)'))"
  echo "file: $DATA ($(stat -c %s "$DATA") bytes)"
} | tee "$OUT/machine.txt"

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r: cra score"
  "$BIN" score --model models/default --data "$DATA" --out "$OUT/scored.parquet" --quiet "${THREAD_ARGS[@]}" >/dev/null
  /usr/bin/time -f '%e %M' -o "$OUT/cra-$r.time" \
    "$BIN" score --model models/default --data "$DATA" --out "$OUT/scored.parquet" --quiet "${THREAD_ARGS[@]}" \
    | tee "$OUT/cra-$r.txt"
  echo "== round $r: peer predict_proba"
  (cd "$PEER" && /usr/bin/time -f '%e %M' -o "$OLDPWD/$OUT/peer-$r.time" \
    .venv/bin/python tests/offline_bench.py --data "$DATA" --repeats 3 --single-calls 1 \
    --json-out "$OLDPWD/$OUT/peer-$r.json" >/dev/null)
done

if [ -n "$BIG" ]; then
  echo "== cra score on $BIG (peak RSS)"
  /usr/bin/time -f '%e %M' -o "$OUT/cra-big.time" \
    "$BIN" score --model models/default --data "$BIG" --out "$OUT/scored-big.parquet" --quiet "${THREAD_ARGS[@]}" \
    | tee "$OUT/cra-big.txt"
  rm -f "$OUT/scored-big.parquet"
fi
rm -f "$OUT/scored.parquet"

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = ["| round | cra score wall s | cra rows/s | cra peak RSS MB | peer predict_proba s (median) | peer rows/s | ratio |",
        "|---|---|---|---|---|---|---|"]
for r in range(1, rounds + 1):
    wall, rss = open(f"{out}/cra-{r}.time").read().split()
    p = json.load(open(f"{out}/peer-{r}.json"))
    n = p["rows"]
    peer_s = p["seconds"]["median"]
    rows.append(f"| {r} | {float(wall):.2f} | {n / float(wall):,.0f} | {int(rss) / 1024:.0f} | {peer_s:.2f} | {n / peer_s:,.0f} | {peer_s / float(wall):.2f} |")
if os.path.exists(f"{out}/cra-big.time"):
    wall, rss = open(f"{out}/cra-big.time").read().split()
    rows.append("")
    rows.append(f"large file: cra score wall {float(wall):.1f} s, peak RSS {int(rss) / 1024:.0f} MB")
text = "\n".join(rows)
print(text)
open(f"{out}/summary.md", "w").write(text + "\n")
PY
