"""Stage 3: per-token trait scores of responses, with HTML / JSON / PNG views logged to MLflow.

Flow: validate (prompt set or responses file, mode, score mode, layer syntax; before the model loads) ->
find each trait's vectors in MLflow (``layers`` DSL, ``best`` = the registry's best vector) -> responses
(generated and cached, or given) -> ONE prefill pass of the trunk (no LM head) with MultiLayerProjection
hooks for every trait x layer, so only [batch, seq, T] scores and [batch, seq] norms leave the model ->
score modes -> per-prompt JSON + HTML + PNGs, an index page, a summary table -> one MLflow run.

Modes: ``stream`` (the above), ``from_responses`` (score a {prompt, response} file another model wrote),
``capture`` (save raw per-token activations of the selected layers as checksummed safetensors) and
``reproject`` (score a capture later, without loading the model; same math as the hooks).

The first run on a model also records each dim's max |h| over ~5000 prefill tokens (massive-activation
calibration, stored per model in the cache); ``inference.calibration=neutral`` uses an explicit calibration on
a neutral set instead (stored per model identity); ``clean_massive=true`` zeroes those dims of the vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from traitlab.config.infer import MODES, InferConfig
from traitlab.core.analysis import check_score_mode
from traitlab.core.components import COMPONENTS, component_dim
from traitlab.core.layers import parse_layers
from traitlab.core.massive import MaxAbsTracker, detect_massive_dims, record_max_abs
from traitlab.data.texts import RESPONSES_EXPECTED, Source, TextItem, load_response_items, load_source
from traitlab.errors import ConfigError
from traitlab.io import atomic_write_json, content_hash
from traitlab.models.batching import check_batch_size
from traitlab.models.encoding import pad_id_of
from traitlab.models.identity import model_tags, vectors_key
from traitlab.models.loading import LoadedModel, load_model
from traitlab.monitor.calibration import (
    calibration_path,
    check_calibration,
    covers,
    load_calibration,
    neutral_location,
    store_tracker,
)
from traitlab.monitor.captures import (
    capture_sink,
    load_capture,
    manifest_items,
    read_manifest,
    reproject_records,
    track_captures,
)
from traitlab.monitor.records import build_record, mean_scores, view_record
from traitlab.monitor.scoring import (
    Scored,
    calibrate_encoded,
    capture_encoded,
    decode_tokens,
    encode_items,
    project_encoded,
    score_items,
)
from traitlab.monitor.vectors import (
    TraitVector,
    apply_cleaning,
    layers_by_trait,
    require_vectors,
    resolve_traits,
    select_vectors,
    trait_list,
    vector_keys,
    warn_missing_baselines,
)
from traitlab.monitor.views import artifact_uri, first_page_of, log_views, unique_slugs, write_views
from traitlab.paths import outputs_dir
from traitlab.pipelines.common import (
    fill_responses,
    measured_inference_batch_sizes,
    model_key,
    neutral_calibration,
)
from traitlab.tracking.runs import JobRun, job_run, stage_run

log = logging.getLogger(__name__)

# Names this module's callers imported from here before the shared pieces moved to traitlab.monitor.
__all__ = [
    "InferResult", "Scored", "TextItem", "TraitVector", "build_record", "calibrate_encoded", "calibration_path",
    "capture_encoded", "encode_items", "load_response_items", "project_encoded", "run_infer", "trait_list",
    "validate", "view_record", "write_views",
]


def validate(cfg: InferConfig) -> Source:
    """Everything checkable before the model loads."""
    if cfg.mode not in MODES:
        raise ConfigError("mode", f"{cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.mode == "from_responses" and not cfg.responses:
        raise ConfigError(
            "responses", f"mode=from_responses needs responses=/path/items.json ({RESPONSES_EXPECTED})"
        )
    check_score_mode(cfg.inference.score_mode)
    check_batch_size(cfg.inference.batch_size, "inference.batch_size")
    check_batch_size(cfg.inference.generation.batch_size, "inference.generation.batch_size")
    if cfg.inference.component not in COMPONENTS:
        raise ConfigError(
            "inference.component", f"{cfg.inference.component!r} is not one of {', '.join(COMPONENTS)}"
        )
    check_calibration(cfg.inference)
    trait_list(cfg.traits)
    parse_layers(cfg.layers, 10_000, best=5_000)  # syntax now; the range once the model's depth is known
    return load_source(cfg.prompt_set, cfg.responses, cfg.inference.max_prompts)


def capture_key(cfg: InferConfig, source: Source) -> str:
    """What a capture depends on, computable without the model (so reproject can find it)."""
    inf = cfg.inference
    return content_hash(
        "capture-v1",
        asdict(cfg.model),
        source.fingerprint(),
        asdict(inf.generation),
        cfg.seed,
        inf.component,
        inf.max_length,
    )


def capture_root(cfg: InferConfig, source: Source) -> Path:
    if cfg.inference.capture_dir:
        return Path(cfg.inference.capture_dir).expanduser()
    return outputs_dir() / "captures" / capture_key(cfg, source)


@dataclass
class InferResult:
    run_id: str
    skipped: bool
    mode: str
    traits: list[str] = field(default_factory=list)
    layers: dict[str, list[int]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    first_page: str | None = None  # artifact path of the first HTML page
    artifact_uri: str | None = None
    capture_dir: str | None = None
    massive_dims: dict[int, list[int]] = field(default_factory=dict)

    @property
    def first_page_uri(self) -> str | None:
        if self.first_page is None or self.artifact_uri is None:
            return None
        return f"{self.artifact_uri.rstrip('/')}/{self.first_page}"

    def mean_score(self) -> float:
        """Mean response score of the first trait x layer (the value a sweeper sees)."""
        means = mean_scores(self.records)
        return next(iter(means.values())) if means else float("nan")


def _tags(
    cfg: InferConfig,
    model: dict[str, str],
    source: Source,
    vectors: Sequence[TraitVector],
    layers: Sequence[int],
    mode: str,
) -> dict[str, str]:
    traits = sorted({tv.trait for tv in vectors})
    return {
        "traitlab.stage": "infer",
        **model,
        "mode": mode,
        "prompt_set": source.name,
        "traits": ",".join(traits)[:5000],
        "layers": ",".join(map(str, sorted(set(layers)))),
        "component": cfg.inference.component,
        "score_mode": cfg.inference.score_mode,
    }


def run_infer(
    cfg: InferConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None
) -> InferResult:
    source = validate(cfg)
    if cfg.mode == "reproject":
        return _run_reproject(cfg, source, parent_run_id)
    if cfg.mode != "capture" or "best" in str(cfg.layers).lower():  # these need vectors: check them first
        traits = resolve_traits(cfg.traits, vectors_key(cfg.model), **_tracking(cfg))
        require_vectors(traits, vectors_key(cfg.model), cfg.inference, **_tracking(cfg))
    lm = lm or load_model(cfg.model)
    cfg = replace(cfg, inference=measured_inference_batch_sizes(cfg.inference, lm, source.items))
    if cfg.mode == "capture":
        return _run_capture(cfg, source, lm, parent_run_id)
    return _run_stream(cfg, source, lm, parent_run_id)


def _tracking(cfg: InferConfig) -> dict[str, Any]:
    return {"experiment": cfg.tracking.experiment, "uri": cfg.tracking.uri}


def _run_stream(cfg: InferConfig, source: Source, lm: LoadedModel, parent_run_id: str | None) -> InferResult:
    inf = cfg.inference
    vectors = _select(cfg, vectors_key(cfg.model), lm.n_layers, component_dim(lm.model, inf.component))
    if inf.centered:
        warn_missing_baselines(vectors)
    mkey = model_key(lm)
    key = content_hash(
        "infer-v1", cfg.mode, mkey, source.fingerprint(), asdict(inf), cfg.seed, vector_keys(vectors)
    )
    cal_path = calibration_path(mkey, inf.component)
    all_layers = list(range(lm.n_layers))
    tags = _tags(cfg, model_tags(cfg.model), source, vectors, [tv.layer for tv in vectors], cfg.mode)
    run_name = cfg.tracking.run_name or f"infer-{source.name}-{cfg.mode}"
    with stage_run(cfg, job_key=key, run_name=run_name, tags=tags, parent_run_id=parent_run_id) as run:
        result = _new_result(run, cfg.mode, vectors)
        if run.skipped:
            result.first_page, result.artifact_uri = first_page_of(run), artifact_uri(run)
            return result
        items = source.items if source.given_responses else fill_responses(lm, source.items, inf, cfg.seed)
        neutral = inf.calibration == "neutral"
        calibration = _neutral(lm, inf) if neutral else load_calibration(cal_path)
        tracker = None
        if not neutral and not covers(calibration, all_layers):
            tracker = MaxAbsTracker(all_layers, inf.massive.max_tokens)
            if inf.clean_massive:  # the dims must be known before projecting: calibrate first
                calibrate_encoded(lm.model, encode_items(lm, items, inf.max_length), tracker,
                                  component=inf.component, batch_size=inf.batch_size,
                                  pad_id=pad_id_of(lm.tokenizer), device=lm.device)
                calibration = store_tracker(cal_path, tracker, lm.name, mkey, inf.component)
                tracker = None
        dims = detect_massive_dims(record_max_abs(calibration), inf.massive.ratio) if calibration else {}
        if inf.clean_massive:
            apply_cleaning(vectors, dims, inf.centered)
        records = score_items(lm, items, vectors, inf, source=source.name, tracker=tracker)
        if tracker is not None and tracker.n_tokens:
            calibration = store_tracker(cal_path, tracker, lm.name, mkey, inf.component)
            dims = detect_massive_dims(record_max_abs(calibration), inf.massive.ratio)
        return _finish(result, run, records, dims, inf, calibration, title=f"{source.name} · {lm.name} · {inf.score_mode}")


def _neutral(lm: LoadedModel, inf: Any) -> dict[str, Any]:
    return neutral_calibration(lm, inf.component, inf.massive, max_length=inf.max_length, batch_size=inf.batch_size)


def _new_result(run: JobRun, mode: str, vectors: Sequence[Any], **extra: Any) -> InferResult:
    return InferResult(run.run_id, run.skipped, mode, sorted({tv.trait for tv in vectors}), layers_by_trait(vectors),
                       **extra)


def _finish(result: InferResult, run: JobRun, records: list, dims: Any, inf: Any, calibration: Any, *,
            title: str) -> InferResult:
    """Log the views of a scored run and fill in the result's pointers to them."""
    result.records, result.massive_dims = records, dims
    result.first_page = log_views(run, records, title=title, max_figures=inf.max_figure_prompts,
                                     calibration=calibration, ratio=inf.massive.ratio)
    result.artifact_uri = artifact_uri(run)
    return result


