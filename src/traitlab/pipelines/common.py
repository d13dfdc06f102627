"""Pieces several stages share: the cache key of a loaded model, chat-formatting examples, cached
responses and cached pooled activations (content-addressed, atomic, locked per key)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from traitlab import faults
from traitlab.config.export import VectorSourceConfig
from traitlab.config.schema import GenerationConfig
from traitlab.data import Example, load_trait, resolve_trait_dir
from traitlab.data.texts import TextItem
from traitlab.errors import ConfigError, DataError
from traitlab.io import content_hash, load_tensors, save_tensors
from traitlab.models.batching import resolve_batch_size
from traitlab.models.capture import TextPair, capture_pooled
from traitlab.models.chat import format_prompt
from traitlab.models.identity import vectors_key
from traitlab.models.loading import LoadedModel, model_config, validate_spec
from traitlab.models.responses import (  # noqa: F401  (the stages import them from here)
    _locked,
    model_key,
    prompt_layouts,
    prompt_texts,
    responses_for,
)
from traitlab.paths import cache_dir
from traitlab.steering_vector import SteeringVector

log = logging.getLogger(__name__)


def pooled_activations(
    lm: LoadedModel, examples: Sequence[Example], responses: Sequence[str], *, position: str, component: str,
    layers: Sequence[int], batch_size: int, max_length: int, desc: str = "capture",
) -> torch.Tensor:
    """[N, len(layers), D] float32, cached by (model, texts, position, component, layers, max_length)."""
    layouts = prompt_layouts(lm, examples, responses)
    texts = [lay.text for lay in layouts]
    key = content_hash("acts-v1", model_key(lm), texts, list(responses), position, component, list(layers),
                       max_length)
    path = cache_dir() / "activations" / f"{key}.safetensors"
    with _locked(path):
        if path.is_file():
            try:
                tensors, _ = load_tensors(path)
                acts = tensors["acts"]
                if acts.shape[:2] == (len(examples), len(layers)):
                    return acts
            except (DataError, KeyError):
                pass
            log.warning("%s is damaged or stale: recapturing", path)
        pairs = [TextPair(lay.text, r, lay) for lay, r in zip(layouts, responses, strict=True)]
        acts = capture_pooled(lm, pairs, position=position, layers=layers, component=component,
                              batch_size=batch_size, max_length=max_length, desc=desc)
        faults.maybe_fail("capture")
        save_tensors(path, {"acts": acts}, {"position": position, "component": component})
    return acts


def source_vector(cfg: VectorSourceConfig) -> tuple[SteeringVector, Any]:
    """Export's and serve's vector (from the registry, or ``vector_file``) and the model's (text) config, before
    any weights load. Registry lookups go through SteeringVector.from_registry like every stage's: unnamed
    method / position / component are the trait's extraction settings."""
    validate_spec(cfg.model)
    conf = model_config(cfg.model)
    component = cfg.component.name if cfg.component else None
    if cfg.vector_file:
        files = [cfg.vector_file] if isinstance(cfg.vector_file, str | Path) else list(cfg.vector_file)
        v = SteeringVector.from_files(files, dim=conf.hidden_size)
        if component is not None and v.component != component:
            raise ConfigError("vector_file", f"vectors of component {v.component} but component={component}")
        return v, conf
    trait = load_trait(resolve_trait_dir(cfg.trait.name, cfg.trait.path)).qualified_name
    v = SteeringVector.from_registry(trait, vectors_key(cfg.model), cfg.layers, method=cfg.method.name if cfg.method
                                     else None, position=cfg.position.spec if cfg.position else None,
                                     component=component, n_layers=conf.num_hidden_layers, dim=conf.hidden_size,
                                     trait_path=cfg.trait.path, experiment=cfg.tracking.experiment,
                                     uri=cfg.tracking.uri)
    return v, conf


def fill_responses(
    lm: LoadedModel, items: Sequence[TextItem], inf: Any, seed: int
) -> list[TextItem]:
    """Items with responses: given ones kept, the rest generated (greedy/seeded, cached on disk)."""
    examples = [Example(it.prompt, it.system_prompt, it.response) for it in items]
    texts = responses_for(lm, examples, inf.generation, seed, use_provided=True, desc="generate")
    return [TextItem(it.id, it.prompt, it.system_prompt, t) for it, t in zip(items, texts, strict=True)]


