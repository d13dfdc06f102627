"""MLflow is the vector registry: find vectors of past runs by trait/model/method/layer, pick the best.

`model` is matched against the runs' `model` tag, a model identity key (models/identity.py). Every function
here takes that key, or a ModelSpec / LoadedModel (its identity, or `model.vectors_from`'s when set), or a
model name / Hub id / directory (that model without adapter or quantization).

Best-vector order (as validated in the literature on steering): a coherent steering delta beats an
out-of-distribution effect size, which beats the in-distribution held-out effect size. A steering result
counts only for the exact vector it was measured on (the extraction run id of that layer), only when its
95% interval excludes zero, and only against results of the same comparison (objective, judge, threshold).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlab.core.layers import parse_layers
from traitlab.errors import ConfigError, DataError
from traitlab.models.identity import registry_key
from traitlab.paths import cache_dir
from traitlab.tracking.artifacts import load_vector, vector_path
from traitlab.tracking.names import LAYER, NORMALIZATION_TAG, layer_metric
from traitlab.tracking.store import RetryingClient, ensure_store

log = logging.getLogger(__name__)


# Per-layer extraction metrics a VectorRef carries, logged as `layer/<name>` (step = layer) by stage 1.
LAYER_METRICS = ("val_accuracy", "val_effect_size", "ood_effect_size", "cv_accuracy", "cv_effect_size", "baseline")
# best_vector without a trusted steering result: cross-validated effect size first (every layer on the same
# folds, least prone to a best-of-layers pick on a small split), then OOD, then the single val split.
FALLBACK_METRICS = ("cv_effect_size", "ood_effect_size", "val_effect_size")


@dataclass
class VectorRef:
    """One extracted vector. `metrics` holds the LAYER_METRICS defined at its layer, by their bare names
    (val_effect_size, ...); an undefined (NaN) statistic is absent, so `name in ref.metrics` means usable."""

    run_id: str
    trait: str
    model: str
    method: str
    component: str
    position: str
    layer: int
    metrics: dict[str, float] = field(default_factory=dict)
    source: str = "val_effect_size"   # which rule picked it: steering_delta | one of FALLBACK_METRICS | middle_layer
    score: float = float("nan")
    reason: str = ""                  # the rule in words, with the numbers it compared

    @property
    def artifact_path(self) -> str:
        return vector_path(self.component, self.position, self.method, self.layer)


def _q(v: str) -> str:
    return v.replace("'", "\\'")


def _layer_metrics(client: RetryingClient, run_id: str, names: list[str]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for name in names:
        for m in client.get_metric_history(run_id, name):
            out.setdefault(int(m.step), {})[name] = float(m.value)
    return out


def _extraction_metrics(client: RetryingClient, run_id: str) -> dict[int, dict[str, float]]:
    """LAYER_METRICS per layer, bare names, NaN left out; runs logged before the `layer/` names are read as such."""
    per = _layer_metrics(client, run_id, [layer_metric(n) for n in LAYER_METRICS])
    if not per:
        per = _layer_metrics(client, run_id, list(LAYER_METRICS))
    return {lyr: {k.removeprefix(LAYER): v for k, v in m.items() if math.isfinite(v)} for lyr, m in per.items()}


def find_vectors(
    trait: str,
    model: Any,
    *,
    method: str | None = None,
    component: str | None = None,
    position: str | None = None,
    layer: int | None = None,
    experiment: str = "traitlab",
    uri: str | None = None,
    normalization: str | None = None,
) -> list[VectorRef]:
    """All extracted vectors matching the filters (newest run first), with their per-layer metrics.

    `normalization`: None finds the vectors as extracted; e.g. "center+denoise" finds the cross-trait
    normalised ones (their runs carry a NORMALIZATION_TAG), never mixed with the raw ones.
    """
    model = registry_key(model)
    client, exp_id = ensure_store(uri, experiment)
    filt = ["tags.`traitlab.stage` = 'extract'", f"tags.trait = '{_q(trait)}'", f"tags.model = '{_q(model)}'",
            "attributes.status = 'FINISHED'"]
    for key, val in (("method", method), ("component", component), ("position", position)):
        if val is not None:
            filt.append(f"tags.{key} = '{_q(val)}'")
    runs = client.search_runs([exp_id], filter_string=" and ".join(filt), order_by=["attributes.start_time DESC"],
                              max_results=500)
    refs: list[VectorRef] = []
    seen: set[tuple[str, str, str, int]] = set()
    for r in runs:
        tags = r.data.tags
        if tags.get(NORMALIZATION_TAG) != normalization:
            continue
        per_layer = _extraction_metrics(client, r.info.run_id)
        for lyr in sorted(int(x) for x in tags.get("layers", "").split(",") if x != ""):
            if layer is not None and lyr != layer:
                continue
            key = (tags["method"], tags["component"], tags["position"], lyr)
            if key in seen:  # a newer run of the same vector wins
                continue
            seen.add(key)
            refs.append(VectorRef(r.info.run_id, trait, model, tags["method"], tags["component"], tags["position"],
                                  lyr, per_layer.get(lyr, {})))
    return refs


def traits_with_vectors(model: Any, *, experiment: str = "traitlab", uri: str | None = None) -> list[str]:
    """Every trait with at least one finished extraction run for this model, sorted."""
    model = registry_key(model)
    client, exp_id = ensure_store(uri, experiment)
    filt = (f"tags.`traitlab.stage` = 'extract' and tags.model = '{_q(model)}' "
            "and attributes.status = 'FINISHED'")
    runs = client.search_runs([exp_id], filter_string=filt, max_results=5000)
    return sorted({r.data.tags["trait"] for r in runs if r.data.tags.get("trait")})


def fetch_vector(ref: VectorRef, uri: str | None = None, experiment: str = "traitlab",
                 expected_dim: int | None = None) -> torch.Tensor:
    """Download (once; cached locally) and load the vector file of a VectorRef."""
    client, _ = ensure_store(uri, experiment)
    dst = cache_dir() / "vectors" / ref.run_id
    local = dst / ref.artifact_path
    if local.is_file():
        try:
            return load_vector(local, expected_dim)[0]
        except DataError:
            pass  # a damaged cached copy (a download cut short): fetch it again; a bad artifact fails below
    # Download beside the cache and rename into place, so a kill mid-download never leaves a partial copy.
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst, prefix=".download.") as tmp:
        got = Path(client.download_artifacts(ref.run_id, ref.artifact_path, tmp))
        local.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, local)
    v, _ = load_vector(local, expected_dim)
    return v


def extraction_params(run_id: str, *, uri: str | None = None, experiment: str = "traitlab") -> dict[str, str]:
    """The flattened config an extraction run logged (e.g. `extraction.val_split`, `seed`)."""
    client, _ = ensure_store(uri, experiment)
    return dict(client.get_run(run_id).data.params)


def _vector_runs(tag: str) -> dict[int, str]:
    """`traitlab.vector_runs` = "10:<run id>,12:<run id>" -> {10: run id, 12: run id}."""
    out = {}
    for item in tag.split(","):
        layer, sep, run_id = item.partition(":")
        if sep and layer.strip().lstrip("-").isdigit():
            out[int(layer)] = run_id.strip()
    return out


def steering_results(trait: str, model: Any, *, experiment: str = "traitlab",
                     uri: str | None = None) -> list[dict[str, float | str | int]]:
    """Per-layer steering results (best coherent coefficient) of finished steer runs, newest run first: the
    objective's delta with its 95% interval, the vector run it was measured on, and its comparison key."""
    model = registry_key(model)
    client, exp_id = ensure_store(uri, experiment)
    filt = (f"tags.`traitlab.stage` = 'steer' and tags.trait = '{_q(trait)}' and tags.model = '{_q(model)}' "
            "and attributes.status = 'FINISHED'")
    rows = []
    delta, lo, hi, coh, coef = (layer_metric(n) for n in ("objective_delta", "objective_delta_lo",
                                                          "objective_delta_hi", "coherence", "coefficient"))
    for r in client.search_runs([exp_id], filter_string=filt, order_by=["attributes.start_time DESC"],
                                max_results=500):
        tags = r.data.tags
        vector_runs = _vector_runs(tags.get("traitlab.vector_runs", ""))
        for lyr, m in _layer_metrics(client, r.info.run_id, [delta, lo, hi, coh, coef]).items():
            if delta not in m:
                continue
            rows.append({"run_id": r.info.run_id, "vector_run_id": vector_runs.get(lyr, ""),
                         "method": tags.get("method", ""), "component": tags.get("component", ""),
                         "position": tags.get("position", ""), "layer": lyr,
                         "objective": tags.get("traitlab.objective", ""),
                         "comparison": tags.get("traitlab.comparison", ""),
                         "threshold": tags.get("traitlab.threshold", ""),
                         "delta": m[delta], "low": m.get(lo, float("nan")), "high": m.get(hi, float("nan")),
                         "coherence": m.get(coh, float("nan")), "coefficient": m.get(coef, float("nan"))})
    return rows