def _select(cfg: InferConfig, model: str, n_layers: int, dim: int) -> list[TraitVector]:
    traits = resolve_traits(cfg.traits, model, **_tracking(cfg))
    return select_vectors(traits, model, cfg.layers, n_layers, cfg.inference, dim=dim, **_tracking(cfg))


def _capture_layers(cfg: InferConfig, lm: LoadedModel) -> tuple[list[int], list[TraitVector]]:
    """Layers to capture: explicit specs need no vectors; `best` specs resolve per trait via MLflow."""
    if "best" not in str(cfg.layers).lower():
        return parse_layers(cfg.layers, lm.n_layers), []
    vectors = _select(cfg, vectors_key(cfg.model), lm.n_layers, component_dim(lm.model, cfg.inference.component))
    return sorted({tv.layer for tv in vectors}), vectors


def _run_capture(cfg: InferConfig, source: Source, lm: LoadedModel, parent_run_id: str | None) -> InferResult:
    inf = cfg.inference
    layers, vectors = _capture_layers(cfg, lm)
    root = capture_root(cfg, source)
    mkey = model_key(lm)
    key = content_hash("infer-capture-v1", mkey, source.fingerprint(), asdict(inf.generation), cfg.seed,
                       inf.component, inf.max_length, layers, str(root))
    tags = _tags(cfg, model_tags(cfg.model), source, vectors, layers, "capture")
    tags["capture_dir"] = str(root)
    run_name = cfg.tracking.run_name or f"infer-{source.name}-capture"
    force = cfg.force or not (root / "manifest.json").is_file()  # a deleted capture is redone
    with job_run(experiment=cfg.tracking.experiment, job_key=key, run_name=run_name, config=asdict(cfg), tags=tags,
                 parent_run_id=parent_run_id, force=force, uri=cfg.tracking.uri) as run:
        result = _new_result(run, "capture", vectors, capture_dir=str(root))
        if run.skipped:
            return result
        items = source.items if source.given_responses else fill_responses(lm, source.items, inf, cfg.seed)
        encoded = encode_items(lm, items, inf.max_length)
        files = [f"{s}.safetensors" for s in unique_slugs([it.id for it in items])]
        (root / "manifest.json").unlink(missing_ok=True)  # a half-rewritten capture must not look finished
        cal_path = calibration_path(mkey, inf.component)
        if inf.calibration == "neutral":  # stored now, so reproject finds it without the model
            _neutral(lm, inf)
        calibration = load_calibration(cal_path)
        tracker = None if covers(calibration, layers) else MaxAbsTracker(layers, inf.massive.max_tokens)
        capture_encoded(lm.model, encoded, layers, capture_sink(root, items, encoded, files, inf.component, tracker),
                        component=inf.component, batch_size=inf.batch_size, pad_id=pad_id_of(lm.tokenizer),
                        device=lm.device)
        if tracker is not None:
            calibration = store_tracker(cal_path, tracker, lm.name, mkey, inf.component)
        manifest = {
            "version": 1, "model": lm.name, "model_key": mkey, "model_spec": asdict(cfg.model),
            "model_tags": model_tags(cfg.model), "vectors_model": vectors_key(cfg.model),
            "n_layers": lm.n_layers, "hidden_size": component_dim(lm.model, inf.component),
            "component": inf.component, "layers": layers, "source": source.name, "dtype": "float32",
            "items": manifest_items(items, encoded, files, [decode_tokens(lm.tokenizer, e.ids) for e in encoded]),
        }
        atomic_write_json(root / "manifest.json", manifest)
        run.log_dict({k: v for k, v in manifest.items() if k != "items"} | {"n_items": len(items)},
                     "capture/manifest_summary.json")
        run.log_metric("captured_tokens", sum(e.seq_len for e in encoded))
        log.info("captured %d texts x %d layers to %s", len(items), len(layers), root)
        return result