def training_projections(lm: LoadedModel, vector: Any, *, experiment: str, uri: str | None) -> dict[int, torch.Tensor]:
    """Per layer, the projections onto the unit direction of the training examples (positive and negative, or
    reference) the vector was extracted from: the extraction run's own config rebuilds the same rows and
    held-out split (pipelines.trait_data.training_rows), so the pooled activations come from its cache."""
    from traitlab.pipelines.trait_data import run_extract_config, training_rows
    from traitlab.tracking.store import ensure_store

    if not vector.trait or not vector.position or not vector.source_run:
        raise ConfigError("mode", f"{vector.label}: cap needs the vector's trait, position and extraction run "
                                  "(a registry vector, or a file saved from one)")
    client, _ = ensure_store(uri, experiment)
    run_id = vector.source_run.split(",")[0]
    extracted = sorted(int(x) for x in client.get_run(run_id).data.tags.get("layers", "").split(",") if x)
    layers = extracted if set(vector.layers) <= set(extracted) else list(vector.layers)  # the extraction's cache key
    data, split = training_rows(lm, run_extract_config(run_id, experiment=experiment, uri=uri), layers)
    train = torch.cat([data.acts["positive"][split["train_pos"]], data.acts["negative"][split["train_neg"]]])
    return {layer: train[:, layers.index(layer)].float() @ (vector[layer] / vector[layer].norm())
            for layer in vector.layers}


# ------------------------------------------------------------------- steering + monitoring (generate, chat)


def conversation_text(lm: LoadedModel, messages: Sequence[dict[str, str]]) -> str:
    """The model's text for a conversation: one user turn (after an optional system prompt) exactly as every
    stage formats a prompt (format_prompt), longer conversations through format_messages."""
    from traitlab.models.chat import format_messages

    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        return format_prompt(lm.tokenizer, turns[0]["content"], system, lm.use_chat_template)
    return format_messages(lm.tokenizer, list(messages), lm.use_chat_template)


def steering_setup(cfg: Any) -> Any:
    """The vectors, weights, coefficient and mode of a generate/chat config, resolved and checked before the
    model loads (registry lookups, files, coefficient=best needs a steering result for every steered layer)."""
    from traitlab.errors import ConfigError
    from traitlab.monitor.vectors import trait_list
    from traitlab.steering_vector import SteeringSetup

    specs = trait_list(cfg.vectors, key="vectors")
    if not specs:
        raise ConfigError("vectors", "name at least one vector: a trait, run:<id> or a .safetensors file")
    weights = trait_list(cfg.weights, key="weights")
    try:
        weights = [float(w) for w in weights] if weights is not None else None
    except ValueError:
        raise ConfigError("weights", f"{cfg.weights!r}: expected numbers, e.g. '1,0.5'") from None
    if not 0 < cfg.cap.quantile < 1:
        raise ConfigError("cap.quantile", f"{cfg.cap.quantile} must be in (0, 1)")
    vectors = [use_vector(cfg, s) for s in specs]
    return SteeringSetup(vectors, weights, cfg.coefficient, cfg.mode, cap=cfg.cap.side)


def use_vector(cfg: Any, spec: str) -> SteeringVector:
    """One vector named as generate / chat name them (trait, run:<id>, file), with their registry keys."""
    conf = model_config(cfg.model)
    return SteeringVector.from_spec(spec, vectors_key(cfg.model), cfg.layers, method=cfg.method,
                                    position=cfg.position, component=cfg.component,
                                    n_layers=conf.num_hidden_layers, dim=conf.hidden_size,
                                    experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)


def set_cap_thresholds(lm: LoadedModel, setup: Any, quantile: float, *, experiment: str, uri: str | None) -> None:
    """mode=cap: each vector's threshold per layer = ``quantile`` of its training projections."""
    if setup.mode != "cap":
        return
    setup.thresholds = [{layer: float(torch.quantile(p, quantile))
                         for layer, p in training_projections(lm, v, experiment=experiment, uri=uri).items()}
                        for v in setup.vectors]


def monitor_component(cfg: Any, setup: Any) -> str:
    """Where the monitored traits are scored: ``component`` when given, else the component being steered."""
    return cfg.component or setup.component


def _monitor_filters(component: str | None) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(component=component, method=None, position=None)


