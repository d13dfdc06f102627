#!/usr/bin/env bash
# Build llama.cpp's `llama-completion` CLI from the same llama.cpp source llama-cpp-python vendors (the
# version pinned in install_llama_server.sh), idempotently, and print its path.
#
# Why: tests/integration/test_export_llama_cpp.py checks an exported control vector through llama.cpp's
# own command-line loader (--control-vector-scaled) when this binary exists (or TRAITLAB_LLAMA_COMPLETION
# names another one).
# A static, portable build (GGML_NATIVE=OFF) is cached in $TRAITLAB_WHEEL_CACHE/llama-tools (~5 min on
# 2 idle cores; later runs only print the path).
#
# Usage: scripts/install_llama_cli.sh [python]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-${PYTHON:-$REPO_ROOT/.venv/bin/python}}"
VERSION="$(sed -n 's/^VERSION="\(.*\)"$/\1/p' "$REPO_ROOT/scripts/install_llama_server.sh")"
TOOLS="${TRAITLAB_WHEEL_CACHE:-$HOME/.cache/traitlab/wheels}/llama-tools"
BIN="$TOOLS/llama-completion-$VERSION"

if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi
command -v cmake >/dev/null && command -v c++ >/dev/null || { echo "install_llama_cli: needs cmake and a C++ compiler" >&2; exit 2; }
mkdir -p "$TOOLS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >&2
cmake --build "$WORK/build" --target llama-completion -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" >&2
cp "$WORK/build/bin/llama-completion" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
echo "$BIN"
