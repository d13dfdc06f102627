"""Massive-activation calibration stored per model and component in the cache (merged under a lock).

Two kinds: *passive* (``<model key>-<component>.json``) records the dims seen in whatever texts the first run on
a model scored; *neutral* (``neutral-<key>.json``) is an explicit calibration on a neutral set, keyed by the
model identity, component, set content, token budget and (for generated responses) the generation settings,
so it is the same whatever a researcher scores afterwards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock
from torch import Tensor

from traitlab.config.infer import CALIBRATIONS
from traitlab.core.massive import (
    MassiveError,
    MaxAbsTracker,
    calibration_record,
    detect_massive_dims,
    merge_records,
    ratios_to_median,
    record_max_abs,
)
from traitlab.data.texts import Source, TextItem, load_calibration_source
from traitlab.errors import ConfigError, DataError
from traitlab.io import atomic_write_text, content_hash, read_json
from traitlab.models.encoding import pad_id_of
from traitlab.models.loading import LoadedModel
from traitlab.monitor.scoring import calibrate_encoded, encode_items
from traitlab.paths import cache_dir

log = logging.getLogger(__name__)


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


def store_tracker(
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


def neutral_location(model_key: str, component: str, massive: Any, max_length: int) -> tuple[Source, Path]:
    """The neutral set ``massive.set`` and where its calibration of (model identity, component) lives: keyed by
    the set's content, the token budget and, when the set has no responses of its own, the length of the greedy
    ones written for it. Needs no model (reproject looks a calibration up from a capture's manifest)."""
    source = load_calibration_source(massive.set)
    written = None if source.given_responses else massive.max_new_tokens
    key = content_hash("massive-neutral-v1", model_key, component, source.fingerprint(), massive.max_tokens,
                       max_length, written)
    return source, cache_dir() / "massive" / f"neutral-{key[:24]}.json"


def calibrate_items(
    lm: LoadedModel, items: Sequence[TextItem], *, component: str, max_tokens: int, max_length: int,
    batch_size: int, **meta: Any,
) -> dict[str, Any]:
    """A calibration-only prefill of every layer over chat-formatted prompt + response texts -> a record
    (max |h| and the peak token's position per dim, tokens and texts seen, ``meta``)."""
    tracker = MaxAbsTracker(range(lm.n_layers), max_tokens)
    calibrate_encoded(lm.model, encode_items(lm, items, max_length), tracker, component=component,
                      batch_size=batch_size, pad_id=pad_id_of(lm.tokenizer), device=lm.device)
    return calibration_record(tracker.max_abs(), tracker.n_tokens, tracker.peak_positions(),
                              n_texts=tracker.n_texts, component=component, **meta)


def calibration_label(record: dict[str, Any] | None) -> str:
    """``neutral:<set>`` or ``passive`` (records written before neutral calibration existed are passive)."""
    if record is None:
        return "none"
    return f"neutral:{record['set']}" if record.get("calibration") == "neutral" else "passive"


def check_calibration(settings: Any, prefix: str = "inference.") -> None:
    """``calibration`` / ``massive.*`` before the model loads (a neutral set must resolve); ``prefix`` names the
    keys in errors (``inference.`` for infer/analyze, none for generate)."""
    if settings.calibration not in CALIBRATIONS:
        raise ConfigError(f"{prefix}calibration", f"{settings.calibration!r} is not one of {', '.join(CALIBRATIONS)}")
    if not settings.massive.ratio > 1:
        raise ConfigError(f"{prefix}massive.ratio", f"{settings.massive.ratio} must be > 1 (default 100)")
    for key in ("max_tokens", "max_new_tokens"):
        if getattr(settings.massive, key) < 1:
            raise ConfigError(f"{prefix}massive.{key}", f"{getattr(settings.massive, key)} must be >= 1")
    if settings.calibration == "neutral":
        load_calibration_source(settings.massive.set, key=f"{prefix}massive.set")


def passive_vs_neutral(passive: dict[str, Any] | None, neutral: dict[str, Any], ratio: float) -> list[dict[str, Any]]:
    """Per layer both calibrations cover: the massive dims each finds (as "507,12" strings, for a table)."""
    if passive is None:
        return []
    a, b = detect_massive_dims(record_max_abs(passive), ratio), detect_massive_dims(record_max_abs(neutral), ratio)
    return [{"layer": layer, "neutral_dims": ",".join(map(str, b[layer])),
             "passive_dims": ",".join(map(str, a[layer])), "same": a[layer] == b[layer]}
            for layer in sorted(set(a) & set(b))]


def max_ratios(record: dict[str, Any]) -> dict[int, Tensor]:
    """Per layer, every dim's max |h| over the median dim's (NaN for a layer never calibrated)."""
    return {layer: ratios_to_median(m) for layer, m in record_max_abs(record).items()}


def calibration_note(record: dict[str, Any], rows: list[dict[str, Any]], ratio: float, model: str,
                     compare: list[dict[str, Any]], passive: dict[str, Any] | None) -> str:
    """The verdict of a neutral calibration: each massive dim, its layers, largest ratio and peak positions, and
    how the passive calibration compares."""
    lines = [f"Neutral calibration of {model} ({record.get('component')}) on {record.get('set')}: "
             f"{record.get('n_texts')} texts, {record.get('n_tokens')} tokens; a dim is massive where its max |h| "
             f"exceeds {ratio:g}x the median dim's."]
    for d in sorted({r["dim"] for r in rows}):
        mine = [r for r in rows if r["dim"] == d]
        top = max(mine, key=lambda r: r["ratio_to_median"])
        layers = [r["layer"] for r in mine]
        at = sorted({r["peak_position"] for r in mine if "peak_position" in r})
        lines.append(f"- dim {d}: massive at {len(layers)} layers ({layer_ranges(layers)}), up to "
                     f"{top['ratio_to_median']:.0f}x at layer {top['layer']}; its peak token sits at position(s) "
                     f"{at} of its text (0 = first token)")
    if not rows:
        lines.append("- no massive dim at any layer")
    if passive is not None:
        same = sum(r["same"] for r in compare)
        lines.append(f"The passive calibration ({passive.get('source', 'inference prefill')}) finds the same dims at "
                     f"{same} of {len(compare)} layers (tables/massive_passive_vs_neutral.json).")
    return "\n".join(lines) + "\n"


def layer_ranges(layers: Sequence[int]) -> str:
    """[2, 11, 12, 13] -> "2, 11-13" (in the layer DSL's range syntax)."""
    parts: list[list[int]] = []
    for layer in sorted(set(layers)):
        if parts and layer == parts[-1][1] + 1:
            parts[-1][1] = layer
        else:
            parts.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
