"""Stage 1: contrasting examples -> one unit trait vector per layer, with held-out metrics, in MLflow.

Flow: validate inputs (before the model loads) -> responses (given or generated, cached) -> one prefill
pass pooling the position inside the hooks (cached, so a sweep over methods/layers runs the model once)
-> seeded train/val split by prompt group (data.splits) and k-fold CV over the training pairs -> method per
layer, seeded per layer -> held-out metrics with 95% intervals and pre-flight diagnostics (core.evaluation)
-> vectors, `layer/<metric>` series, `best/<metric>` summaries and figures to MLflow.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from traitlab import faults
from traitlab.config.schema import ExtractConfig, MethodConfig, TraitConfig
from traitlab.config.trait_overrides import apply_trait_overrides
from traitlab.core.components import COMPONENTS, component_dim
from traitlab.core.diagnostics import confound_warnings, length_stats
from traitlab.core.evaluation import fit_and_score
from traitlab.core.layers import parse_layers
from traitlab.core.methods import derive_seed, get_method
from traitlab.core.metrics import argmax_finite
from traitlab.core.positions import parse_position
from traitlab.core.vecmath import pairwise_cosine_matrix
from traitlab.data import TraitDataset, load_trait, resolve_trait_dir
from traitlab.data.frames import check_position_frames
from traitlab.data.splits import fold_indices, trait_groups, trait_split
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.models.identity import model_tags
from traitlab.models.loading import LoadedModel, load_model
from traitlab.pipelines.common import model_key, pooled_activations, responses_for
from traitlab.tracking.artifacts import save_vector, vector_dir, vector_path
from traitlab.tracking.names import best_metric, layer_metric
from traitlab.tracking.runs import JobRun, stage_run

log = logging.getLogger(__name__)


Acts = dict[str, torch.Tensor]


def _best(metrics: dict[int, dict[str, float]], selection: str) -> int | None:
    return argmax_finite({lyr: m.get(selection, float("nan")) for lyr, m in metrics.items()})


@dataclass
class Extraction:
    """Everything stage 1 computes, without MLflow: a vector, metrics and method metadata per layer."""

    layers: list[int]
    vectors: dict[int, torch.Tensor]
    metrics: dict[int, dict[str, float]]  # per layer, flat names (val_accuracy, cv_effect_size_lo, diag_...)
    method_metadata: dict[int, dict[str, Any]]
    selection: str  # the per-layer metric the best layer is chosen on (cv_effect_size with folds)
    counts: dict[str, int]  # n_train_pos, n_val_pos, n_cv_pos, n_ood_pos, ... (the same at every layer)
    data_stats: dict[str, float] = field(default_factory=dict)  # response-length stats of the pairs
    warnings: list[str] = field(default_factory=list)

    @property
    def best_layer(self) -> int | None:
        """The layer with the highest defined selection metric; None when no layer has one."""
        return _best(self.metrics, self.selection)

    def diagnostics(self, layer: int) -> dict[str, float]:
        """Pre-flight diagnostics at a layer (agreement, separation, length confounds) with the data's lengths."""
        m = self.metrics[layer]
        return {**self.data_stats, **{k.removeprefix("diag_"): v for k, v in m.items() if k.startswith("diag_")}}


@dataclass
class ExtractResult:
    run_id: str
    skipped: bool
    trait: str
    layers: list[int] = field(default_factory=list)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)
    selection: str = "val_effect_size"
    extraction: Extraction | None = None

    @property
    def best_layer(self) -> int | None:
        return _best(self.metrics, self.selection)


def prepare(cfg: ExtractConfig, command_line: Collection[str] | None = None
            ) -> tuple[ExtractConfig, TraitDataset, dict[str, dict[str, Any]]]:
    """The effective config (the trait's extraction.yaml applied below the command line; see
    config/trait_overrides.py), the validated trait, and where each of the trait's settings came from."""
    trait = load_trait(resolve_trait_dir(cfg.trait.name, cfg.trait.path))
    cfg, settings = apply_trait_overrides(cfg, trait, command_line)
    return cfg, validate_inputs(cfg, trait), settings


