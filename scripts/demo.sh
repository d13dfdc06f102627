#!/usr/bin/env bash
# The main job end to end on the embedded defaults (SmolLM2-135M on CPU), then where to look in MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TRAIT=${TRAIT:-starter/optimism}
EXP=${EXPERIMENT:-demo}

echo "== 1/1 extract: $TRAIT, methods mean_diff + probe, all layers =="
$PY launchers/extract.py -m trait="$TRAIT" method=mean_diff,probe tracking.experiment="$EXP"

cat <<MSG

Done. Open the dashboard:   make ui      (then http://127.0.0.1:5000)
  Experiment "$EXP" -> the "extract-sweep-*" parent run: figures/ has the layer x method heatmaps;
  its child runs have per-layer metrics (Model metrics tab, x-axis = step = layer), vectors/ (safetensors +
  JSON per layer), figures/accuracy_by_layer.png and config/resolved.yaml.
MSG