def check_monitored(cfg: Any) -> None:
    """Before the model loads: every trait named in ``monitor`` has registered vectors."""
    from traitlab.monitor.vectors import require_vectors, trait_list

    named = trait_list(cfg.monitor, key="monitor")
    if named:
        require_vectors(named, vectors_key(cfg.model), _monitor_filters(cfg.component),
                        experiment=cfg.tracking.experiment, uri=cfg.tracking.uri, key="monitor")


def monitored_vectors(cfg: Any, setup: Any, lm: LoadedModel) -> list[Any]:
    """The (trait, layer) vectors watched per token, in the steered component: ``monitor`` traits (default: the
    steered ones) from the registry at ``monitor_layers``; a steered vector whose trait has no registered
    vectors is watched itself."""
    from traitlab.core.components import component_dim
    from traitlab.monitor.vectors import TraitVector, select_vectors, trait_list, vector_filters
    from traitlab.tracking.registry import VectorRef, find_vectors

    tracking = {"experiment": cfg.tracking.experiment, "uri": cfg.tracking.uri}
    component = monitor_component(cfg, setup)
    filters = _monitor_filters(component)
    named = trait_list(cfg.monitor, key="monitor")
    if named is not None:
        check_monitored(cfg)
        registered, own = list(dict.fromkeys(named)), []
    else:
        steered = list(dict.fromkeys(v.trait for v in setup.vectors if v.trait))
        registered = [t for t in steered
                      if find_vectors(t, vectors_key(lm.spec), **vector_filters(filters, t), **tracking)]
        own = [v for v in setup.vectors if v.trait not in registered]
    chosen = select_vectors(registered, vectors_key(lm.spec), cfg.monitor_layers, lm.n_layers, filters,
                            dim=component_dim(lm.model, component), **tracking) if registered else []
    for v in own:
        for layer in v.layers:
            ref = VectorRef(v.source_run or "file", v.trait or "vector", vectors_key(lm.spec), v.method or "",
                            v.component, v.position or "", layer)
            chosen.append(TraitVector(v.trait or "vector", layer, ref, v[layer], float("nan"), "steered vector"))
    return chosen


def with_measured_batch_sizes(section: Any, lm: LoadedModel, prompts: Sequence[str], *, prefix: str,
                              max_rows: int | None = None) -> Any:
    """A copy of a config section (inference, steering) whose `auto` batch sizes (`batch_size`,
    `generation.batch_size`) are measured once, on the longest of `prompts` plus the tokens to be generated.

    `max_rows`: the most rows one batch can hold in this job (default: one per prompt).
    """
    changes: dict[str, Any] = {}
    gen = getattr(section, "generation", None)
    new_tokens = gen.max_new_tokens if gen is not None else int(getattr(section, "max_new_tokens", 0))
    if gen is not None and isinstance(gen.batch_size, str):
        changes["generation"] = replace(gen, batch_size=resolve_batch_size(
            gen.batch_size, lm, prompts, key=f"{prefix}.generation.batch_size", new_tokens=new_tokens))
    if isinstance(section.batch_size, str):
        changes["batch_size"] = resolve_batch_size(section.batch_size, lm, prompts, key=f"{prefix}.batch_size",
                                                   new_tokens=new_tokens, max_size=max_rows)
    return replace(section, **changes) if changes else section


def measured_inference_batch_sizes(inf: Any, lm: LoadedModel, items: Sequence[TextItem]) -> Any:
    """An inference config section with its `auto` batch sizes measured once for this job (on the longest
    prompt, with its response when given, plus the tokens generated)."""
    prompts = [format_prompt(lm.tokenizer, it.prompt, it.system_prompt, lm.use_chat_template) + (it.response or "")
               for it in items]
    return with_measured_batch_sizes(inf, lm, prompts, prefix="inference")


# ------------------------------------------------------------------------------ massive-activation calibration


def _calibration_batch_size(lm: LoadedModel, batch_size: Any, items: Sequence[TextItem], new_tokens: int,
                            max_tokens: int) -> int:
    """`auto` measured on the texts a calibration reads (it may score no prompt set of its own), for no more
    rows than it takes to reach its token budget."""
    if not isinstance(batch_size, str):
        return batch_size
    texts, seen = [], 0
    for it in items:
        texts.append(format_prompt(lm.tokenizer, it.prompt, it.system_prompt, lm.use_chat_template)
                     + (it.response or ""))
        seen += len(lm.tokenizer(texts[-1])["input_ids"]) + new_tokens
        if seen >= max_tokens:
            break
    return resolve_batch_size(batch_size, lm, texts, key="inference.batch_size", new_tokens=new_tokens)