def validate_inputs(cfg: ExtractConfig, trait: TraitDataset | None = None) -> TraitDataset:
    """Everything checkable without the model: trait files, position DSL, component, method, split."""
    trait = trait or load_trait(resolve_trait_dir(cfg.trait.name, cfg.trait.path))
    parse_position(cfg.position.spec)
    check_position_frames(cfg.position.spec, trait, cfg.extraction.use_provided_responses)
    if cfg.component.name not in COMPONENTS:
        raise ConfigError("component", f"'{cfg.component.name}' is not one of {', '.join(COMPONENTS)}")
    get_method(cfg.method.name, **dict(cfg.method.kwargs))
    ex = cfg.extraction
    if not 0.0 < ex.val_split < 0.9:
        raise ConfigError("extraction.val_split", f"{ex.val_split} must be in (0, 0.9)")
    if ex.cv_folds == 1 or ex.cv_folds < 0:
        raise ConfigError("extraction.cv_folds", f"{ex.cv_folds}: expected 0 (off) or at least 2 folds")
    if ex.n_bootstrap < 100:
        raise ConfigError("extraction.n_bootstrap", f"{ex.n_bootstrap}: expected at least 100 resamples")
    if not trait.negative:
        raise ConfigError("trait", f"{trait.path} has no negative examples; extraction needs contrasting pairs")
    if ex.cv_folds:  # enough prompt groups for the folds, checked before the model loads
        fold_indices(trait_split(trait, ex.val_split, cfg.seed), ex.cv_folds, cfg.seed, trait.paired,
                     trait_groups(trait))
    if cfg.layers != "all":
        parse_layers(cfg.layers, 10_000)  # syntax now; the range once the model's depth is known
    return trait


def job_key(cfg: ExtractConfig, trait: TraitDataset, lm_key: str, layers: list[int]) -> str:
    ex = cfg.extraction
    return content_hash("extract-v2", lm_key, trait.fingerprint(), cfg.position.spec, cfg.component.name,
                        cfg.method.name, dict(cfg.method.kwargs), layers, cfg.seed, ex.val_split, ex.cv_folds,
                        ex.n_bootstrap, asdict(ex.generation), ex.use_provided_responses, ex.max_length)


def trait_activations(lm: LoadedModel, cfg: ExtractConfig, trait: TraitDataset,
                      layers: list[int]) -> tuple[Acts, dict[str, torch.Tensor]]:
    """Pooled activations [N, L, D] and response lengths in tokens [N] per polarity present in the trait."""
    ex = cfg.extraction
    acts, lengths = {}, {}
    for name in ("positive", "negative", "ood_positive", "ood_negative"):
        examples = getattr(trait, name)
        if not examples:
            continue
        responses = responses_for(lm, examples, ex.generation, cfg.seed, ex.use_provided_responses,
                                  desc=f"generate {name}")
        acts[name] = pooled_activations(lm, examples, responses, position=cfg.position.spec,
                                        component=cfg.component.name, layers=layers, batch_size=ex.batch_size,
                                        max_length=ex.max_length, desc=f"capture {name}")
        lengths[name] = torch.tensor([len(ids) for ids in lm.tokenizer(list(responses), add_special_tokens=False)
                                      ["input_ids"]], dtype=torch.float64)
    return acts, lengths


def _counts(acts: Acts, split: dict[str, torch.Tensor], folds: list[dict[str, torch.Tensor]] | None) -> dict[str, int]:
    c = {f"n_{part}_{side}": len(split[f"{part}_{side}"]) for part in ("train", "val") for side in ("pos", "neg")}
    if folds:
        c.update(n_cv_folds=len(folds), **{f"n_cv_{side}": sum(len(f[f"val_{side}"]) for f in folds)
                                          for side in ("pos", "neg")})
    if "ood_positive" in acts and "ood_negative" in acts:
        c.update(n_ood_pos=len(acts["ood_positive"]), n_ood_neg=len(acts["ood_negative"]))
    return c


def _method_warnings(method: str, meta: dict[int, dict[str, Any]]) -> list[str]:
    out = []
    stuck = [lyr for lyr, m in meta.items() if m.get("converged") is False]
    if stuck:
        out.append(f"{method} did not converge at layers {_ranges(stuck)} (raise its max_iter / steps)")
    for text in sorted({m["warning"] for m in meta.values() if m.get("warning")}):
        out.append(f"{method}: {text}")
    return out


