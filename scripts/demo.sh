#!/usr/bin/env bash
# The main job end to end on the embedded defaults (SmolLM2-135M on CPU): extract -> steer -> infer,
# then where to look in the MLflow UI. ~5-10 min on 2 CPU cores the first time (later runs reuse caches).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TRAIT=${TRAIT:-starter/optimism}
EXP=${EXPERIMENT:-demo}
LAYERS=${LAYERS:-'8,10,12'}
mkdir -p outputs
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

echo "== 1/3 extract: $TRAIT, methods mean_diff + probe, all layers (one model pass, cached) =="
$PY launchers/extract.py -m trait="$TRAIT" method=mean_diff,probe tracking.experiment="$EXP" | tee outputs/demo_extract.log

echo "== 2/3 steer: Optuna coherence-gated coefficient search at layers $LAYERS, judged in-process =="
$PY launchers/steer.py trait="$TRAIT" method=mean_diff judge=hf_local judge.perplexity_combine=perplexity \
    layers="'$LAYERS'" steering.n_questions=3 steering.steps=3 steering.max_new_tokens=24 \
    tracking.experiment="$EXP" | tee outputs/demo_steer.log

echo "== 3/3 infer: per-token trait scores on the smoke prompt set, best steering layer =="
$PY launchers/infer.py prompt_set=smoke traits="[$TRAIT]" layers=best inference.generation.max_new_tokens=32 \
    tracking.experiment="$EXP" | tee outputs/demo_infer.log

$PY -m traitlab.tracking.dashboard --base "http://127.0.0.1:${PORT:-5000}" | grep -A1 " $EXP: " || true
cat <<MSG

Done. Serve the dashboard with   make ui   and open the "$EXP" URL above (the classic run table; MLflow's
own start page is its GenAI view). Each row's Description is its verdict; the Views menu also ranks every
run on best/cv_effect_size.
  - the "extract-sweep ..." row: the winning method and layer against the runner-up with their intervals;
    best/<method>/... per child; figures/ = accuracy and effect size by layer with the methods overlaid,
    cosine between the methods' vectors; tables/children.json. Expand it for one row per method
    (figures/: accuracy and effect size by layer with bands, projections at the best layer; vectors/).
  - the steer run: tables/responses.json (every steered response with coefficient, layer, scores),
    figures/ (trait score and coherence vs coefficient per layer, threshold line, baselines).
  - the infer run: views/index.html and views/prompts/<id>.html = per-token heatmap of the trait
    (hover a token for its score), figures/ trajectories and trait x token heatmaps, projections/*.json.
MSG
