"""Cross-trait normalisation: the registry's vectors of several traits -> centred and/or neutral-denoised vectors.

For one (model, method, component, position), each trait's newest extraction run is the source. Per layer
shared by all sources the vectors are normalised together (core.normalization); each trait's normalised
vectors go to a run of their own (tag `normalization`, provenance in `traitlab.source_run(s)`), scored on the
same held-out rows as the source vectors (the source run's own config rebuilds its data from the caches)
with the raw vector's score beside it, so the run shows what normalisation changed.

Reached from a multirun: `python launchers/extract.py -m trait=a,b,c normalize.center=true
normalize.denoise=neutral` runs (or skips) the extraction jobs, then this step over the sweep's traits.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from traitlab.config.schema import ExtractConfig, TraitConfig
from traitlab.core.evaluation import score_vector
from traitlab.core.layers import parse_layers
from traitlab.core.methods import derive_seed
from traitlab.core.metrics import argmax_finite
from traitlab.core.normalization import mean_abs_cosine, neutral_basis, normalize_vectors
from traitlab.data.reference import ReferenceSet
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.models.batching import resolve_batch_size
from traitlab.models.identity import model_tags, vectors_key
from traitlab.models.loading import LoadedModel, load_model
from traitlab.pipelines.common import model_key, pooled_activations, prompt_texts, responses_for
from traitlab.pipelines.trait_data import check_normalize_settings, run_extract_config, training_rows
from traitlab.tracking.artifacts import save_vector, vector_dir, vector_path
from traitlab.tracking.names import NORMALIZATION_TAG, best_metric, layer_metric
from traitlab.tracking.registry import VectorRef, fetch_vector, find_vectors
from traitlab.tracking.runs import stage_run
from traitlab.tracking.store import ensure_store

log = logging.getLogger(__name__)


@dataclass
class NormalizeResult:
    steps: str
    layers: list[int]
    run_ids: dict[str, str] = field(default_factory=dict)  # trait -> run of its normalised vectors
    metrics: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)  # trait -> layer -> metrics
    vectors: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    overlap: dict[int, tuple[float, float]] = field(default_factory=dict)  # layer -> mean |cos| before, after
    skipped: bool = False


def steps_of(cfg: ExtractConfig) -> str:
    n = cfg.normalize
    return "+".join(s for s, on in (("center", n.center), ("denoise", bool(n.denoise))) if on)


def _sources(cfg: ExtractConfig, traits: list[str],
             runs: Mapping[str, str] | None = None) -> dict[str, dict[int, VectorRef]]:
    """Each trait's source run (given in `runs`, else its newest extraction run of this method/component/
    position): its vectors by layer."""
    out = {}
    client, _ = ensure_store(cfg.tracking.uri, cfg.tracking.experiment)
    for t in traits:
        if runs and t in runs:
            tags = client.get_run(runs[t]).data.tags
            out[t] = {int(x): VectorRef(runs[t], t, tags["model"], tags["method"], tags["component"], tags["position"],
                                        int(x)) for x in tags["layers"].split(",") if x}
            continue
        refs = find_vectors(t, vectors_key(cfg.model), method=cfg.method.name, component=cfg.component.name,
                            position=cfg.position.spec, experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)
        if not refs:
            raise ConfigError("normalize", f"no extracted vectors of {t} (method={cfg.method.name}, component="
                                           f"{cfg.component.name}, position={cfg.position.spec!r}) in experiment "
                                           f"'{cfg.tracking.experiment}'; extract them first")
        newest = refs[0].run_id
        out[t] = {r.layer: r for r in refs if r.run_id == newest}
    return out


def validate(cfg: ExtractConfig, traits: list[str],
             runs: Mapping[str, str] | None = None) -> tuple[ReferenceSet | None, dict[str, dict[int, VectorRef]]]:
    n = cfg.normalize
    if not steps_of(cfg):
        raise ConfigError("normalize", "nothing to do: set normalize.center=true and/or normalize.denoise=neutral")
    if n.center and len(traits) < 2:
        raise ConfigError("normalize.center", f"grand-mean centring needs at least 2 traits, got {traits}")
    neutral = check_normalize_settings(cfg)
    if n.center and len(traits) == 2:
        log.warning("centring 2 traits leaves +-(v1 - v2)/2: the two normalised vectors are exact opposites")
    return neutral, _sources(cfg, traits, runs)


def _neutral_bases(lm: LoadedModel, cfg: ExtractConfig, neutral: ReferenceSet,
                   layers: list[int]) -> dict[int, tuple[torch.Tensor, float]]:
    ex = cfg.extraction
    gen = replace(ex.generation, batch_size=8 if isinstance(ex.generation.batch_size, str) else ex.generation.batch_size)
    responses = responses_for(lm, neutral.examples, gen, cfg.seed, True, desc="generate neutral")
    batch = resolve_batch_size(ex.batch_size, lm, [t + r for t, r in zip(prompt_texts(lm, neutral.examples),
                                                                          responses, strict=True)],
                               key="extraction.batch_size")
    acts = pooled_activations(lm, neutral.examples, responses, position=cfg.position.spec,
                              component=cfg.component.name, layers=layers, batch_size=batch,
                              max_length=ex.max_length, desc="capture neutral")
    return {lyr: neutral_basis(acts[:, j], cfg.normalize.variance) for j, lyr in enumerate(layers)}


def _heldout(lm: LoadedModel, src: ExtractConfig, layers: list[int],
             vectors: dict[str, dict[int, torch.Tensor]]) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, int]]:
    """Val metrics of each named vector set on the source run's own held-out rows (its seed, split, data)."""
    src_layers = parse_layers(src.layers, lm.n_layers)  # the source's layer list: its activation cache entry
    data, split = training_rows(lm, src, src_layers)
    pos, neg = data.acts["positive"], data.acts["negative"]
    out: dict[str, dict[int, dict[str, float]]] = {name: {} for name in vectors}
    for lyr in layers:
        j = src_layers.index(lyr)
        for name, by_layer in vectors.items():
            out[name][lyr] = score_vector(by_layer[lyr], pos[:, j], neg[:, j], split, seed=derive_seed(src.seed, lyr),
                                          paired=data.trait.paired, n_boot=src.extraction.n_bootstrap)
    counts = {f"n_val_{s}": len(split[f"val_{s}"]) for s in ("pos", "neg")}
    return out, counts


