"""A trait's examples made ready for fitting: reference set, responses, vetting, pooled activations.

Shared by the extraction stage and the cross-trait normalisation step (which re-reads a source run's data
to score its normalised vectors on the same held-out rows); not a stage itself. Everything before the
model loads is in `load_trait_for`, `check_trait_settings` and `vetting_key`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from traitlab.config.schema import ExtractConfig
from traitlab.data import TraitDataset, load_trait, resolve_trait_dir
from traitlab.data.reference import (
    ReferenceSet,
    load_neutral_set,
    load_reference,
    reference_note,
    with_reference,
)
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.judge.factory import build_judge, judge_identity, make_judge
from traitlab.judge.vetting import VettingOutcome, check_thresholds, trait_scores, vet_scores, vetting_enabled
from traitlab.models.batching import check_batch_size, resolve_batch_size
from traitlab.models.loading import LoadedModel
from traitlab.pipelines.common import pooled_activations, prompt_texts, responses_for

log = logging.getLogger(__name__)

POLARITIES = ("positive", "negative", "ood_positive", "ood_negative")
MIN_VETTED_ROWS = 4  # fewer kept rows on a side leave nothing to split into train and held-out parts


@dataclass
class TraitData:
    """The trait as fitted (reference set in place of negatives, vetted rows removed) and its activations."""

    trait: TraitDataset
    acts: dict[str, torch.Tensor]  # [N, L, D] per polarity present
    lengths: dict[str, torch.Tensor]  # response lengths in tokens [N]
    reference: ReferenceSet | None = None
    vetting: VettingOutcome | None = None
    batch_sizes: dict[str, int] = field(default_factory=dict)  # what each `auto` batch size resolved to
    notes: list[str] = field(default_factory=list)  # what the metrics mean here (a reference set, vetting)


def load_trait_for(cfg: ExtractConfig, trait: TraitDataset | None = None) -> tuple[TraitDataset, ReferenceSet | None]:
    """The trait (loaded from cfg.trait unless given) as extraction sees it: with `extraction.reference` as
    its negatives when one is set."""
    trait = trait or load_trait(resolve_trait_dir(cfg.trait.name, cfg.trait.path))
    ref = None
    if cfg.extraction.reference:
        ref = load_reference(cfg.extraction.reference, trait, cfg.seed)
        trait = with_reference(trait, ref)
    elif not trait.negative:
        raise ConfigError("extraction.reference", f"{trait.path} has no negative examples: contrast it with a "
                                                  "reference set, extraction.reference=neutral|category|<path>")
    return trait, ref


def vetting_on(cfg: ExtractConfig) -> bool:
    return vetting_enabled(cfg.extraction.vetting.enabled, cfg.judge.backend)


def check_trait_settings(cfg: ExtractConfig, trait: TraitDataset) -> None:
    """Batch sizes, and for vetting its thresholds, a definition to judge by and a working judge."""
    ex = cfg.extraction
    check_batch_size(ex.batch_size, "extraction.batch_size")
    check_batch_size(ex.generation.batch_size, "extraction.generation.batch_size")
    if vetting_on(cfg):
        check_thresholds(ex.vetting.positive_min, ex.vetting.negative_max)
        if not trait.definition:
            raise ConfigError("extraction.vetting", f"{trait.path} has no definition.txt for the judge to score "
                                                    "responses by; add one or set extraction.vetting.enabled=false")
        make_judge(asdict(cfg.judge)).validate()  # keys, prompt files, a reachable server


def check_normalize_settings(cfg: ExtractConfig) -> ReferenceSet | None:
    """normalize.* (checked by every job of a sweep, so a typo fails before any model loads); the neutral set."""
    n = cfg.normalize
    if not 0.0 < n.variance <= 1.0:
        raise ConfigError("normalize.variance", f"{n.variance} must be in (0, 1]")
    return load_neutral_set(n.denoise, key="normalize.denoise") if n.denoise else None


def vetting_key(cfg: ExtractConfig, trait: TraitDataset) -> str | None:
    """What changes the vetted rows (judge, prompts, thresholds); None when vetting is off."""
    if not vetting_on(cfg):
        return None
    v = cfg.extraction.vetting
    return content_hash("vetting-v1", judge_identity(asdict(cfg.judge), trait), v.positive_min, v.negative_max)


def _generated(trait: TraitDataset, name: str, use_provided: bool) -> list[bool]:
    return [not (use_provided and e.response) for e in getattr(trait, name)]


def _vet(lm: LoadedModel, cfg: ExtractConfig, trait: TraitDataset,
         responses: dict[str, list[str]]) -> tuple[TraitDataset, dict[str, list[str]], VettingOutcome]:
    """Judge the generated positives/negatives, drop the failures (with their pairs); OOD sets are not vetted."""
    ex, v = cfg.extraction, cfg.extraction.vetting
    judge = build_judge(asdict(cfg.judge), lm)
    judged = {name: _generated(trait, name, ex.use_provided_responses) for name in ("positive", "negative")}
    scores: dict[str, list[float | None]] = {}
    spec = trait.steering
    for name in ("positive", "negative"):
        rows = [i for i, g in enumerate(judged[name]) if g]
        got = trait_scores(judge, [getattr(trait, name)[i].prompt for i in rows], [responses[name][i] for i in rows],
                           trait=trait.name, definition=trait.definition or "",
                           eval_prompt=spec.eval_prompt if spec else None)
        scores[name] = [None] * len(judged[name])
        for i, s in zip(rows, got, strict=True):
            scores[name][i] = s
    out = vet_scores(scores["positive"], scores["negative"], pos_judged=judged["positive"],
                     neg_judged=judged["negative"], paired=trait.paired, positive_min=v.positive_min,
                     negative_max=v.negative_max)
    for r in out.rows:  # the tables show what was judged
        e = getattr(trait, r["polarity"])[r["row"]]
        r.update(source=e.source, prompt=e.prompt, response=responses[r["polarity"]][r["row"]])
    keep = {"positive": out.keep_pos, "negative": out.keep_neg}
    c = out.counts
    log.info("vetting (%s judge): dropped %d of %d positives and %d of %d negatives (%d and %d failed their "
             "threshold, %d and %d unscored were kept)", cfg.judge.backend, c["n_vetted_dropped_pos"],
             len(trait.positive), c["n_vetted_dropped_neg"], len(trait.negative), c["n_vetted_failed_pos"],
             c["n_vetted_failed_neg"], c["n_vetted_unscored_pos"], c["n_vetted_unscored_neg"])
    if min(len(keep["positive"]), len(keep["negative"])) < MIN_VETTED_ROWS:
        raise ConfigError("extraction.vetting", f"vetting kept {len(keep['positive'])} positives and "
                                                f"{len(keep['negative'])} negatives of {trait.qualified_name}: too "
                                                "few to split; lower positive_min / raise negative_max, or check "
                                                "that the judge can score this trait")
    vetted = dataclasses.replace(trait, **{n: [getattr(trait, n)[i] for i in keep[n]] for n in keep})
    return vetted, {**responses, **{n: [responses[n][i] for i in keep[n]] for n in keep}}, out


def prepare_trait_data(lm: LoadedModel, cfg: ExtractConfig, trait: TraitDataset, layers: list[int]) -> TraitData:
    """Responses (given or generated, cached), vetting when on, pooled activations (cached) per polarity.

    `trait` is `load_trait_for(cfg)`'s: with the reference set already in place of its negatives.
    """
    ex = cfg.extraction
    reference = load_reference(ex.reference, trait, cfg.seed) if ex.reference else None
    present = [n for n in POLARITIES if getattr(trait, n)]
    sizes: dict[str, int] = {}
    gen = ex.generation
    if isinstance(gen.batch_size, str):  # `auto`: measured on the prompts that will be generated for
        to_generate = [e for n in present for e, g in
                       zip(getattr(trait, n), _generated(trait, n, ex.use_provided_responses), strict=True) if g]
        size = sizes["extraction.generation.batch_size"] = resolve_batch_size(
            gen.batch_size, lm, prompt_texts(lm, to_generate), key="extraction.generation.batch_size",
            new_tokens=gen.max_new_tokens)
        gen = dataclasses.replace(gen, batch_size=size)
    responses = {n: responses_for(lm, getattr(trait, n), gen, cfg.seed, ex.use_provided_responses,
                                  desc=f"generate {n}") for n in present}
    notes = [reference_note(reference, trait)] if reference is not None else []
    outcome = None
    if vetting_on(cfg):
        trait, responses, outcome = _vet(lm, cfg, trait, responses)
        if not outcome.counts["n_vetted_pos"] + outcome.counts["n_vetted_neg"]:
            notes.append("vetting is on but every response was provided by the dataset: nothing was judged "
                         "(vetting applies to generated responses only)")
    capture = ex.batch_size
    if isinstance(capture, str):
        texts = [t + r for n in present for t, r in zip(prompt_texts(lm, getattr(trait, n)), responses[n], strict=True)]
        capture = sizes["extraction.batch_size"] = resolve_batch_size(capture, lm, texts, key="extraction.batch_size")
    acts, lengths = {}, {}
    for n in present:
        acts[n] = pooled_activations(lm, getattr(trait, n), responses[n], position=cfg.position.spec,
                                     component=cfg.component.name, layers=layers, batch_size=capture,
                                     max_length=ex.max_length, desc=f"capture {n}")
        lengths[n] = torch.tensor([len(ids) for ids in lm.tokenizer(list(responses[n]), add_special_tokens=False)
                                   ["input_ids"]], dtype=torch.float64)
    return TraitData(trait, acts, lengths, reference, outcome, sizes, notes)


def table_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts as the column dict `mlflow.log_table` takes (every column present in every row)."""
    keys = ["polarity", "row", "source", "score", "kept", "reason", "prompt", "response"]
    return {k: [r.get(k) for r in rows] for k in keys}


