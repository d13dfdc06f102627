"""Steerability of every starter trait at its best extraction layer (mean_diff), judge-free.

For each trait: extract mean_diff vectors at all layers (cached activations), take extraction's best layer,
then on a fixed grid of coefficients (multiples of base = median ||h_layer|| / ||v||) measure in shared batches
the propensity of the held-out pairs (extraction's val split, then OOD pairs) and the perplexity coherence of
the steered answers to the trait's steering questions. The coherent range is the run of grid points around 0
whose coherence stays >= the threshold; over it: steerability (propensity slope per unit of base), the fraction
of anti-steerable pairs, the slopes' spread, and the propensity delta at the largest coherent coefficient
toward the trait, with its paired bootstrap 95% interval; beside it, the prompted baseline's delta. Then the
extraction's pre-flight diagnostics at that layer (agreement, separation, cv_effect_size, length confounds) and
each diagnostic's Spearman rank correlation with steerability over the traits, with its exact permutation p.

    PYTHONPATH=src .venv/bin/python scripts/steerability_report.py [trait ...]

or from Python: `report(["starter/optimism"])` returns the rows and prints the tables; on a busy machine
`report(max_pairs=8, n_questions=3, max_new_tokens=20, max_examples=24)` (about 5 CPU-minutes for the six).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GRID = (-0.3, -0.15, 0.15, 0.3, 0.45)   # coefficient / base; 0 is the unsteered point
THRESHOLD = 90.0                       # perplexity coherence, as steering's default for judge=perplexity
TRAITS = ("starter/evil", "starter/formality", "starter/hallucination", "starter/optimism", "starter/refusal",
          "starter/sycophancy")


@dataclass
class Row:
    trait: str
    layer: int
    base: float
    coherent: tuple[float, ...]   # coherent grid points (x base), 0 included
    steerability: object          # core.stats.Steerability
    delta: object                 # steer_measures.Delta at the largest coherent coefficient toward the trait
    delta_at: float
    prompted: object              # steer_measures.Delta: the trait's system prompt, no steering
    n_pairs: int
    diagnostics: dict[str, float]  # extraction's pre-flight diagnostics at the best layer, with cv_effect_size


def trimmed_copy(trait_name: str, max_examples: int, dst_root: Path) -> Path:
    """A copy of the trait's directory with the first `max_examples` pairs (OOD files: a third of that, at least 4);
    pairs are matched by line order, so the first lines of both sides stay pairs."""
    from traitlab.data import resolve_trait_dir

    src = resolve_trait_dir(trait_name)
    dst = dst_root / trait_name
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix == ".jsonl":
            keep = max_examples if not f.name.startswith("ood_") else max(4, max_examples // 3)
            lines = [ln for ln in f.read_text().splitlines() if ln.strip()][:keep]
            (dst / f.name).write_text("\n".join(lines) + "\n")
        elif f.is_file():
            shutil.copy(f, dst / f.name)
    return dst


def measure_trait(lm, trait_name: str, experiment: str, max_pairs: int = 12, n_questions: int = 4,
                  max_new_tokens: int = 24, seed: int = 42, max_examples: int | None = None) -> Row:
    """`max_examples`: extract from the first N training pairs only (a cheaper, noisier vector; None: all)."""
    from traitlab.config.schema import (
        ExtractConfig,
        GenerationConfig,
        MethodConfig,
        TrackingConfig,
        TraitConfig,
    )
    from traitlab.core.stats import steerability
    from traitlab.data import load_trait, resolve_trait_dir
    from traitlab.judge.cheap import PerplexityCoherence
    from traitlab.models.chat import format_prompt
    from traitlab.models.steering import activation_norms
    from traitlab.pipelines.extract import fit_trait
    from traitlab.steering.measures import (
        PROPENSITY,
        Measurer,
        heldout_examples,
        heldout_pairs,
        paired_delta,
    )

    path = str(trimmed_copy(trait_name, max_examples, Path(tempfile.mkdtemp(prefix="steerability-")))) \
        if max_examples else None
    cfg = ExtractConfig(trait=TraitConfig(name=trait_name, path=path), method=MethodConfig(name="mean_diff"), layers="all",
                        tracking=TrackingConfig(experiment=experiment), seed=seed)
    # Stage 1 without MLflow (activations cached): the best layer by the extraction's own selection rule
    # (cv_effect_size with folds) and the pre-flight diagnostics there.
    ex = fit_trait(cfg, lm)
    best = ex.best_layer
    vector = ex.vectors[best]
    diag = {**ex.diagnostics(best), "cv_effect_size": ex.metrics[best].get(ex.selection, math.nan)}
    trait = load_trait(resolve_trait_dir(trait_name, path))
    direction = trait.steering.direction
    questions = trait.steering.questions[:n_questions]
    pairs = heldout_pairs(lm, heldout_examples(trait, cfg.extraction.val_split, seed, max_pairs=max_pairs), seed)
    m = Measurer(lm, trait, questions, PerplexityCoherence(lm), None, pairs,
                 GenerationConfig(max_new_tokens=max_new_tokens, batch_size=64), seed=seed, max_response_tokens=32)
    texts = [format_prompt(lm.tokenizer, q, None, lm.use_chat_template) for q in questions]
    base = activation_norms(lm, texts, [best])[best] / float(vector.norm())
    xs = (0.0, *GRID)
    samples = m.steered([None] + [[(best, vector, direction * x * base)] for x in GRID])
    coh = {x: s.mean_coherence or 0.0 for x, s in zip(xs, samples, strict=True)}
    ordered = sorted(xs)
    zero = ordered.index(0.0)
    lo = hi = zero
    while lo > 0 and coh[ordered[lo - 1]] >= THRESHOLD:
        lo -= 1
    while hi < len(ordered) - 1 and coh[ordered[hi + 1]] >= THRESHOLD:
        hi += 1
    coherent = tuple(ordered[lo:hi + 1])
    by_x = dict(zip(xs, samples, strict=True))
    st = steerability([direction * x for x in coherent], [by_x[x].margins for x in coherent], seed=seed)
    top = max(coherent)  # toward the trait: positive multiples carry the direction's sign
    delta = paired_delta(by_x[top].items(PROPENSITY, None), by_x[0.0].items(PROPENSITY, None), direction,
                         seed=seed, n_boot=2000)
    system = next((e.system_prompt for e in (trait.positive if direction > 0 else trait.negative) if e.system_prompt),
                  None)
    prompted = m.propensities([None], system_prompt=system)[0]
    pdelta = paired_delta(prompted, by_x[0.0].items(PROPENSITY, None), direction, seed=seed, n_boot=2000)
    return Row(trait_name, best, base, coherent, st, delta, top, pdelta, len(pairs), diag)


def _ci(d) -> str:
    iv = d.interval
    return f"{iv.mean:+.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def table(rows: list[Row]) -> str:
    lines = ["| trait | best layer | coherent range (x base) | steerability [95% CI] | anti-steerable | slope spread "
             "| propensity delta at max coherent [95% CI] | prompted delta [95% CI] | pairs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.steerability
        lines.append(f"| {r.trait} | {r.layer} | {min(r.coherent):+.2f} .. {max(r.coherent):+.2f} | "
                     f"{s.steerability:.3f} [{s.interval.low:.3f}, {s.interval.high:.3f}] | {s.anti_steerable:.2f} | "
                     f"{s.spread:.3f} | {_ci(r.delta)} at {r.delta_at:+.2f} | {_ci(r.prompted)} | {r.n_pairs} |")
    return "\n".join(lines)


# Diagnostics that might predict steerability, as (label, value from the row). Length ones are magnitudes: a
# confound in either direction is a confound.
PREDICTORS = (
    ("agreement", lambda d: d.get("agreement", math.nan)),
    ("separation", lambda d: d.get("separation", math.nan)),
    ("cv_effect_size", lambda d: d.get("cv_effect_size", math.nan)),
    ("length imbalance max(r, 1/r)", lambda d: max(d.get("length_ratio", math.nan), 1 / d.get("length_ratio", math.nan))),
    ("|length_cos|", lambda d: abs(d.get("length_cos", math.nan))),
    ("|length_corr_within|", lambda d: abs(d.get("length_corr_within", math.nan))),
)


def diagnostics_table(rows: list[Row]) -> str:
    lines = ["| trait | best layer | agreement | separation | cv_effect_size | length pos/neg (tokens) | length_cos "
             "| length_corr_within | steerability |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r.diagnostics
        lines.append(f"| {r.trait} | {r.layer} | {d.get('agreement', math.nan):.3f} | {d.get('separation', math.nan):.2f} "
                     f"| {d.get('cv_effect_size', math.nan):.2f} | {d.get('length_pos', math.nan):.0f}/"
                     f"{d.get('length_neg', math.nan):.0f} ({d.get('length_ratio', math.nan):.2f}x) "
                     f"| {d.get('length_cos', math.nan):+.2f} | {d.get('length_corr_within', math.nan):+.2f} "
                     f"| {r.steerability.steerability:.3f} |")
    return "\n".join(lines)


def spearman_exact(x, y) -> tuple[float, float]:
    """Spearman's rho and its exact two-sided permutation p-value (all n! orderings; n <= 8). NaN when a
    value is missing or a side is constant."""
    from itertools import permutations

    import numpy as np
    from scipy.stats import rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or not (np.isfinite(x).all() and np.isfinite(y).all()) or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    rx, ry = rankdata(x), rankdata(y)
    rho = float(np.corrcoef(rx, ry)[0, 1])
    null = np.array([np.corrcoef(rx, np.asarray(p))[0, 1] for p in permutations(ry)])
    return rho, float(np.mean(np.abs(null) >= abs(rho) - 1e-12))


def prediction_table(rows: list[Row]) -> str:
    """How well each diagnostic ranked the traits' steerability (Spearman over the traits, exact p-value)."""
    y = [r.steerability.steerability for r in rows]
    lines = [f"| diagnostic | Spearman rho with steerability (n = {len(rows)} traits) | exact permutation p |",
             "|---|---|---|"]
    for label, get in PREDICTORS:
        rho, p = spearman_exact([get(r.diagnostics) for r in rows], y)
        lines.append(f"| {label} | {rho:+.2f} | {p:.2f} |")
    return "\n".join(lines)


def report(traits=TRAITS, experiment: str = "steerability-report", **kwargs) -> list[Row]:
    """`kwargs` go to measure_trait (max_pairs, n_questions, max_new_tokens, seed)."""
    from traitlab.models.loading import load_model

    lm = load_model("smollm2_135m")
    rows = []
    for t in traits:
        rows.append(measure_trait(lm, t, experiment, **kwargs))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    print()
    print(diagnostics_table(rows))
    if len(rows) >= 3:
        print()
        print(prediction_table(rows))
        if len(rows) < 8:
            print(f"\nWith {len(rows)} traits only |rho| near 1 is distinguishable from chance (the p column); "
                  "smaller correlations are noise.")
    return rows


if __name__ == "__main__":
    report(sys.argv[1:] or TRAITS)