def run_normalize(cfg: ExtractConfig, traits: list[str], *, source_runs: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None, lm: LoadedModel | None = None) -> NormalizeResult:
    """Normalise the vectors of `traits` across them: each trait's run in `source_runs`, else its newest
    (cfg gives model, method, component, position and normalize.*)."""
    neutral, sources = validate(cfg, traits, source_runs)
    lm = lm or load_model(cfg.model)
    layers = sorted(set.intersection(*(set(s) for s in sources.values())))
    if cfg.layers != "all":
        layers = [lyr for lyr in layers if lyr in set(parse_layers(cfg.layers, lm.n_layers))]
    if not layers:
        raise ConfigError("layers", f"the newest vectors of {', '.join(traits)} share no layer to normalise")
    steps = steps_of(cfg)
    raw = {t: {lyr: fetch_vector(sources[t][lyr], uri=cfg.tracking.uri, experiment=cfg.tracking.experiment)
               for lyr in layers} for t in traits}
    bases = _neutral_bases(lm, cfg, neutral, layers) if neutral is not None else {}
    res = NormalizeResult(steps, layers, vectors={t: {} for t in traits})
    info: dict[int, object] = {}
    for lyr in layers:
        basis = bases[lyr][0] if lyr in bases else None
        normed = normalize_vectors({t: raw[t][lyr] for t in traits}, center=cfg.normalize.center, basis=basis)
        info[lyr] = normed
        for t in traits:
            res.vectors[t][lyr] = normed.vectors[t]
        res.overlap[lyr] = (mean_abs_cosine({t: raw[t][lyr] for t in traits}), mean_abs_cosine(normed.vectors))
    run_ids = sorted({next(iter(sources[t].values())).run_id for t in traits})
    key_base = content_hash("normalize-v1", model_key(lm), run_ids, asdict(cfg.normalize), layers,
                            neutral.fingerprint() if neutral else None)
    for t in traits:
        run_id = next(iter(sources[t].values())).run_id
        held, counts = _heldout(lm, run_extract_config(run_id, experiment=cfg.tracking.experiment, uri=cfg.tracking.uri), layers, {"raw": raw[t], "normalized": res.vectors[t]})
        per_layer = {}
        for lyr in layers:
            normed = info[lyr]
            m = dict(held["normalized"][lyr])
            m.update({f"raw_{k}": v for k, v in held["raw"][lyr].items() if k.startswith("val_")})
            m.update(cos_raw=float(torch.dot(raw[t][lyr].float(), res.vectors[t][lyr]) / raw[t][lyr].float().norm()),
                     traits_mean_abs_cos_before=res.overlap[lyr][0], traits_mean_abs_cos_after=res.overlap[lyr][1])
            if cfg.normalize.center:
                m["removed_center"] = normed.removed_by_centering[t]
            if lyr in bases:
                m.update(removed_denoise=normed.removed_by_denoising[t], n_denoise_pcs=float(normed.n_pcs),
                         denoise_variance=bases[lyr][1])
            per_layer[lyr] = m
        res.metrics[t] = per_layer
        res.run_ids[t], skipped = _log_trait(cfg, lm, t, run_id, run_ids, per_layer, counts, res,
                                             content_hash(key_base, t), neutral, parent_run_id)
        res.skipped = res.skipped or skipped
    return res


