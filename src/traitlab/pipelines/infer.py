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
calibration, stored per model in the cache); ``clean_massive=true`` zeroes those dims of the vectors.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor

from traitlab.config.infer import MODES, InferConfig, InferenceConfig
from traitlab.core.analysis import check_score_mode, project_tokens, score_modes
from traitlab.core.components import COMPONENTS, base_model, component_dim
from traitlab.core.hooks import MultiLayerCapture, MultiLayerProjection
from traitlab.core.layers import parse_layers
from traitlab.core.massive import (
    MassiveError,
    MaxAbsTracker,
    calibration_record,
    detect_massive_dims,
    merge_records,
    record_max_abs,
    summarize,
    zero_dims,
)
from traitlab.data import Example, load_prompt_set
from traitlab.data.readers import read_json_document, type_name
from traitlab.errors import ConfigError, DataError
from traitlab.io import (
    atomic_write_json,
    atomic_write_text,
    content_hash,
    load_tensors,
    read_json,
    save_tensors,
)
from traitlab.models.batching import run_halving
from traitlab.models.chat import format_prompt
from traitlab.models.encoding import Encoded, encode, length_sorted_batches, pad_id_of, pad_left
from traitlab.models.loading import LoadedModel, load_model
from traitlab.paths import cache_dir, outputs_dir
from traitlab.pipelines.common import model_key, responses_for
from traitlab.tracking.artifacts import FIGURES, TABLES, VIEWS, slug
from traitlab.tracking.registry import (
    VectorRef,
    fetch_vector,
    find_vectors,
    no_vectors_error,
    refs_at_layers,
    traits_with_vectors,
)
from traitlab.tracking.runs import JobRun, job_run, stage_run

log = logging.getLogger(__name__)

# Artifact layout of an inference run (paths relative to the run's artifact root).
PROJECTIONS = "projections"  # projections/<prompt>.json: tokens + every score
INDEX_PAGE = f"{VIEWS}/index.html"
MASSIVE_ARTIFACT = "massive/calibration.json"
_RESPONSES_EXPECTED = (
    'a JSON list (or {"items": [...]}) of {"id"?, "prompt", "system_prompt"?, "response"} objects'
)


def view_page(prompt_slug: str) -> str:
    return f"{VIEWS}/prompts/{prompt_slug}.html"


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class TextItem:
    """One prompt (chat-formatted later) and, once known, the response that follows it."""

    id: str
    prompt: str
    system_prompt: str | None = None
    response: str | None = None


@dataclass
class Source:
    name: str  # prompt set name or responses file stem
    items: list[TextItem]
    given_responses: bool

    def fingerprint(self) -> str:
        return content_hash("source-v1", [asdict(i) for i in self.items], self.given_responses)