def _run_reproject(cfg: InferConfig, source: Source, parent_run_id: str | None) -> InferResult:
    """Score a capture without loading the model: the vectors come from MLflow, the activations from disk."""
    inf = cfg.inference
    root = capture_root(cfg, source)
    manifest = read_manifest(root)
    if manifest["component"] != inf.component:
        raise ConfigError("inference.component",
                          f"the capture at {root} is of {manifest['component']!r}, not {inf.component!r}")
    model = manifest["model"]
    vectors_model = manifest.get("vectors_model", model)  # captures from before identity keys: the name
    vectors = _select(cfg, vectors_model, int(manifest["n_layers"]), int(manifest["hidden_size"]))
    if inf.centered:
        warn_missing_baselines(vectors)
    missing = sorted({tv.layer for tv in vectors} - set(manifest["layers"]))
    if missing:
        raise ConfigError("layers", f"layers {missing} were not captured at {root}; captured: {manifest['layers']}")
    cal_path = calibration_path(manifest["model_key"], inf.component)
    if inf.calibration == "neutral":  # no model here to calibrate with: it must be stored
        cal_path = neutral_location(manifest["model_key"], inf.component, inf.massive, inf.max_length)[1]
        if not covers(load_calibration(cal_path), sorted({tv.layer for tv in vectors})):
            raise ConfigError("inference.calibration", f"no neutral calibration of {model} on {inf.massive.set!r} "
                              f"is stored ({cal_path}); run python launchers/analyze.py analysis=calibration "
                              "(same model and inference.massive.*) or mode=capture with inference.calibration=neutral")
    key = content_hash("infer-v1", "reproject", manifest["model_key"], source.fingerprint(), asdict(inf), cfg.seed,
                       vector_keys(vectors), str(root))
    tags = _tags(cfg, manifest.get("model_tags", {"model": model}), source, vectors, [tv.layer for tv in vectors],
                 "reproject")
    tags["capture_dir"] = str(root)
    run_name = cfg.tracking.run_name or f"infer-{source.name}-reproject"
    with stage_run(cfg, job_key=key, run_name=run_name, tags=tags, parent_run_id=parent_run_id) as run:
        result = _new_result(run, "reproject", vectors, capture_dir=str(root))
        if run.skipped:
            result.first_page, result.artifact_uri = first_page_of(run), artifact_uri(run)
            return result
        layers = sorted({tv.layer for tv in vectors})
        loaded = [load_capture(root, entry, layers) for entry in manifest["items"]]
        calibration = load_calibration(cal_path)
        if not covers(calibration, layers):
            tracker = track_captures(loaded, layers, inf.massive.max_tokens)
            calibration = store_tracker(cal_path, tracker, model, manifest["model_key"], inf.component)
        dims = detect_massive_dims(record_max_abs(calibration), inf.massive.ratio)
        if inf.clean_massive:
            apply_cleaning(vectors, dims, inf.centered)
        records = reproject_records(manifest, loaded, vectors, source=source.name, score_mode=inf.score_mode,
                                    centered=inf.centered, clean_massive=inf.clean_massive)
        return _finish(result, run, records, dims, inf, calibration,
                       title=f"{source.name} · {model} · {inf.score_mode} (reprojected)")