def _ranges(layers: list[int]) -> str:
    return ",".join(map(str, layers)) if len(layers) <= 8 else f"{layers[0]}..{layers[-1]} ({len(layers)} layers)"


def extract_vectors(acts: Acts, layers: list[int], method_name: str, method_kwargs: dict[str, Any],
                    split: dict[str, torch.Tensor], seed: int, *, folds: list[dict[str, torch.Tensor]] | None = None,
                    lengths: dict[str, torch.Tensor] | None = None, paired: bool = True,
                    n_boot: int = 1000) -> Extraction:
    """Pure part of the stage: the method per layer (seed derived per layer), held-out metrics, diagnostics.

    acts[k] is [N, L, D] for k in positive, negative and optionally ood_positive/ood_negative; lengths[k]
    the response lengths in tokens [N]. The best layer is chosen on cv_effect_size when `folds` are given,
    else on val_effect_size, and never on an undefined (NaN) value.
    """
    method = get_method(method_name, **method_kwargs)
    pos, neg = acts["positive"], acts["negative"]
    has_ood = "ood_positive" in acts and "ood_negative" in acts
    lens = (lengths["positive"], lengths["negative"]) if lengths else None
    vectors, metrics, meta = {}, {}, {}
    for j, layer in enumerate(tqdm(layers, desc=f"fit {method_name}", leave=False)):
        ood = (acts["ood_positive"][:, j], acts["ood_negative"][:, j]) if has_ood else None
        fit = fit_and_score(method, pos[:, j], neg[:, j], split, seed=derive_seed(seed, layer), paired=paired,
                            folds=folds, ood=ood, lengths=lens, n_boot=n_boot)
        vectors[layer], metrics[layer], meta[layer] = fit.vector, fit.metrics, fit.method_metadata
    counts = _counts(acts, split, folds)
    data_stats = length_stats(*lens) if lens else {}
    out = Extraction(layers, vectors, metrics, meta, "cv_effect_size" if folds else "val_effect_size", counts,
                     data_stats, _method_warnings(method_name, meta))
    if min(counts["n_val_pos"], counts["n_val_neg"]) < 2:
        out.warnings.append(f"the held-out split has {counts['n_val_pos']} positive and {counts['n_val_neg']} "
                            "negative examples: val effect size is undefined (NaN) and val accuracy moves in steps "
                            f"of 1/{counts['n_val_pos'] + counts['n_val_neg']}; use extraction.cv_folds or more pairs")
    best = out.best_layer
    if best is None:
        out.warnings.append(f"no layer has a defined {out.selection}: no best layer is chosen")
    out.warnings += confound_warnings({**data_stats, **(out.diagnostics(best) if best is not None else {})})
    for w in out.warnings:
        log.warning("%s", w)
    return out


def _rounded(metrics: dict[str, float], name: Callable[[str], str] = str) -> dict[str, float]:
    return {name(k): round(float(v), 4) for k, v in metrics.items()}


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return x