def neutral_calibration(lm: LoadedModel, component: str, massive: Any, *, max_length: int = 1024,
                        batch_size: int | str = 8) -> dict[str, Any]:
    """The model's massive-activation calibration on the neutral set ``massive.set``: computed once per model
    identity, component and set (responses the set lacks are generated greedily, ``massive.max_new_tokens``
    long, and cached), then read from the cache."""
    from traitlab.monitor.calibration import (
        calibrate_items,
        covers,
        load_calibration,
        neutral_location,
        save_calibration,
    )

    mkey = model_key(lm)
    source, path = neutral_location(mkey, component, massive, max_length)
    record = load_calibration(path)
    if covers(record, range(lm.n_layers)):
        return record
    items = source.items
    batch_size = _calibration_batch_size(lm, batch_size, items,
                                         0 if source.given_responses else massive.max_new_tokens, massive.max_tokens)
    if not source.given_responses:
        gen = GenerationConfig(max_new_tokens=massive.max_new_tokens, batch_size=batch_size)
        examples = [Example(it.prompt, it.system_prompt, it.response) for it in items]
        texts = responses_for(lm, examples, gen, seed=0, desc="neutral set")
        items = [TextItem(it.id, it.prompt, it.system_prompt, t) for it, t in zip(items, texts, strict=True)]
    record = calibrate_items(lm, items, component=component, max_tokens=massive.max_tokens, max_length=max_length,
                             batch_size=batch_size, model=lm.name, model_identity=lm.identity.key,
                             model_key=mkey, calibration="neutral",
                             set=source.name, set_fingerprint=source.fingerprint(),
                             source=f"neutral set {source.name}")
    log.info("neutral calibration of %s on %s: %d texts, %d tokens -> %s", lm.name, source.name,
             record["n_texts"], record["n_tokens"], path)
    return save_calibration(path, record)


def scoring_calibration(lm: LoadedModel, mode: str, component: str, massive: Any, items: Sequence[TextItem], *,
                        max_length: int = 1024, batch_size: int = 8) -> dict[str, Any]:
    """The calibration a scoring pass uses: ``neutral`` (see neutral_calibration), or ``passive``: the model's
    stored record, or one made now from ``items`` (the texts about to be scored) when it lacks a layer."""
    from traitlab.monitor.calibration import (
        calibrate_items,
        calibration_path,
        covers,
        load_calibration,
        save_calibration,
    )

    if mode == "neutral":
        return neutral_calibration(lm, component, massive, max_length=max_length, batch_size=batch_size)
    mkey = model_key(lm)
    path = calibration_path(mkey, component)
    record = load_calibration(path)
    if covers(record, range(lm.n_layers)):
        return record
    record = calibrate_items(lm, items, component=component, max_tokens=massive.max_tokens, max_length=max_length,
                             batch_size=_calibration_batch_size(lm, batch_size, items, 0, massive.max_tokens),
                             model=lm.name, model_key=mkey, source="inference prefill")
    return save_calibration(path, record)


def clean_for_scoring(run: Any, lm: LoadedModel, vectors: list[Any], items: Sequence[TextItem], *,
                      calibration: str, clean: bool, centered: bool, component: str, massive: Any,
                      max_length: int = 1024, batch_size: int = 8) -> dict[str, Any] | None:
    """Before a scoring pass: when cleaning or a ``neutral`` calibration is asked for, the calibration
    (scoring_calibration; passive ones from ``items``) logged to ``run`` and, when cleaning, the massive dims
    of ``vectors`` zeroed. Returns the record used (None: neither asked for)."""
    from traitlab.monitor.vectors import apply_cleaning
    from traitlab.monitor.views import log_calibration

    if not (clean or calibration == "neutral"):
        return None
    record = scoring_calibration(lm, calibration, component, massive, items, max_length=max_length,
                                 batch_size=batch_size)
    dims = log_calibration(run, record, massive.ratio)
    if clean:
        apply_cleaning(vectors, dims, centered)
    return record