def _log_trait(cfg: ExtractConfig, lm: LoadedModel, trait: str, source_run: str, source_runs: list[str],
               per_layer: dict[int, dict[str, float]], counts: dict[str, int], res: NormalizeResult, key: str,
               neutral: ReferenceSet | None, parent_run_id: str | None) -> tuple[str, bool]:
    tcfg = replace(cfg, trait=TraitConfig(name=trait))
    tags = {"traitlab.stage": "extract", "trait": trait, **model_tags(lm.spec), "method": cfg.method.name,
            "component": cfg.component.name, "position": cfg.position.spec, "layers": ",".join(map(str, res.layers)),
            NORMALIZATION_TAG: res.steps, "traitlab.source_run": source_run,
            "traitlab.source_runs": ",".join(source_runs), "traitlab.normalized_with": ",".join(
                t for t in res.vectors if t != trait), "traitlab.neutral_set": neutral.name if neutral else ""}
    name = f"normalize-{trait.split('/')[-1]}-{cfg.method.name}-{res.steps}"
    with stage_run(tcfg, job_key=key, run_name=name, tags=tags, parent_run_id=parent_run_id) as run:
        if run.skipped:
            return run.run_id, True
        for lyr, m in per_layer.items():
            run.log_metrics({layer_metric(k): round(float(v), 4) for k, v in m.items()}, step=lyr)
        run.log_metrics({k: float(v) for k, v in counts.items()})
        best = argmax_finite({lyr: m.get("val_effect_size", float("nan")) for lyr, m in per_layer.items()})
        with tempfile.TemporaryDirectory() as tmp:
            for lyr, v in res.vectors[trait].items():
                meta = {"trait": trait, "model": lm.identity.key, "model_name": lm.name, "model_id": lm.spec.id,
                        "method": cfg.method.name,
                        "component": cfg.component.name, "position": cfg.position.spec, "layer": lyr,
                        "dim": int(v.shape[0]), "normalization": res.steps, "source_run": source_run,
                        "source_runs": source_runs, "normalize": asdict(cfg.normalize),
                        "neutral_set": neutral.name if neutral else None}
                save_vector(Path(tmp) / vector_path(cfg.component.name, cfg.position.spec, cfg.method.name, lyr),
                            v, meta)
            d = vector_dir(cfg.component.name, cfg.position.spec, cfg.method.name)
            run.log_artifacts(Path(tmp) / d, d)
        run.set_tag("traitlab.selection", "val_effect_size")
        if best is not None:
            run.set_tag("best_layer", best)
            run.log_metrics({best_metric("layer"): float(best),
                             **{best_metric(k): round(float(v), 4) for k, v in per_layer[best].items()}})
        run.set_tag("mlflow.note.content", _describe(trait, res, per_layer, best, counts))
        log.info("%s normalised (%s) at layers %s: run %s", trait, res.steps, res.layers, run.run_id)
        return run.run_id, False


def _describe(trait: str, res: NormalizeResult, per_layer: dict[int, dict[str, float]], best: int | None,
              counts: dict[str, int]) -> str:
    lines = [f"**{trait} · {res.steps}** (normalised with {', '.join(t for t in res.vectors if t != trait) or '-'})"]
    if best is not None:
        m = per_layer[best]
        lines.append(f"- layer {best}: held-out effect size {m['val_effect_size']:.2f} "
                     f"[{m['val_effect_size_lo']:.2f}, {m['val_effect_size_hi']:.2f}] vs {m['raw_val_effect_size']:.2f} "
                     f"[{m['raw_val_effect_size_lo']:.2f}, {m['raw_val_effect_size_hi']:.2f}] before; cosine with the "
                     f"raw vector {m['cos_raw']:.2f}; mean |cos| between traits {m['traits_mean_abs_cos_before']:.2f} "
                     f"-> {m['traits_mean_abs_cos_after']:.2f}")
    lines.append(f"- n: val_pos {counts['n_val_pos']}, val_neg {counts['n_val_neg']} (the source run's held-out rows)")
    return "\n".join(lines)