def _log_outputs(run: JobRun, cfg: ExtractConfig, trait: TraitDataset, lm: LoadedModel, ex: Extraction) -> None:
    from traitlab.viz.figures import cosine_matrix_figure, layer_curve_figure, layer_method_heatmap

    layers, metrics = ex.layers, ex.metrics
    for layer in layers:  # per-layer series: layer/<metric>, step = layer
        run.log_metrics(_rounded(metrics[layer], layer_metric), step=layer)
    run.log_metrics({**{k: float(v) for k, v in ex.counts.items()}, **_rounded(ex.data_stats, lambda k: f"data/{k}")})
    with tempfile.TemporaryDirectory() as tmp:
        for layer, v in ex.vectors.items():
            meta = {"trait": trait.qualified_name, "model": lm.identity.key, "model_name": lm.name,
                    "model_id": lm.spec.id,
                    "method": cfg.method.name, "component": cfg.component.name, "position": cfg.position.spec,
                    "layer": layer, "dim": int(v.shape[0]), "metrics": _json_safe(metrics[layer]),
                    "method_metadata": _json_safe(ex.method_metadata[layer]), "counts": ex.counts,
                    "dataset_fingerprint": trait.fingerprint()}
            save_vector(Path(tmp) / vector_path(cfg.component.name, cfg.position.spec, cfg.method.name, layer),
                        v, meta)
        d = vector_dir(cfg.component.name, cfg.position.spec, cfg.method.name)
        run.log_artifacts(Path(tmp) / d, d)
    faults.maybe_fail("log")
    curves, bands = {}, {}
    for part in ("cv", "val", "ood"):
        key = f"{cfg.method.name}:{part}_accuracy"
        per = {lyr: metrics[lyr][f"{part}_accuracy"] for lyr in layers if f"{part}_accuracy" in metrics[lyr]}
        if per:
            curves[key] = per
            bands[key] = {lyr: (metrics[lyr][f"{part}_accuracy_lo"], metrics[lyr][f"{part}_accuracy_hi"]) for lyr in per}
    run.log_figure(layer_curve_figure(curves, "accuracy (95% Wilson band)", bands), "figures/accuracy_by_layer.png")
    run.log_figure(layer_method_heatmap({(cfg.method.name, lyr): metrics[lyr].get(ex.selection) for lyr in layers},
                                        ex.selection), "figures/layer_method_heatmap.png")
    stacked = torch.stack([ex.vectors[lyr] for lyr in layers])
    run.log_figure(cosine_matrix_figure([f"L{lyr}" for lyr in layers], pairwise_cosine_matrix(stacked).numpy()),
                   "figures/vector_cosine_by_layer.png")
    run.log_table({"layer": layers, **{k: [_json_safe(metrics[lyr].get(k)) for lyr in layers]
                                       for k in sorted({k for m in metrics.values() for k in m})}},
                  "tables/metrics_by_layer.json")
    run.log_dict({str(lyr): _json_safe(ex.method_metadata[lyr]) for lyr in layers}, "tables/method_metadata.json")
    run.set_tag("traitlab.selection", ex.selection)
    best = ex.best_layer
    if best is not None:
        run.set_tag("best_layer", best)
        run.log_metrics({best_metric("layer"): float(best), **_rounded(metrics[best], best_metric)})
    confounds = [w for w in ex.warnings if "length" in w]
    if confounds:
        run.set_tag("traitlab.confound", "length")
        run.set_tag("traitlab.confound_detail", "; ".join(confounds)[:1000])
    if any(w.startswith(cfg.method.name) for w in ex.warnings):
        run.set_tag("traitlab.method_warnings", "; ".join(w for w in ex.warnings if w.startswith(cfg.method.name))[:1000])
    run.set_tag("mlflow.note.content", describe(trait.qualified_name, cfg.method.name, ex))


def describe(trait: str, method: str, ex: Extraction) -> str:
    """The run's markdown description: verdict at the best layer with intervals, sample sizes, warnings."""
    c, best = ex.counts, ex.best_layer
    lines = [f"**{trait} · {method}**: "
             + (f"best layer {best} (chosen on {ex.selection})" if best is not None else "no best layer (undefined)")]
    if best is not None:
        m = ex.metrics[best]
        for part, label in (("cv", "cross-validated"), ("val", "held-out"), ("ood", "OOD")):
            if f"{part}_accuracy" in m:
                lines.append(f"- {label}: accuracy {m[f'{part}_accuracy']:.2f} [{m[f'{part}_accuracy_lo']:.2f}, "
                             f"{m[f'{part}_accuracy_hi']:.2f}], effect size {m[f'{part}_effect_size']:.2f} "
                             f"[{m[f'{part}_effect_size_lo']:.2f}, {m[f'{part}_effect_size_hi']:.2f}]")
    lines.append("- n: " + ", ".join(f"{k.removeprefix('n_')} {v}" for k, v in c.items()))
    lines += [f"- warning: {w}" for w in ex.warnings]
    return "\n".join(lines)


