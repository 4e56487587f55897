#!/usr/bin/env bash
# Builds CRA's fuzz targets (fuzz/, cargo-fuzz with libFuzzer, AddressSanitizer, debug
# assertions and overflow checks) and runs each one in turn for SECONDS (default 60), then
# prints, per target, the executions, the coverage (libFuzzer's final `cov` and `ft`), the
# time and whether it crashed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     all targets unless some are named
#
# On a fresh Debian machine with the Rust toolchain it installs what it needs: a C++ compiler
# (libFuzzer is C++) with apt-get, and cargo-fuzz from crates.io. No nightly toolchain:
# the stable compiler is let take the sanitizer flags with RUSTC_BOOTSTRAP=1.
#
# Each target starts from its committed seeds (fuzz/corpus/TARGET) and grows a working corpus
# in fuzz/target/corpus/TARGET, kept between runs. A crash stops that target; its input is in
# fuzz/artifacts/TARGET/ and the script exits 1 after the other targets ran. Logs:
# fuzz/target/logs/TARGET.log. The targets run one at a time, each on one core.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

SECONDS_PER_TARGET=${1:-60}
shift || true
case $SECONDS_PER_TARGET in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

if ! command -v c++ >/dev/null; then
  echo "fuzz: installing g++ from Debian (libFuzzer is C++)"
  SUDO=()
  [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=fuzz/target/$TRIPLE/release

if [ $# -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(cargo fuzz list)
fi

echo "== building the fuzz targets (the first build takes tens of minutes)"
build() {
  local out
  if ! out=$(cargo fuzz build "$@" 2>&1); then
    printf '%s\n' "$out" | tail -n 40 >&2
    echo "fuzz: the build failed: cargo fuzz build $*" >&2
    exit 1
  fi
}
if [ $# -gt 0 ]; then
  for t in "${TARGETS[@]}"; do build "$t"; done
else
  build
fi

mkdir -p fuzz/target/logs
SUMMARY=$(mktemp)
trap 'rm -f "$SUMMARY"' EXIT
failed=0
echo "== running each target for ${SECONDS_PER_TARGET}s ($(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d))"
for t in "${TARGETS[@]}"; do
  log=fuzz/target/logs/$t.log
  mkdir -p "fuzz/target/corpus/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  args=(
    "fuzz/target/corpus/$t" "fuzz/corpus/$t"
    -max_total_time="$SECONDS_PER_TARGET"
    -timeout=10
    -print_final_stats=1
    -artifact_prefix="fuzz/artifacts/$t/"
  )
  [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
  started=$(date +%s)
  status=ok
  if ! "$BIN/$t" "${args[@]}" >"$log" 2>&1; then
    status=CRASH
    failed=1
  fi
  took=$(($(date +%s) - started))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  done_line=$(grep -E '^#[0-9]+[[:space:]].* cov: ' "$log" | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
  corpus=$(find "fuzz/target/corpus/$t" -type f | wc -l)
  printf '%-18s %12s %8s %8s %7ss %8s  %s\n' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "$took" "$corpus" "$status" | tee -a "$SUMMARY"
  if [ "$status" = CRASH ]; then
    grep -m1 -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY)' "$log" | sed 's/^/    /' || true
    ls -t "fuzz/artifacts/$t" | head -n 1 | sed "s|^|    input: fuzz/artifacts/$t/|"
  fi
done
echo "== summary"
printf '%-18s %12s %8s %8s %8s %8s  %s\n' target executions cov ft time corpus result
cat "$SUMMARY"
exit $failed
