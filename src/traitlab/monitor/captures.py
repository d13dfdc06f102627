"""Captured per-token activations on disk: one checksummed safetensors file per text plus a manifest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from traitlab.core.analysis import project_tokens
from traitlab.core.massive import MaxAbsTracker
from traitlab.data.texts import TextItem
from traitlab.errors import ConfigError, DataError
from traitlab.io import load_tensors, read_json, save_tensors
from traitlab.models.encoding import Encoded
from traitlab.monitor.records import build_record
from traitlab.monitor.scoring import Scored
from traitlab.monitor.vectors import TraitVector, vectors_by_layer


def layer_key(layer: int) -> str:
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


def load_capture(root: Path, entry: dict[str, Any], layers: Sequence[int]) -> dict[int, Tensor]:
    path = root / entry["file"]
    tensors, _ = load_tensors(path)
    out = {}
    for layer in layers:
        a = tensors.get(layer_key(layer))
        if a is None or a.dim() != 2 or a.shape[0] != len(entry["token_ids"]):
            raise DataError(path, f"no [tokens, D] activations for layer {layer} (has {sorted(tensors)})")
        out[layer] = a
    return out


def capture_sink(
    root: Path,
    items: Sequence[TextItem],
    encoded: Sequence[Encoded],
    files: Sequence[str],
    component: str,
    tracker: MaxAbsTracker | None,
) -> Callable[[int, dict[int, Tensor]], None]:
    """The ``sink`` of ``capture_encoded``: one checksummed file per text; the tracker listens in until full."""

    def sink(i: int, acts: dict[int, Tensor]) -> None:
        tensors = {layer_key(layer): a for layer, a in acts.items()}
        tensors["input_ids"] = torch.tensor(encoded[i].ids, dtype=torch.long)
        save_tensors(root / files[i], tensors, {"prompt_id": items[i].id, "component": component})
        if tracker is not None and not tracker.full:
            for layer, a in acts.items():
                tracker.update(layer, a)
            tracker.add_tokens(len(encoded[i].ids))

    return sink


def manifest_items(
    items: Sequence[TextItem], encoded: Sequence[Encoded], files: Sequence[str], tokens: Sequence[list[str]]
) -> list[dict[str, Any]]:
    return [
        {
            "id": it.id,
            "prompt": it.prompt,
            "system_prompt": it.system_prompt,
            "response": it.response,
            "file": f,
            "token_ids": e.ids,
            "tokens": toks,
            "n_prompt_tokens": e.prompt_len,
        }
        for it, e, f, toks in zip(items, encoded, files, tokens, strict=True)
    ]


def track_captures(loaded: Sequence[dict[int, Tensor]], layers: Sequence[int], max_tokens: int) -> MaxAbsTracker:
    """Massive calibration from captured activations (when the model's stored calibration lacks a layer)."""
    tracker = MaxAbsTracker(layers, max_tokens)
    for acts in loaded:
        if tracker.full:
            break
        for layer in layers:
            tracker.update(layer, acts[layer])
        tracker.add_tokens(next(iter(acts.values())).shape[0])
    return tracker


def reproject_records(
    manifest: dict[str, Any],
    loaded: Sequence[dict[int, Tensor]],
    vectors: Sequence[TraitVector],
    *,
    source: str,
    score_mode: str,
    centered: bool,
    clean_massive: bool,
) -> list[dict[str, Any]]:
    """Records of captured texts scored offline: the hooks' math (core.analysis.project_tokens) on disk data."""
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
                model=manifest["model"],
                source=source,
                score_mode=score_mode,
                centered=centered,
                clean_massive=clean_massive,
            )
        )
    return records