def fit_trait(cfg: ExtractConfig, lm: LoadedModel | None = None, trait: TraitDataset | None = None,
              layers: list[int] | None = None) -> Extraction:
    """Stage 1 without MLflow: responses, pooled activations (cached), split, folds, vectors, metrics, diagnostics.

    `fit_trait(cfg, lm).diagnostics(layer)` gives the pre-flight diagnostics of a trait at a layer.
    """
    if trait is None:
        cfg, trait, _ = prepare(cfg)
    lm = lm or load_model(cfg.model)
    layers = layers or parse_layers(cfg.layers, lm.n_layers)
    ex = cfg.extraction
    acts, lengths = trait_activations(lm, cfg, trait, layers)
    split = trait_split(trait, ex.val_split, cfg.seed)
    folds = fold_indices(split, ex.cv_folds, cfg.seed, trait.paired, trait_groups(trait)) if ex.cv_folds else None
    return extract_vectors(acts, layers, cfg.method.name, dict(cfg.method.kwargs), split, cfg.seed, folds=folds,
                           lengths=lengths, paired=trait.paired, n_boot=ex.n_bootstrap)


def trait_diagnostics(trait: str, layer: int | None = None, *, method: str = "mean_diff",
                      lm: LoadedModel | None = None, **cfg: Any) -> dict[str, float]:
    """Pre-flight diagnostics and held-out metrics of a trait at a layer (None: its best layer), no MLflow.

    e.g. `trait_diagnostics("starter/sycophancy")` -> {"layer": 15, "agreement": 0.62, "separation": 5.96,
    "length_ratio": 0.50, ..., "cv_accuracy": 1.0, ...}; `cfg` sets other ExtractConfig fields.
    """
    ex = fit_trait(ExtractConfig(trait=TraitConfig(name=trait), method=MethodConfig(name=method), **cfg), lm)
    layer = ex.best_layer if layer is None else layer
    if layer is None or layer not in ex.metrics:
        raise ConfigError("layers", f"no layer {layer} among the extracted layers {ex.layers}")
    m = ex.metrics[layer]
    held_out = {k: v for k, v in m.items() if k.startswith(("cv_", "val_", "ood_"))}
    return {"layer": float(layer), **ex.diagnostics(layer), **held_out}


def run_extract(cfg: ExtractConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None,
                command_line: Collection[str] | None = None) -> ExtractResult:
    """`command_line`: config keys the user set, which the trait's extraction.yaml does not override (None: the
    keys whose values differ from the schema defaults; see config/trait_overrides.py)."""
    cfg, trait, trait_settings = prepare(cfg, command_line)
    lm = lm or load_model(cfg.model)
    layers = parse_layers(cfg.layers, lm.n_layers)
    component_dim(lm.model, cfg.component.name)  # fails fast on architectures without this component
    key = job_key(cfg, trait, model_key(lm), layers)
    tags = {"traitlab.stage": "extract", "trait": trait.qualified_name, **model_tags(lm.spec),
            "method": cfg.method.name, "component": cfg.component.name, "position": cfg.position.spec,
            "layers": ",".join(map(str, layers))}
    run_name = cfg.tracking.run_name or f"extract-{trait.name}-{cfg.method.name}-{cfg.component.name}"
    with stage_run(cfg, job_key=key, run_name=run_name, tags=tags, parent_run_id=parent_run_id) as run:
        if run.skipped:
            return ExtractResult(run.run_id, True, trait.qualified_name, layers)
        if trait_settings:  # the logged config already holds the effective values; this says where they came from
            run.log_dict(trait_settings, "config/trait_overrides.json")
            applied = {k: v["value"] for k, v in trait_settings.items() if v["applied"]}
            log.info("extraction.yaml settings applied: %s", applied or "none (all set on the command line)")
        ex = fit_trait(cfg, lm, trait, layers)
        _log_outputs(run, cfg, trait, lm, ex)
        result = ExtractResult(run.run_id, False, trait.qualified_name, layers, ex.metrics, ex.vectors, ex.selection, ex)
        best = result.best_layer
        if best is not None:
            m = ex.metrics[best]
            log.info("%s/%s: best layer %s (on %s) val_accuracy=%.3f [%.3f, %.3f] %s=%.2f", trait.qualified_name,
                     cfg.method.name, best, ex.selection, m["val_accuracy"], m["val_accuracy_lo"],
                     m["val_accuracy_hi"], ex.selection, m[ex.selection])
        return result