def run_extract_config(run_id: str, *, experiment: str, uri: str | None) -> ExtractConfig:
    """The effective ExtractConfig an extraction run was made with (its logged config). A value an older run
    logged redacted ("***") falls back to the schema default; an `auto` batch size is the size the run measured
    (its auto_batch/<key> metric), so rebuilding its rows does not measure again."""
    from omegaconf import OmegaConf

    from traitlab.tracking.names import auto_batch_metric
    from traitlab.tracking.runs import run_config
    from traitlab.tracking.store import ensure_store

    client, _ = ensure_store(uri, experiment)

    def unredacted(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: unredacted(v) for k, v in x.items() if v != "***"}
        return x

    merged = OmegaConf.merge(OmegaConf.structured(ExtractConfig), unredacted(run_config(client, run_id)))
    measured = client.get_run(run_id).data.metrics
    for key in ("extraction.batch_size", "extraction.generation.batch_size"):
        if isinstance(OmegaConf.select(merged, key), str) and auto_batch_metric(key) in measured:
            OmegaConf.update(merged, key, int(measured[auto_batch_metric(key)]))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def training_rows(lm: LoadedModel, run_cfg: ExtractConfig, layers: list[int]) -> tuple[TraitData, dict[str, Any]]:
    """An extraction's data and its train / held-out split, rebuilt from its config: the same trait files,
    reference set, vetted rows, position, component, responses and seed, so the pooled activations come from
    the extraction's own cache entry when `layers` is the layer list it captured."""
    from traitlab.data.splits import trait_split

    trait, _ = load_trait_for(run_cfg)
    data = prepare_trait_data(lm, run_cfg, trait, layers)
    return data, trait_split(data.trait, run_cfg.extraction.val_split, run_cfg.seed)
