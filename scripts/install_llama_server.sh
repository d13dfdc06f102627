#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server into the project venv, idempotently.
#
# Why a script: the integration tests run a REAL local judge server (llama.cpp serving the embedded
# SmolLM2 GGUF). There is no prebuilt CPU wheel for our pinned version, so we build one once
# (~4+ min on 2 cores) and cache it in $TRAITLAB_WHEEL_CACHE; later runs only pip-install the wheel.
# A portable build (GGML_NATIVE=OFF) keeps the cached wheel usable on a different CPU.
#
# Usage: scripts/install_llama_server.sh [python]   (default: <repo>/.venv/bin/python)
set -euo pipefail

VERSION="0.3.36"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-${PYTHON:-$REPO_ROOT/.venv/bin/python}}"
WHEEL_DIR="${TRAITLAB_WHEEL_CACHE:-$HOME/.cache/traitlab/wheels}"
# Server extras of llama-cpp-python[server] plus the core deps; pinned loosely, as upstream does.
SERVER_DEPS=(
  "typing-extensions>=4.5.0" "numpy>=1.20.0" "diskcache>=5.6.1" "jinja2>=2.11.3"
  "uvicorn>=0.22.0" "fastapi>=0.100.0" "pydantic-settings>=2.0.1" "sse-starlette>=1.6.1"
  "starlette-context>=0.3.6,<0.4" "PyYAML>=5.1"
)

if [[ ! -x "$PY" ]]; then
  echo "install_llama_server: python not found at $PY (create the venv first or pass a python path)" >&2
  exit 2
fi

installed_ok() {
  "$PY" - "$VERSION" <<'PYEOF'
import importlib.metadata as md, importlib.util as u, sys
try:
    ok = md.version("llama_cpp_python") == sys.argv[1]
except md.PackageNotFoundError:
    ok = False
mods = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings", "diskcache", "yaml")
sys.exit(0 if ok and all(u.find_spec(m) for m in mods) else 1)
PYEOF
}

if installed_ok; then
  echo "install_llama_server: llama-cpp-python $VERSION and server deps already installed in $PY"
  exit 0
fi

mkdir -p "$WHEEL_DIR"
# Parallel CI jobs on one machine: one builds, the others wait for its wheel instead of building again.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$WHEEL_DIR/.build.lock"
  flock 9
fi
find_wheel() { ls "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true; }
WHEEL="$(find_wheel)"
if [[ -z "$WHEEL" ]]; then
  echo "install_llama_server: building llama-cpp-python $VERSION wheel (one time, several minutes) into $WHEEL_DIR"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
    "$PY" -m pip wheel --no-deps "llama-cpp-python[server]==$VERSION" -w "$WHEEL_DIR"
  WHEEL="$(find_wheel)"
  [[ -n "$WHEEL" ]] || { echo "install_llama_server: build finished but no wheel in $WHEEL_DIR" >&2; exit 1; }
fi

echo "install_llama_server: installing $(basename "$WHEEL") and server deps"
"$PY" -m pip install --no-deps "$WHEEL"
# Only missing deps are fetched; existing satisfying versions (numpy, fastapi, ...) are left alone.
"$PY" -m pip install "${SERVER_DEPS[@]}"
installed_ok || { echo "install_llama_server: install finished but llama_cpp/server deps are not importable" >&2; exit 1; }
echo "install_llama_server: done"
