#!/usr/bin/env bash
# The main job on a fresh machine: install build deps, build in release mode, and run
# `cra serve` with the committed default model (models/default) on 0.0.0.0:50051.
# Extra arguments go to `cra serve`, e.g. `scripts/serve.sh --listen 127.0.0.1:6000`.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
scripts/setup.sh
exec cargo run --release --locked --bin cra -- serve "$@"
