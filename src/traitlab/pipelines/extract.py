"""Stage 1: contrasting examples -> one unit trait vector per layer, with held-out metrics, in MLflow.

Flow: validate inputs (before the model loads) -> responses (given or generated, cached) -> one prefill
pass pooling the position inside the hooks (cached, so a sweep over methods/layers runs the model once)
-> seeded train/val split -> method per layer -> metrics (val, OOD) -> vectors + figures to MLflow.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlab import faults
from traitlab.config.schema import ExtractConfig
from traitlab.config.trait_overrides import apply_trait_overrides
from traitlab.core.components import COMPONENTS, component_dim
from traitlab.core.layers import parse_layers
from traitlab.core.methods import get_method
from traitlab.core.metrics import accuracy, effect_size, polarity_correct
from traitlab.core.positions import parse_position
from traitlab.core.vecmath import batch_cosine_similarity, pairwise_cosine_matrix
from traitlab.data import TraitDataset, load_trait, resolve_trait_dir
from traitlab.data.frames import check_position_frames
from traitlab.data.splits import split_indices
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.models.identity import model_tags
from traitlab.models.loading import LoadedModel, load_model
from traitlab.pipelines.common import model_key, pooled_activations, responses_for
from traitlab.tracking.artifacts import save_vector, vector_dir, vector_path
from traitlab.tracking.runs import JobRun, stage_run

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    run_id: str
    skipped: bool
    trait: str
    layers: list[int] = field(default_factory=list)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def best_layer(self) -> int | None:
        scored = {k: v.get("val_effect_size", float("-inf")) for k, v in self.metrics.items()}
        return max(scored, key=scored.get) if scored else None


def validate_inputs(cfg: ExtractConfig, trait: TraitDataset | None = None) -> TraitDataset:
    """Everything checkable without the model: trait files, position DSL, component, method, split."""
    trait = trait or load_trait(resolve_trait_dir(cfg.trait.name, cfg.trait.path))
    parse_position(cfg.position.spec)
    check_position_frames(cfg.position.spec, trait, cfg.extraction.use_provided_responses)
    if cfg.component.name not in COMPONENTS:
        raise ConfigError("component", f"'{cfg.component.name}' is not one of {', '.join(COMPONENTS)}")
    get_method(cfg.method.name, **dict(cfg.method.kwargs))
    if not 0.0 < cfg.extraction.val_split < 0.9:
        raise ConfigError("extraction.val_split", f"{cfg.extraction.val_split} must be in (0, 0.9)")
    if not trait.negative:
        raise ConfigError("trait", f"{trait.path} has no negative examples; extraction needs contrasting pairs")
    if cfg.layers != "all":
        parse_layers(cfg.layers, 10_000)  # syntax now; the range once the model's depth is known
    return trait


def _separation(pos: torch.Tensor, neg: torch.Tensor, v: torch.Tensor, prefix: str) -> dict[str, float]:
    if len(pos) == 0 or len(neg) == 0:
        return {}
    ps, ns = batch_cosine_similarity(pos, v), batch_cosine_similarity(neg, v)
    return {f"{prefix}accuracy": accuracy(ps, ns), f"{prefix}effect_size": effect_size(ps, ns),
            f"{prefix}polarity_correct": float(polarity_correct(ps, ns))}


def job_key(cfg: ExtractConfig, trait: TraitDataset, lm_key: str, layers: list[int]) -> str:
    return content_hash("extract-v1", lm_key, trait.fingerprint(), cfg.position.spec, cfg.component.name,
                        cfg.method.name, dict(cfg.method.kwargs), layers, cfg.seed, cfg.extraction.val_split,
                        asdict(cfg.extraction.generation), cfg.extraction.use_provided_responses,
                        cfg.extraction.max_length)


def _activations(lm: LoadedModel, cfg: ExtractConfig, trait: TraitDataset, layers: list[int]) -> dict[str, torch.Tensor]:
    ex = cfg.extraction
    out = {}
    for name in ("positive", "negative", "ood_positive", "ood_negative"):
        examples = getattr(trait, name)
        if not examples:
            continue
        responses = responses_for(lm, examples, ex.generation, cfg.seed, ex.use_provided_responses,
                                  desc=f"generate {name}")
        out[name] = pooled_activations(lm, examples, responses, position=cfg.position.spec,
                                       component=cfg.component.name, layers=layers, batch_size=ex.batch_size,
                                       max_length=ex.max_length, desc=f"capture {name}")
    return out


def extract_vectors(acts: dict[str, torch.Tensor], layers: list[int], method_name: str, method_kwargs: dict[str, Any],
                    split: dict[str, torch.Tensor], seed: int) -> tuple[dict[int, torch.Tensor], dict[int, dict[str, float]]]:
    """Pure part of the stage: method per layer + metrics. acts[k] is [N, L, D]."""
    method = get_method(method_name, **method_kwargs)
    pos, neg = acts["positive"], acts["negative"]
    vectors, metrics = {}, {}
    for j, layer in enumerate(layers):
        tr_p, tr_n = pos[split["train_pos"], j], neg[split["train_neg"], j]
        va_p, va_n = pos[split["val_pos"], j], neg[split["val_neg"], j]
        res = method.extract(tr_p, tr_n, seed=seed)
        v = res.vector.float()
        m = {"train_accuracy": _separation(tr_p, tr_n, v, "")["accuracy"]}
        m.update(_separation(va_p, va_n, v, "val_"))
        if "ood_positive" in acts and "ood_negative" in acts:
            m.update(_separation(acts["ood_positive"][:, j], acts["ood_negative"][:, j], v, "ood_"))
        train_all = torch.cat([tr_p, tr_n])
        m["activation_norm"] = float(train_all.norm(dim=-1).mean())
        m["baseline"] = float(train_all.mean(0) @ v)
        m["vector_norm"] = float(v.norm())
        vectors[layer], metrics[layer] = v, m
    return vectors, metrics


def _log_outputs(run: JobRun, cfg: ExtractConfig, trait: TraitDataset, lm: LoadedModel,
                 vectors: dict[int, torch.Tensor], metrics: dict[int, dict[str, float]]) -> None:
    from traitlab.viz.figures import cosine_matrix_figure, layer_curve_figure, layer_method_heatmap

    for layer, m in metrics.items():
        run.log_metrics(m, step=layer)
    with tempfile.TemporaryDirectory() as tmp:
        for layer, v in vectors.items():
            meta = {"trait": trait.qualified_name, "model": lm.identity.key, "model_name": lm.name,
                    "model_id": lm.spec.id,
                    "method": cfg.method.name, "component": cfg.component.name, "position": cfg.position.spec,
                    "layer": layer, "dim": int(v.shape[0]), "metrics": metrics[layer],
                    "dataset_fingerprint": trait.fingerprint()}
            save_vector(Path(tmp) / vector_path(cfg.component.name, cfg.position.spec, cfg.method.name, layer),
                        v, meta)
        d = vector_dir(cfg.component.name, cfg.position.spec, cfg.method.name)
        run.log_artifacts(Path(tmp) / d, d)
    faults.maybe_fail("log")
    layers = sorted(vectors)
    curves = {f"{cfg.method.name}:{k}": {lyr: metrics[lyr][k] for lyr in layers if k in metrics[lyr]}
              for k in ("val_accuracy", "ood_accuracy")}
    run.log_figure(layer_curve_figure({k: v for k, v in curves.items() if v}, "accuracy"),
                   "figures/accuracy_by_layer.png")
    run.log_figure(layer_method_heatmap({(cfg.method.name, lyr): metrics[lyr].get("val_effect_size", 0.0)
                                         for lyr in layers}, "val_effect_size"), "figures/layer_method_heatmap.png")
    stacked = torch.stack([vectors[lyr] for lyr in layers])
    run.log_figure(cosine_matrix_figure([f"L{lyr}" for lyr in layers], pairwise_cosine_matrix(stacked).numpy()),
                   "figures/vector_cosine_by_layer.png")
    best = max(layers, key=lambda lyr: metrics[lyr].get("val_effect_size", float("-inf")))
    run.set_tag("best_layer", best)
    run.log_metrics({"best_val_accuracy": metrics[best].get("val_accuracy", float("nan")),
                     "best_val_effect_size": metrics[best].get("val_effect_size", float("nan"))})
    run.log_table({"layer": layers, **{k: [metrics[lyr].get(k) for lyr in layers]
                                       for k in sorted({k for m in metrics.values() for k in m})}},
                  "tables/metrics_by_layer.json")


def run_extract(cfg: ExtractConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None,
                command_line: Collection[str] | None = None) -> ExtractResult:
    """`command_line`: config keys the user set, which the trait's extraction.yaml does not override (None: the
    keys whose values differ from the schema defaults; see config/trait_overrides.py)."""
    trait = load_trait(resolve_trait_dir(cfg.trait.name, cfg.trait.path))
    cfg, trait_settings = apply_trait_overrides(cfg, trait, command_line)
    trait = validate_inputs(cfg, trait)
    lm = lm or load_model(cfg.model)
    n_layers = lm.n_layers
    layers = parse_layers(cfg.layers, n_layers)
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
        acts = _activations(lm, cfg, trait, layers)
        split = split_indices(len(trait.positive), len(trait.negative), cfg.extraction.val_split, cfg.seed,
                              trait.paired)
        vectors, metrics = extract_vectors(acts, layers, cfg.method.name, dict(cfg.method.kwargs), split, cfg.seed)
        _log_outputs(run, cfg, trait, lm, vectors, metrics)
        result = ExtractResult(run.run_id, False, trait.qualified_name, layers, metrics, vectors)
        best = result.best_layer
        log.info("%s/%s: best layer %s val_accuracy=%.3f val_effect_size=%.2f", trait.qualified_name,
                 cfg.method.name, best, metrics[best].get("val_accuracy", float("nan")),
                 metrics[best].get("val_effect_size", float("nan")))
        return result
