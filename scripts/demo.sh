#!/usr/bin/env bash
# The main job end to end on the embedded defaults (SmolLM2-135M on CPU): extract -> steer -> infer,
# then where to look in the MLflow UI. About 5 min on 2 idle CPU cores the first time (later runs reuse caches).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TRAIT=${TRAIT:-starter/optimism}
EXP=${EXPERIMENT:-demo}
LAYERS=${LAYERS:-'best-1:best+1'}   # a window around extraction's best layer (layer DSL)
mkdir -p outputs
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

echo "== 1/3 extract: $TRAIT, methods mean_diff + probe, all layers (one model pass, cached) =="
$PY launchers/extract.py -m trait="$TRAIT" method=mean_diff,probe tracking.experiment="$EXP" | tee outputs/demo_extract.log

echo "== 2/3 steer: Optuna search at layers $LAYERS, objective = propensity on held-out pairs (no LLM judge), =="
echo "==     coherence = perplexity of the steered answers, sentiment (VADER) logged beside, 95% intervals  =="
$PY launchers/steer.py trait="$TRAIT" method=mean_diff layers="'$LAYERS'" steering.scorer=sentiment \
    steering.n_questions=4 steering.steps=3 steering.max_new_tokens=32 steering.propensity.max_pairs=8 \
    tracking.experiment="$EXP" | tee outputs/demo_steer.log

echo "== 3/3 infer: per-token trait scores on the smoke prompt set, best layer (steering result if trusted) =="
$PY launchers/infer.py prompt_set=smoke traits="[$TRAIT]" layers=best inference.generation.max_new_tokens=32 \
    tracking.experiment="$EXP" | tee outputs/demo_infer.log

$PY -m traitlab.tracking.dashboard --base "http://127.0.0.1:${PORT:-5000}" | grep -A1 " $EXP: " || true
cat <<MSG

Done. How to read the steering table above (also the steer run's steering_table.md):
  - objective: propensity = how much more likely the model finds a held-out pair's positive answer than its
    negative one (log-prob per token), measured without any system prompt. "delta" = steered minus unsteered on
    the same pairs, with a paired bootstrap 95% interval: an interval that excludes zero is an effect, one that
    includes zero is noise (the table says so under "warnings").
  - prompted delta: what simply asking for the trait (a system prompt) does on the same measure. Steering that
    beats it does something asking does not.
  - sentiment delta: VADER compound (-1..1) of the steered answers minus the unsteered ones, same questions.
  - coherence: perplexity of the steered answers under the unsteered model, 0-100 (its own answers ~100); a
    coefficient counts only at coherence >= the threshold. coef (x base): the coefficient and its size relative
    to the layer's typical activation norm.
  - steerability: slope of propensity against coef/base over the coherent range (Tan et al. 2024);
    anti-steerable: the fraction of pairs that steering moves the wrong way.

Serve the dashboard with   make ui   and open the "$EXP" URL above (the classic run table; MLflow's
own start page is its GenAI view). Each row's Description is its verdict; the Views menu also ranks every
run on best/cv_effect_size.
  - the "extract-sweep ..." row: the winning method and layer against the runner-up with their intervals;
    best/<method>/... per child; figures/ = accuracy and effect size by layer with the methods overlaid,
    cosine between the methods' vectors; tables/children.json. Expand it for one row per method
    (figures/: accuracy and effect size by layer with bands, projections at the best layer; vectors/).
  - the steer run: its description is the verdict; steering_table.md; metrics layer/objective_delta (with _lo,
    _hi), layer/steerability, layer/sentiment_delta per layer (step = layer) and best/*; figures/
    steering_layer_*.png (objective and coherence vs coefficient) and propensity_layer_*.png (one line per
    held-out pair), objective_vs_coherence.png (every trial); report/steering.html (every condition and answer
    in full, sortable, inside the Artifacts tab); tables/responses.json.
  - the infer run: views/index.html and views/prompts/<id>.html = per-token heatmap of the trait
    (hover a token for its score), figures/ trajectories and trait x token heatmaps, projections/*.json.
MSG