def _trusted(s: dict) -> bool:
    """A steering delta counts when its 95% interval lies above zero (deltas are oriented toward the trait)."""
    low = float(s.get("low", float("nan")))
    return math.isfinite(low) and low > 0


def best_vector(trait: str, model: Any, *, experiment: str = "traitlab", uri: str | None = None,
                comparison: str | None = None, **filters: str) -> VectorRef | None:
    """Walk steering delta (coherent, interval above zero) > cross-validated > OOD > val effect size > the
    middle extracted layer (nothing measured).

    Steering results are matched to the vectors by the extraction run they were measured on, and ranked only
    within one comparison (same objective, judge and threshold): `comparison` names it, else the newest steer
    run's. `ref.source` says which rule picked the vector and `ref.reason` why.
    """
    model = registry_key(model)
    refs = find_vectors(trait, model, experiment=experiment, uri=uri, **filters)
    if not refs:
        return None
    by_run = {(r.run_id, r.layer): r for r in refs}
    results = steering_results(trait, model, experiment=experiment, uri=uri)
    mine = [s for s in results if (s["vector_run_id"], s["layer"]) in by_run]
    trusted = [s for s in mine if _trusted(s)]
    if comparison is not None:
        trusted = [s for s in trusted if s["comparison"] == comparison]
    if trusted:
        key = trusted[0]["comparison"]  # newest first: the comparison the researcher ran last
        s = max((s for s in trusted if s["comparison"] == key), key=lambda s: float(s["delta"]))
        ref = by_run[(s["vector_run_id"], s["layer"])]
        ref.source, ref.score = "steering_delta", float(s["delta"])
        ref.reason = (f"steering: {s['objective'] or 'objective'} delta {s['delta']:.3g} "
                      f"[{s['low']:.3g}, {s['high']:.3g}] at layer {s['layer']} (steer run {s['run_id'][:8]}, "
                      f"threshold {s['threshold']}), the largest trusted delta of its comparison")
        return ref
    why = (f"{len(mine)} steering result(s) for these vectors, none with a 95% interval above zero"
           if mine else "no steering result measured on these vectors")
    if len(results) > len(mine):
        why += f" ({len(results) - len(mine)} other result(s) were measured on other vector runs)"
    for metric in FALLBACK_METRICS:
        scored = [r for r in refs if metric in r.metrics and math.isfinite(r.metrics[metric])]
        if scored:
            ref = max(scored, key=lambda r: r.metrics[metric])
            ref.source, ref.score = metric, ref.metrics[metric]
            ref.reason = f"{metric} {ref.score:.3g} at layer {ref.layer}; {why}"
            return ref
    # Nothing measured: the middle extracted layer of the newest run's first setting, where trait directions
    # of small models usually are; the first listed vector would be the shallowest layer, often layer 0.
    first = refs[0]
    same = sorted((r for r in refs if (r.run_id, r.method, r.component, r.position)
                   == (first.run_id, first.method, first.component, first.position)), key=lambda r: r.layer)
    ref = same[(len(same) - 1) // 2]
    ref.source = "middle_layer"
    ref.reason = (f"no effect size logged at any layer ({', '.join(FALLBACK_METRICS)}): layer {ref.layer}, the "
                  f"middle of layers {same[0].layer}-{same[-1].layer} of the newest run ({ref.method}); {why}")
    return ref


def no_vectors_error(trait: str, model: Any, experiment: str, filters: dict[str, str],
                     key: str = "traits") -> ConfigError:
    """The one message for "this trait has no vectors here": what was searched and how to make some."""
    from traitlab.models.identity import VARIANT_HINT

    what = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
    return ConfigError(
        key,
        f"no vectors of trait {trait!r} ({what}) for model {registry_key(model)!r} in experiment "
        f"{experiment!r}; extract first: python launchers/extract.py trait={trait}{VARIANT_HINT}",
    )


def refs_at_layers(trait: str, model: Any, layers: Any, n_layers: int | None, *, experiment: str = "traitlab",
                   uri: str | None = None, same_setting: bool = False,
                   **filters: str | None) -> list[tuple[VectorRef, str]]:
    """One vector per layer of the layer spec ``layers`` (``best`` = the best vector's layer), with why.

    At the best layer the best vector is taken (why = its source). At other layers: with ``same_setting``
    only a vector of the best vector's method / component / position (one vector object has one
    provenance), and a layer without one is a ConfigError; otherwise that setting is preferred, else the
    vector with the highest held-out effect size (why = "layer"), and layers with no vector are skipped with
    a warning (none at all is a ConfigError). ``n_layers`` (the model's depth, for ranges like ``30%-60%``)
    None: one past the deepest vector found.
    """
    filters = {k: v for k, v in filters.items() if v is not None}
    model = registry_key(model)
    best = best_vector(trait, model, experiment=experiment, uri=uri, **filters)
    if best is None:
        raise no_vectors_error(trait, model, experiment, filters)
    refs = find_vectors(trait, model, experiment=experiment, uri=uri, **filters)
    setting = (best.method, best.component, best.position)
    if same_setting:
        refs = [r for r in refs if (r.method, r.component, r.position) == setting]
    wanted = parse_layers(layers, n_layers or max(r.layer for r in refs) + 1, best=best.layer)
    chosen: list[tuple[VectorRef, str]] = []
    missing = []
    for layer in wanted:
        if layer == best.layer:
            chosen.append((best, best.source))
            continue
        here = [r for r in refs if r.layer == layer]
        same = [r for r in here if (r.method, r.component, r.position) == setting]
        here.sort(key=lambda r: -r.metrics.get("val_effect_size", float("-inf")))
        if same or here:
            chosen.append(((same or here)[0], "layer"))
        else:
            missing.append(layer)
    if missing:
        have = sorted({r.layer for r in refs})
        what = f"{trait!r} ({best.method}, {best.component}, {best.position})" if same_setting else repr(trait)
        if same_setting or len(missing) == len(wanted):
            raise ConfigError("layers", f"{layers!r} selects layers {wanted} (best = {best.layer}) but {what} has "
                                        f"vectors at layers {have}")
        log.warning("%s: no vector at layers %s (vectors at %s): skipped", trait, missing, have)
    return chosen