def load_response_items(path: str | Path) -> list[TextItem]:
    """Items of a {prompt, response} file; any problem is a DataError naming file:line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("responses", f"{p} is not a file; expected {_RESPONSES_EXPECTED}")
    doc = read_json_document(p, _RESPONSES_EXPECTED)
    raw, where = doc.value, ()
    if isinstance(raw, dict):
        if set(raw) - {"items", "description"} or "items" not in raw:
            raise DataError(
                p,
                f'expected the key "items" (and optionally "description"); expected {_RESPONSES_EXPECTED}',
                line=doc.line(),
            )
        raw, where = raw["items"], ("items",)
    if not isinstance(raw, list) or not raw:
        raise DataError(
            p,
            f"expected a non-empty array, got {type_name(raw)}; expected {_RESPONSES_EXPECTED}",
            line=doc.line(*where),
        )
    items, seen = [], {}
    for i, v in enumerate(raw):
        line = doc.line(*where, i)
        if not isinstance(v, dict):
            raise DataError(p, f"item {i}: expected an object, got {type_name(v)}", line=line)
        unknown = sorted(set(v) - {"id", "prompt", "system_prompt", "response"})
        if unknown:
            raise DataError(
                p,
                f"item {i}: unknown key {unknown[0]!r}; allowed: id, prompt, system_prompt, response",
                line=doc.line(*where, i, unknown[0]),
            )
        for key in ("prompt", "response"):
            if not isinstance(v.get(key), str) or not v[key].strip():
                raise DataError(
                    p, f'item {i}: "{key}" must be a non-empty string', line=doc.line(*where, i, key)
                )
        if v.get("system_prompt") is not None and not isinstance(v["system_prompt"], str):
            raise DataError(
                p, f'item {i}: "system_prompt" must be a string', line=doc.line(*where, i, "system_prompt")
            )
        pid = str(v.get("id", i))
        if pid in seen:
            raise DataError(p, f"duplicate id {pid!r} (first on line {seen[pid]})", line=line)
        seen[pid] = line
        items.append(TextItem(pid, v["prompt"], v.get("system_prompt"), v["response"]))
    return items


def load_source(prompt_set: str, responses: str | None, max_prompts: int | None) -> Source:
    """The texts to score: a responses file when given, else a prompt set (name or .json path)."""
    if responses:
        items, name, given = load_response_items(responses), Path(responses).stem, True
    else:
        p = Path(prompt_set).expanduser()
        ps = load_prompt_set(path=p) if p.suffix == ".json" and p.is_file() else load_prompt_set(prompt_set)
        items = [TextItem(i.id, i.prompt, i.system_prompt) for i in ps.items]
        name, given = ps.name, False
    if max_prompts is not None:
        if max_prompts < 1:
            raise ConfigError("inference.max_prompts", f"{max_prompts} must be >= 1 (or null for all)")
        items = items[:max_prompts]
    return Source(name, items, given)


def trait_list(traits: Any) -> list[str] | None:
    """`traits=` as a list: null -> None (all), "a,b" -> [a, b], [a, b] -> [a, b]."""
    if traits is None or traits == "" or traits == []:
        return None
    if isinstance(traits, str):
        return [t.strip() for t in traits.split(",") if t.strip()]
    if isinstance(traits, Sequence) or hasattr(traits, "__iter__"):
        out = [str(t).strip() for t in traits]
        if all(out):
            return out
    raise ConfigError(
        "traits", f"{traits!r} is not a trait list; expected null, [cat/name, ...] or 'cat/a,cat/b'"
    )


def validate(cfg: InferConfig) -> Source:
    """Everything checkable before the model loads."""
    if cfg.mode not in MODES:
        raise ConfigError("mode", f"{cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.mode == "from_responses" and not cfg.responses:
        raise ConfigError(
            "responses", f"mode=from_responses needs responses=/path/items.json ({_RESPONSES_EXPECTED})"
        )
    check_score_mode(cfg.inference.score_mode)
    if cfg.inference.component not in COMPONENTS:
        raise ConfigError(
            "inference.component", f"{cfg.inference.component!r} is not one of {', '.join(COMPONENTS)}"
        )
    if not cfg.inference.massive.ratio > 1:
        raise ConfigError(
            "inference.massive.ratio", f"{cfg.inference.massive.ratio} must be > 1 (default 100)"
        )
    trait_list(cfg.traits)
    parse_layers(cfg.layers, 10_000, best=5_000)  # syntax now; the range once the model's depth is known
    return load_source(cfg.prompt_set, cfg.responses, cfg.inference.max_prompts)


# --------------------------------------------------------------------------------------------- vectors


@dataclass
class TraitVector:
    """A vector chosen for (trait, layer): where it came from, the direction projected, its baseline."""

    trait: str
    layer: int
    ref: VectorRef
    vector: Tensor  # float32 [D]; massive dims zeroed when cleaning
    baseline: float = 0.0  # training-centroid projection onto the unit vector (raw units); NaN: not logged
    selection: str = ""  # why this vector: steering_delta | ood_effect_size | val_effect_size | layer

    @property
    def label(self) -> str:
        return f"{self.trait} L{self.layer}"

    def describe(self) -> dict[str, Any]:
        r = self.ref
        return {
            "run_id": r.run_id,
            "method": r.method,
            "component": r.component,
            "position": r.position,
            "layer": self.layer,
            "selection": self.selection,
        }


def resolve_traits(traits: Any, model: str, experiment: str, uri: str | None) -> list[str]:
    names = trait_list(traits)
    if names is not None:
        return list(dict.fromkeys(names))
    found = traits_with_vectors(model, experiment=experiment, uri=uri)
    if not found:
        raise ConfigError(
            "traits",
            f"no trait has extracted vectors for model {model!r} in experiment "
            f"{experiment!r}; run launchers/extract.py first or name traits=[...]",
        )
    return found


def vector_filters(inf: InferenceConfig) -> dict[str, str]:
    filters = {"component": inf.component}
    if inf.method:
        filters["method"] = inf.method
    if inf.position:
        filters["position"] = inf.position
    return filters


def require_vectors(
    traits: Sequence[str], model: str, inf: InferenceConfig, *, experiment: str, uri: str | None
) -> None:
    """Fail before the model loads when a trait has no vectors at all (the common first-run mistake)."""
    filters = vector_filters(inf)
    for trait in traits:
        if not find_vectors(trait, model, experiment=experiment, uri=uri, **filters):
            raise no_vectors_error(trait, model, experiment, filters)


def select_vectors(
    traits: Sequence[str],
    model: str,
    layers: Any,
    n_layers: int,
    inf: InferenceConfig,
    *,
    experiment: str,
    uri: str | None,
    dim: int | None = None,
) -> list[TraitVector]:
    """Per trait: resolve ``layers`` (``best`` = the registry's best vector) and fetch one vector per layer
    (which vector at each layer: tracking.registry.refs_at_layers)."""
    chosen: list[TraitVector] = []
    for trait in traits:
        for ref, why in refs_at_layers(trait, model, layers, n_layers, experiment=experiment, uri=uri,
                                       **vector_filters(inf)):
            v = fetch_vector(ref, uri=uri, experiment=experiment, expected_dim=dim).float()
            base = ref.metrics.get("baseline")
            baseline = (
                float(base) / float(v.norm()) if base is not None and math.isfinite(base) else float("nan")
            )
            chosen.append(TraitVector(trait, ref.layer, ref, v, baseline, why))
    return chosen


def warn_missing_baselines(vectors: Sequence[TraitVector]) -> None:
    missing = [tv.label for tv in vectors if not math.isfinite(tv.baseline)]
    if missing:
        log.warning(
            "centered: no baseline logged for %s (extracted before baselines were logged?): left uncentred",
            ", ".join(missing),
        )


def apply_cleaning(vectors: list[TraitVector], dims_by_layer: dict[int, list[int]], centered: bool) -> None:
    for tv in vectors:
        dims = dims_by_layer.get(tv.layer, [])
        if dims:
            tv.vector = zero_dims(tv.vector, dims)
    if centered and any(dims_by_layer.get(tv.layer) for tv in vectors):
        log.warning("centered with clean_massive: the baseline was measured on the uncleaned vector")


def vectors_by_layer(vectors: Sequence[TraitVector]) -> tuple[dict[int, Tensor], dict[int, int]]:
    """Stacked [T_l, D] matrices per layer for the hooks, and each vector's column in its layer's matrix."""
    rows: dict[int, list[Tensor]] = {}
    column = {}
    for i, tv in enumerate(vectors):
        column[i] = len(rows.setdefault(tv.layer, []))
        rows[tv.layer].append(tv.vector)
    return {layer: torch.stack(vs) for layer, vs in rows.items()}, column


# ------------------------------------------------------------------------------------- forward passes


@dataclass
class Scored:
    """One text's projection: raw scores [S, T_l] on unit vectors and norms [S] per layer, all tokens."""

    token_ids: list[int]
    n_prompt_tokens: int
    scores: dict[int, Tensor]
    norms: dict[int, Tensor]


def encode_items(lm: LoadedModel, items: Sequence[TextItem], max_length: int) -> list[Encoded]:
    return [
        encode(
            lm.tokenizer,
            format_prompt(lm.tokenizer, it.prompt, it.system_prompt, lm.use_chat_template),
            it.response or None,
            max_length,
        )
        for it in items
    ]


def _batches(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    return length_sorted_batches([e.seq_len for e in encoded], batch_size)


@torch.inference_mode()
def project_encoded(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    vectors: dict[int, Tensor],
    *,
    component: str = "residual",
    batch_size: int = 8,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
    tracker: MaxAbsTracker | None = None,
) -> list[Scored]:
    """One prefill of the trunk per batch with projection hooks on every layer of ``vectors``.

    The LM head never runs (the trunk is called directly). ``tracker`` (massive calibration) listens
    in on the same forward until its token budget is spent.
    """
    trunk = base_model(model)
    proj = MultiLayerProjection(model, vectors, component=component)
    layers = sorted(vectors)
    out: list[Scored | None] = [None] * len(encoded)

    def run(rows: list[int]) -> list[Scored]:
        ids, mask = pad_left([encoded[i] for i in rows], pad_id, device)
        calib = (
            tracker.hooks(model, component, valid=mask.bool())
            if tracker is not None and not tracker.full
            else nullcontext()
        )
        with proj, calib:
            trunk(input_ids=ids, attention_mask=mask, use_cache=False)
        scores = {layer: proj.scores(layer).cpu() for layer in layers}
        norms = {layer: proj.norms(layer).cpu() for layer in layers}
        res = []
        for b, i in enumerate(rows):
            pad = ids.shape[1] - encoded[i].seq_len
            res.append(
                Scored(
                    encoded[i].ids,
                    encoded[i].prompt_len,
                    {lyr: s[b, pad:] for lyr, s in scores.items()},
                    {lyr: n[b, pad:] for lyr, n in norms.items()},
                )
            )
        return res

    for rows in _batches(encoded, batch_size):
        for i, s in zip(rows, run_halving(run, rows), strict=True):
            out[i] = s
    return [s for s in out if s is not None]


@torch.inference_mode()
def capture_encoded(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    sink: Callable[[int, dict[int, Tensor]], None],
    *,
    component: str = "residual",
    batch_size: int = 8,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
) -> None:
    """Raw per-token activations {layer: [S, D]} of each text, handed to ``sink(index, acts)`` batch by batch.

    The forward stops after the deepest captured layer; only one batch is held in memory.
    """
    trunk = base_model(model)

    def run(rows: list[int]) -> list[None]:
        ids, mask = pad_left([encoded[i] for i in rows], pad_id, device)
        cap = MultiLayerCapture(model, layers, component=component, pool="none", stop_after_last=True)
        with cap:
            trunk(input_ids=ids, attention_mask=mask, use_cache=False)
        got = cap.get_all()
        for b, i in enumerate(rows):
            pad = ids.shape[1] - encoded[i].seq_len
            sink(i, {layer: a[b, pad:].cpu().contiguous() for layer, a in got.items()})
        return [None] * len(rows)

    for rows in _batches(encoded, batch_size):
        run_halving(run, rows)


@torch.inference_mode()
def calibrate_encoded(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    tracker: MaxAbsTracker,
    *,
    component: str = "residual",
    batch_size: int = 8,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
) -> None:
    """A calibration-only prefill (used when cleaning needs the massive dims before the scoring pass)."""
    trunk = base_model(model)
    for rows in _batches(encoded, batch_size):
        if tracker.full:
            break
        ids, mask = pad_left([encoded[i] for i in rows], pad_id, device)
        with tracker.hooks(model, component, valid=mask.bool()):
            trunk(input_ids=ids, attention_mask=mask, use_cache=False)


# ---------------------------------------------------------------------------------- massive calibration


def calibration_path(key: str, component: str) -> Path:
    return cache_dir() / "massive" / f"{key}-{component}.json"


def load_calibration(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        record_max_abs(record)
        return record
    except (DataError, MassiveError) as e:
        log.warning("massive calibration %s is unreadable (%s): recalibrating", path, e)
        return None


def save_calibration(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Merge into the stored record under a lock (parallel jobs on one model) and write atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        merged = merge_records(load_calibration(path), record)
        atomic_write_text(path, json.dumps(merged, separators=(",", ":")))  # ~17k floats: no indentation
    return merged


def covers(record: dict[str, Any] | None, layers: Sequence[int]) -> bool:
    return record is not None and all(str(layer) in record.get("layers", {}) for layer in layers)


# --------------------------------------------------------------------------------------------- records


def _floats(t: Tensor) -> list[float]:
    return [float(x) for x in t.tolist()]


def build_record(
    item: TextItem,
    tokens: list[str],
    scored: Scored,
    vectors: Sequence[TraitVector],
    columns: dict[int, int],
    *,
    model: str,
    source: str,
    score_mode: str,
    centered: bool,
    clean_massive: bool,
) -> dict[str, Any]:
    """The per-prompt JSON: tokens, every score mode of every trait x layer, token norms per layer."""
    n_tok, n_prompt = len(scored.token_ids), scored.n_prompt_tokens
    response_mask = torch.arange(n_tok) >= n_prompt
    traits: dict[str, Any] = {}
    for i, tv in enumerate(vectors):
        raw = scored.scores[tv.layer][:, columns[i]]
        base = tv.baseline if centered and math.isfinite(tv.baseline) else 0.0
        modes = score_modes(raw, scored.norms[tv.layer], mean_over=response_mask, baseline=base)
        entry = {
            "scores": _floats(modes[score_mode]),
            "mode": score_mode,
            **{m: _floats(v) for m, v in modes.items()},
            "baseline": tv.baseline if math.isfinite(tv.baseline) else None,
            "centered": centered,
            "vector": tv.describe(),
        }
        traits.setdefault(tv.trait, {"layers": {}})["layers"][str(tv.layer)] = entry
    return {
        "prompt_id": item.id,
        "prompt": item.prompt,
        "system_prompt": item.system_prompt,
        "response": item.response or "",
        "tokens": tokens,
        "token_ids": list(scored.token_ids),
        "n_prompt_tokens": n_prompt,
        "model": model,
        "source": source,
        "score_mode": score_mode,
        "centered": centered,
        "clean_massive": clean_massive,
        "norms": {str(layer): _floats(n) for layer, n in sorted(scored.norms.items())},
        "traits": traits,
    }


def view_record(record: dict[str, Any]) -> dict[str, Any]:
    """What the HTML page embeds: the record without ids, norms and the non-selected score modes."""
    slim = {k: record[k] for k in ("prompt_id", "prompt", "response", "tokens", "n_prompt_tokens", "model")}
    slim["traits"] = {
        t: {"layers": {ly: {"scores": e["scores"], "mode": e["mode"]} for ly, e in d["layers"].items()}}
        for t, d in record["traits"].items()
    }
    return slim


def response_scores(record: dict[str, Any], trait: str, layer: int | str, mode: str = "scores") -> Tensor:
    """The response part of one trait x layer trajectory of a record (selected mode unless ``mode`` given)."""
    entry = record["traits"][trait]["layers"][str(layer)]
    return torch.tensor([math.nan if x is None else x for x in entry[mode]], dtype=torch.float64)[
        record["n_prompt_tokens"] :
    ]


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def fill_responses(
    lm: LoadedModel, items: Sequence[TextItem], inf: InferenceConfig, seed: int
) -> list[TextItem]:
    """Items with responses: given ones kept, the rest generated (greedy/seeded, cached on disk)."""
    examples = [Example(it.prompt, it.system_prompt, it.response) for it in items]
    texts = responses_for(lm, examples, inf.generation, seed, use_provided=True, desc="generate")
    return [TextItem(it.id, it.prompt, it.system_prompt, t) for it, t in zip(items, texts, strict=True)]


def score_items(
    lm: LoadedModel,
    items: Sequence[TextItem],
    vectors: Sequence[TraitVector],
    inf: InferenceConfig,
    *,
    source: str,
    tracker: MaxAbsTracker | None = None,
) -> list[dict[str, Any]]:
    """Stream-through scoring of items that already carry responses -> per-prompt records."""
    stacked, columns = vectors_by_layer(vectors)
    encoded = encode_items(lm, items, inf.max_length)
    scored = project_encoded(
        lm.model,
        encoded,
        stacked,
        component=inf.component,
        batch_size=inf.batch_size,
        pad_id=pad_id_of(lm.tokenizer),
        device=lm.device,
        tracker=tracker,
    )
    return [
        build_record(
            it,
            decode_tokens(lm.tokenizer, s.token_ids),
            s,
            vectors,
            columns,
            model=lm.name,
            source=source,
            score_mode=inf.score_mode,
            centered=inf.centered,
            clean_massive=inf.clean_massive,
        )
        for it, s in zip(items, scored, strict=True)
    ]


# ----------------------------------------------------------------------------------------------- views


def _unique_slugs(ids: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for pid in ids:
        s = slug(pid)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.append(s if n == 0 else f"{s}_{n + 1}")
    return out


def _series(record: dict[str, Any], response_only: bool) -> tuple[list[str], dict[str, list[float | None]]]:
    start = record["n_prompt_tokens"] if response_only else 0
    series = {
        f"{t} L{ly}": e["scores"][start:]
        for t, d in record["traits"].items()
        for ly, e in d["layers"].items()
    }
    return record["tokens"][start:], series


def write_views(out: Path, records: Sequence[dict[str, Any]], *, title: str, max_figures: int) -> list[str]:
    """Per prompt: JSON, HTML page, trajectory and heatmap PNGs; plus the index. Returns the page paths."""
    from traitlab.viz.figures import trait_token_heatmap, trajectory_figure
    from traitlab.viz.token_view import index_entry, render_index_html, render_token_html

    pages, entries = [], []
    for i, (rec, s) in enumerate(zip(records, _unique_slugs([r["prompt_id"] for r in records]), strict=True)):
        atomic_write_json(out / PROJECTIONS / f"{s}.json", rec)
        slim = view_record(rec)
        page = view_page(s)
        atomic_write_text(out / page, render_token_html(slim))
        pages.append(page)
        entries.append(index_entry(slim, f"prompts/{s}.html"))
        if i < max_figures and rec["traits"]:
            response_only = len(rec["tokens"]) > rec["n_prompt_tokens"]
            tokens, series = _series(rec, response_only)
            part = "response tokens" if response_only else "tokens"
            fig = trajectory_figure(tokens, series, f"{rec['prompt_id']}: {rec['score_mode']} score ({part})")
            (out / FIGURES / "trajectories").mkdir(parents=True, exist_ok=True)
            fig.savefig(out / FIGURES / "trajectories" / f"{s}.png", dpi=110)
            fig = trait_token_heatmap(tokens, series)
            fig.suptitle(f"{rec['prompt_id']} ({rec['score_mode']})", fontsize=8)
            (out / FIGURES / "heatmaps").mkdir(parents=True, exist_ok=True)
            fig.savefig(out / FIGURES / "heatmaps" / f"{s}.png", dpi=110)
    atomic_write_text(out / INDEX_PAGE, render_index_html(entries, title=title))
    return pages


def summary_rows(records: Sequence[dict[str, Any]]) -> dict[str, list]:
    cols: dict[str, list] = {
        k: [] for k in ("prompt_id", "trait", "layer", "mode", "mean", "max", "min", "n_tokens")
    }
    for rec in records:
        for trait, d in rec["traits"].items():
            for layer, e in d["layers"].items():
                r = response_scores(rec, trait, layer)
                r = r[~torch.isnan(r)]
                vals = (float(r.mean()), float(r.max()), float(r.min())) if r.numel() else (None, None, None)
                for k, v in zip(
                    ("prompt_id", "trait", "layer", "mode", "mean", "max", "min", "n_tokens"),
                    (rec["prompt_id"], trait, int(layer), e["mode"], *vals, int(r.numel())),
                    strict=True,
                ):
                    cols[k].append(v)
    return cols


def mean_scores(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Mean response score per (trait, layer) over every response token of every prompt."""
    acc: dict[tuple[str, int], list[Tensor]] = {}
    for rec in records:
        for trait, d in rec["traits"].items():
            for layer in d["layers"]:
                acc.setdefault((trait, int(layer)), []).append(response_scores(rec, trait, layer))
    out = {}
    for key, parts in acc.items():
        allv = torch.cat(parts)
        allv = allv[~torch.isnan(allv)]
        out[key] = float(allv.mean()) if allv.numel() else float("nan")
    return out


def _log_outputs(
    run: JobRun,
    records: list[dict[str, Any]],
    *,
    title: str,
    max_figures: int,
    calibration: dict[str, Any] | None,
    ratio: float,
) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        pages = write_views(Path(tmp), records, title=title, max_figures=max_figures)
        if calibration is not None:
            atomic_write_text(Path(tmp) / MASSIVE_ARTIFACT, json.dumps(calibration, separators=(",", ":")))
        run.log_artifacts(tmp)
    for (trait, layer), value in sorted(mean_scores(records).items()):
        if math.isfinite(value):
            run.log_metric(f"mean_score/{trait}", value, step=layer)
    run.log_table(summary_rows(records), f"{TABLES}/summary.json")
    run.log_table(
        {
            "prompt_id": [r["prompt_id"] for r in records],
            "prompt": [r["prompt"] for r in records],
            "response": [r["response"] for r in records],
        },
        f"{TABLES}/responses.json",
    )
    if calibration is not None:
        max_abs = record_max_abs(calibration)
        dims = detect_massive_dims(max_abs, ratio)
        rows = summarize(max_abs, ratio)
        if rows:
            run.log_table({k: [r[k] for r in rows] for k in rows[0]}, f"{TABLES}/massive_dims.json")
        for layer, d in dims.items():
            run.log_metric("massive_dims", len(d), step=layer)
    return pages[0] if pages else None


# ------------------------------------------------------------------------------------------- capture IO


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


def _layer_key(layer: int) -> str:
    return f"layer_{layer:03d}"


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not path.is_file():
        raise ConfigError(
            "mode",
            f"no finished capture at {root} (no manifest.json); run mode=capture with the same "
            "model, prompt set/responses, generation and component first, or set "
            "inference.capture_dir",
        )
    manifest = read_json(path)
    if (
        not isinstance(manifest, dict)
        or manifest.get("version") != 1
        or not isinstance(manifest.get("items"), list)
    ):
        raise DataError(path, "not a traitlab capture manifest (version 1 with an items list)")
    return manifest


# ------------------------------------------------------------------------------------------------- run


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


def _vector_keys(vectors: Sequence[TraitVector]) -> list[tuple]:
    return [
        (tv.trait, tv.layer, tv.ref.run_id, tv.ref.method, tv.ref.position, tv.ref.component)
        for tv in vectors
    ]


def _layers_by_trait(vectors: Sequence[TraitVector]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for tv in vectors:
        out.setdefault(tv.trait, []).append(tv.layer)
    return out


def _tags(
    cfg: InferConfig,
    model: str,
    source: Source,
    vectors: Sequence[TraitVector],
    layers: Sequence[int],
    mode: str,
) -> dict[str, str]:
    traits = sorted({tv.trait for tv in vectors})
    return {
        "traitlab.stage": "infer",
        "model": model,
        "mode": mode,
        "prompt_set": source.name,
        "traits": ",".join(traits)[:5000],
        "layers": ",".join(map(str, sorted(set(layers)))),
        "component": cfg.inference.component,
        "score_mode": cfg.inference.score_mode,
    }


def _first_page_of(run: JobRun) -> str | None:
    files = run.client.list_artifacts(run.run_id, f"{VIEWS}/prompts")
    pages = sorted(f.path for f in files if f.path.endswith(".html"))
    return pages[0] if pages else None


def _artifact_uri(run: JobRun) -> str:
    return run.client.get_run(run.run_id).info.artifact_uri


def run_infer(
    cfg: InferConfig, parent_run_id: str | None = None, lm: LoadedModel | None = None
) -> InferResult:
    source = validate(cfg)
    if cfg.mode == "reproject":
        return _run_reproject(cfg, source, parent_run_id)
    if cfg.mode != "capture" or "best" in str(cfg.layers).lower():  # these need vectors: check them first
        traits = resolve_traits(cfg.traits, cfg.model.name, **_tracking(cfg))
        require_vectors(traits, cfg.model.name, cfg.inference, **_tracking(cfg))
    lm = lm or load_model(cfg.model)
    if cfg.mode == "capture":
        return _run_capture(cfg, source, lm, parent_run_id)
    return _run_stream(cfg, source, lm, parent_run_id)


def _tracking(cfg: InferConfig) -> dict[str, Any]:
    return {"experiment": cfg.tracking.experiment, "uri": cfg.tracking.uri}


def _run_stream(cfg: InferConfig, source: Source, lm: LoadedModel, parent_run_id: str | None) -> InferResult:
    inf = cfg.inference
    traits = resolve_traits(cfg.traits, lm.name, **_tracking(cfg))
    vectors = select_vectors(
        traits,
        lm.name,
        cfg.layers,
        lm.n_layers,
        inf,
        dim=component_dim(lm.model, inf.component),
        **_tracking(cfg),
    )
    if inf.centered:
        warn_missing_baselines(vectors)
    mkey = model_key(lm)
    key = content_hash(
        "infer-v1", cfg.mode, mkey, source.fingerprint(), asdict(inf), cfg.seed, _vector_keys(vectors)
    )
    cal_path = calibration_path(mkey, inf.component)
    all_layers = list(range(lm.n_layers))
    tags = _tags(cfg, lm.name, source, vectors, [tv.layer for tv in vectors], cfg.mode)
    run_name = cfg.tracking.run_name or f"infer-{source.name}-{cfg.mode}"
    with stage_run(cfg, job_key=key, run_name=run_name, tags=tags, parent_run_id=parent_run_id) as run:
        result = _new_result(run, cfg.mode, vectors)
        if run.skipped:
            result.first_page, result.artifact_uri = _first_page_of(run), _artifact_uri(run)
            return result
        items = source.items if source.given_responses else fill_responses(lm, source.items, inf, cfg.seed)
        calibration = load_calibration(cal_path)
        tracker = None
        if not covers(calibration, all_layers):
            tracker = MaxAbsTracker(all_layers, inf.massive.max_tokens)
            if inf.clean_massive:  # the dims must be known before projecting: calibrate first
                calibrate_encoded(
                    lm.model,
                    encode_items(lm, items, inf.max_length),
                    tracker,
                    component=inf.component,
                    batch_size=inf.batch_size,
                    pad_id=pad_id_of(lm.tokenizer),
                    device=lm.device,
                )
                calibration = _store_tracker(cal_path, tracker, lm.name, mkey, inf.component)
                tracker = None
        dims = detect_massive_dims(record_max_abs(calibration), inf.massive.ratio) if calibration else {}
        if inf.clean_massive:
            apply_cleaning(vectors, dims, inf.centered)
        records = score_items(lm, items, vectors, inf, source=source.name, tracker=tracker)
        if tracker is not None and tracker.n_tokens:
            calibration = _store_tracker(cal_path, tracker, lm.name, mkey, inf.component)
            dims = detect_massive_dims(record_max_abs(calibration), inf.massive.ratio)
        return _finish(result, run, records, dims, inf, calibration, title=f"{source.name} · {lm.name} · {inf.score_mode}")


def _new_result(run: JobRun, mode: str, vectors: Sequence[Any], **extra: Any) -> InferResult:
    return InferResult(run.run_id, run.skipped, mode, sorted({tv.trait for tv in vectors}), _layers_by_trait(vectors),
                       **extra)


def _finish(result: InferResult, run: JobRun, records: list, dims: Any, inf: Any, calibration: Any, *,
            title: str) -> InferResult:
    """Log the views of a scored run and fill in the result's pointers to them."""
    result.records, result.massive_dims = records, dims
    result.first_page = _log_outputs(run, records, title=title, max_figures=inf.max_figure_prompts,
                                     calibration=calibration, ratio=inf.massive.ratio)
    result.artifact_uri = _artifact_uri(run)
    return result


def _store_tracker(
    path: Path, tracker: MaxAbsTracker, model: str, mkey: str, component: str
) -> dict[str, Any]:
    record = calibration_record(
        tracker.max_abs(),
        tracker.n_tokens,
        model=model,
        model_key=mkey,
        component=component,
        source="inference prefill",
    )
    return save_calibration(path, record)


def _capture_layers(cfg: InferConfig, lm: LoadedModel) -> tuple[list[int], list[TraitVector]]:
    """Layers to capture: explicit specs need no vectors; `best` specs resolve per trait via MLflow."""
    if "best" not in str(cfg.layers).lower():
        return parse_layers(cfg.layers, lm.n_layers), []
    traits = resolve_traits(cfg.traits, lm.name, **_tracking(cfg))
    vectors = select_vectors(
        traits,
        lm.name,
        cfg.layers,
        lm.n_layers,
        cfg.inference,
        dim=component_dim(lm.model, cfg.inference.component),
        **_tracking(cfg),
    )
    return sorted({tv.layer for tv in vectors}), vectors


def _run_capture(cfg: InferConfig, source: Source, lm: LoadedModel, parent_run_id: str | None) -> InferResult:
    inf = cfg.inference
    layers, vectors = _capture_layers(cfg, lm)
    root = capture_root(cfg, source)
    mkey = model_key(lm)
    key = content_hash(
        "infer-capture-v1",
        mkey,
        source.fingerprint(),
        asdict(inf.generation),
        cfg.seed,
        inf.component,
        inf.max_length,
        layers,
        str(root),
    )
    tags = _tags(cfg, lm.name, source, vectors, layers, "capture")
    tags["capture_dir"] = str(root)
    run_name = cfg.tracking.run_name or f"infer-{source.name}-capture"
    force = cfg.force or not (root / "manifest.json").is_file()  # a deleted capture is redone
    with job_run(
        experiment=cfg.tracking.experiment,
        job_key=key,
        run_name=run_name,
        config=asdict(cfg),
        tags=tags,
        parent_run_id=parent_run_id,
        force=force,
        uri=cfg.tracking.uri,
    ) as run:
        result = _new_result(run, "capture", vectors, capture_dir=str(root))
        if run.skipped:
            return result
        items = source.items if source.given_responses else fill_responses(lm, source.items, inf, cfg.seed)
        encoded = encode_items(lm, items, inf.max_length)
        files = [f"{s}.safetensors" for s in _unique_slugs([it.id for it in items])]
        (root / "manifest.json").unlink(missing_ok=True)  # a half-rewritten capture must not look finished
        cal_path = calibration_path(mkey, inf.component)
        calibration = load_calibration(cal_path)
        tracker = None if covers(calibration, layers) else MaxAbsTracker(layers, inf.massive.max_tokens)

        def sink(i: int, acts: dict[int, Tensor]) -> None:
            tensors = {_layer_key(layer): a for layer, a in acts.items()}
            tensors["input_ids"] = torch.tensor(encoded[i].ids, dtype=torch.long)
            save_tensors(root / files[i], tensors, {"prompt_id": items[i].id, "component": inf.component})
            if tracker is not None and not tracker.full:
                for layer, a in acts.items():
                    tracker.update(layer, a)
                tracker.add_tokens(len(encoded[i].ids))

        capture_encoded(
            lm.model,
            encoded,
            layers,
            sink,
            component=inf.component,
            batch_size=inf.batch_size,
            pad_id=pad_id_of(lm.tokenizer),
            device=lm.device,
        )
        if tracker is not None:
            calibration = _store_tracker(cal_path, tracker, lm.name, mkey, inf.component)
        manifest = {
            "version": 1,
            "model": lm.name,
            "model_key": mkey,
            "model_spec": asdict(cfg.model),
            "n_layers": lm.n_layers,
            "hidden_size": component_dim(lm.model, inf.component),
            "component": inf.component,
            "layers": layers,
            "source": source.name,
            "dtype": "float32",
            "items": [
                {
                    "id": it.id,
                    "prompt": it.prompt,
                    "system_prompt": it.system_prompt,
                    "response": it.response,
                    "file": f,
                    "token_ids": e.ids,
                    "tokens": decode_tokens(lm.tokenizer, e.ids),
                    "n_prompt_tokens": e.prompt_len,
                }
                for it, e, f in zip(items, encoded, files, strict=True)
            ],
        }
        atomic_write_json(root / "manifest.json", manifest)
        run.log_dict(
            {k: v for k, v in manifest.items() if k != "items"} | {"n_items": len(items)},
            "capture/manifest_summary.json",
        )
        run.log_metric("captured_tokens", sum(e.seq_len for e in encoded))
        log.info("captured %d texts x %d layers to %s", len(items), len(layers), root)
        return result


def _run_reproject(cfg: InferConfig, source: Source, parent_run_id: str | None) -> InferResult:
    """Score a capture without loading the model: the vectors come from MLflow, the activations from disk."""
    inf = cfg.inference
    root = capture_root(cfg, source)
    manifest = read_manifest(root)
    if manifest["component"] != inf.component:
        raise ConfigError(
            "inference.component",
            f"the capture at {root} is of {manifest['component']!r}, not {inf.component!r}",
        )
    model = manifest["model"]
    traits = resolve_traits(cfg.traits, model, **_tracking(cfg))
    vectors = select_vectors(
        traits,
        model,
        cfg.layers,
        int(manifest["n_layers"]),
        inf,
        dim=int(manifest["hidden_size"]),
        **_tracking(cfg),
    )
    if inf.centered:
        warn_missing_baselines(vectors)
    missing = sorted({tv.layer for tv in vectors} - set(manifest["layers"]))
    if missing:
        raise ConfigError(
            "layers", f"layers {missing} were not captured at {root}; captured: {manifest['layers']}"
        )
    key = content_hash(
        "infer-v1",
        "reproject",
        manifest["model_key"],
        source.fingerprint(),
        asdict(inf),
        cfg.seed,
        _vector_keys(vectors),
        str(root),
    )
    tags = _tags(cfg, model, source, vectors, [tv.layer for tv in vectors], "reproject")
    tags["capture_dir"] = str(root)
    run_name = cfg.tracking.run_name or f"infer-{source.name}-reproject"
    with stage_run(cfg, job_key=key, run_name=run_name, tags=tags, parent_run_id=parent_run_id) as run:
        result = _new_result(run, "reproject", vectors, capture_dir=str(root))
        if run.skipped:
            result.first_page, result.artifact_uri = _first_page_of(run), _artifact_uri(run)
            return result
        layers = sorted({tv.layer for tv in vectors})
        loaded = [_load_capture(root, entry, layers) for entry in manifest["items"]]
        cal_path = calibration_path(manifest["model_key"], inf.component)
        calibration = load_calibration(cal_path)
        if not covers(calibration, layers):
            tracker = MaxAbsTracker(layers, inf.massive.max_tokens)
            for acts in loaded:
                if tracker.full:
                    break
                for layer in layers:
                    tracker.update(layer, acts[layer])
                tracker.add_tokens(next(iter(acts.values())).shape[0])
            calibration = _store_tracker(cal_path, tracker, model, manifest["model_key"], inf.component)
        dims = detect_massive_dims(record_max_abs(calibration), inf.massive.ratio)
        if inf.clean_massive:
            apply_cleaning(vectors, dims, inf.centered)
        stacked, columns = vectors_by_layer(vectors)
        records = []
        for entry, acts in zip(manifest["items"], loaded, strict=True):
            scores, norms = {}, {}
            for layer, mat in stacked.items():
                scores[layer], norms[layer] = project_tokens(acts[layer], mat)
            scored = Scored(list(entry["token_ids"]), int(entry["n_prompt_tokens"]), scores, norms)
            item = TextItem(
                str(entry["id"]), entry["prompt"], entry.get("system_prompt"), entry.get("response")
            )
            records.append(
                build_record(
                    item,
                    list(entry["tokens"]),
                    scored,
                    vectors,
                    columns,
                    model=model,
                    source=source.name,
                    score_mode=inf.score_mode,
                    centered=inf.centered,
                    clean_massive=inf.clean_massive,
                )
            )
        return _finish(result, run, records, dims, inf, calibration, title=f"{source.name} · {model} · {inf.score_mode} (reprojected)")


def _load_capture(root: Path, entry: dict[str, Any], layers: Sequence[int]) -> dict[int, Tensor]:
    path = root / entry["file"]
    tensors, _ = load_tensors(path)
    out = {}
    for layer in layers:
        a = tensors.get(_layer_key(layer))
        if a is None or a.dim() != 2 or a.shape[0] != len(entry["token_ids"]):
            raise DataError(path, f"no [tokens, D] activations for layer {layer} (has {sorted(tensors)})")
        out[layer] = a
    return out
