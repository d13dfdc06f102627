"""Massive activations: the few hidden dims whose values are ~100x larger than the rest (Sun et al. 2024).

Such dims dominate every dot product with the residual stream, so a projection score can mostly
measure "how big is dim 447 here" rather than the trait. Detection is per layer: take each dim's max
|h| over real tokens, and call a dim massive when that max exceeds ``ratio`` x the median dim's max.

The calibration record (plain JSON data) keeps every dim's max |h|, not only the verdict, so the
ratio can be changed later without running the model again. Pure torch; file IO is the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from traitlab.core.components import get_module
from traitlab.errors import TraitlabError

DEFAULT_RATIO = 100.0
DEFAULT_MAX_TOKENS = 5000
CALIBRATION_VERSION = 1


class MassiveError(TraitlabError, ValueError):
    """Bad input to massive-activation detection (shape, ratio, malformed calibration record)."""


def max_abs_per_dim(acts: Tensor, valid: Tensor | None = None) -> Tensor:
    """Max |h| of each dim over all tokens: [..., D] -> [D] float32; ``valid`` [...] masks out padding."""
    if acts.dim() < 2:
        raise MassiveError(f"max_abs_per_dim: expected activations [..., tokens, D], got {list(acts.shape)}")
    a = acts.detach().float().abs()
    if valid is not None:
        if valid.shape != a.shape[:-1]:
            raise MassiveError(
                f"max_abs_per_dim: valid has shape {list(valid.shape)}, expected {list(a.shape[:-1])}"
            )
        a = a * valid.to(device=a.device, dtype=a.dtype).unsqueeze(-1)  # |h| >= 0, so 0 never wins a max
    return a.reshape(-1, a.shape[-1]).amax(dim=0)


def massive_dims(max_abs: Tensor, ratio: float = DEFAULT_RATIO) -> list[int]:
    """Dims whose max |h| is more than ``ratio`` x the median dim's max |h|, sorted by index."""
    if not ratio > 0:
        raise MassiveError(f"massive_dims: ratio must be > 0, got {ratio}")
    m = torch.as_tensor(max_abs).float()
    if m.dim() != 1 or m.numel() == 0:
        raise MassiveError(f"massive_dims: expected a non-empty [D] vector of max |h|, got {list(m.shape)}")
    median = float(m.median())
    if median <= 0:
        return []  # an all-zero (never calibrated) layer has no outliers to speak of
    return torch.nonzero(m > ratio * median).flatten().tolist()


def detect_massive_dims(
    max_abs_by_layer: Mapping[int, Tensor], ratio: float = DEFAULT_RATIO
) -> dict[int, list[int]]:
    return {int(layer): massive_dims(m, ratio) for layer, m in sorted(max_abs_by_layer.items())}


def zero_dims(vector: Tensor, dims: Sequence[int]) -> Tensor:
    """Copy of ``vector`` [D] with ``dims`` set to 0 (projection onto it then ignores those dims)."""
    out = vector.detach().clone()
    if dims:
        idx = torch.as_tensor(list(dims), dtype=torch.long)
        if int(idx.min()) < 0 or int(idx.max()) >= out.shape[-1]:
            raise MassiveError(
                f"zero_dims: dims {list(dims)[:8]} out of range for a vector of {out.shape[-1]} dims"
            )
        out[..., idx] = 0
    if not bool(out.abs().sum() > 0):
        raise MassiveError(
            "zero_dims: the vector lies entirely in the massive dims; nothing is left to project on"
        )
    return out


class MaxAbsTracker:
    """Running per-dim max |h| for several layers, until ``max_tokens`` real tokens have been seen."""

    def __init__(self, layers: Sequence[int], max_tokens: int = DEFAULT_MAX_TOKENS):
        if not layers:
            raise MassiveError("MaxAbsTracker: layers is empty")
        if max_tokens < 1:
            raise MassiveError(f"MaxAbsTracker: max_tokens must be >= 1, got {max_tokens}")
        self.layers = sorted(set(int(x) for x in layers))
        self.max_tokens = max_tokens
        self.n_tokens = 0
        self._max: dict[int, Tensor] = {}

    @property
    def full(self) -> bool:
        return self.n_tokens >= self.max_tokens

    def update(self, layer: int, acts: Tensor, valid: Tensor | None = None) -> None:
        m = max_abs_per_dim(acts, valid).cpu()
        prev = self._max.get(layer)
        self._max[layer] = m if prev is None else torch.maximum(prev, m)

    def add_tokens(self, n: int) -> None:
        self.n_tokens += int(n)

    def max_abs(self) -> dict[int, Tensor]:
        return dict(self._max)

    @contextmanager
    def hooks(
        self, model: nn.Module, component: str = "residual", valid: Tensor | None = None
    ) -> Iterator[None]:
        """Feed this tracker from forward hooks during one forward call; ``valid`` [B, S] marks real tokens.

        Counts the batch's tokens once (on the first layer) so the budget is in tokens, not layer visits.
        """
        first = self.layers[0]
        handles = []

        def make(layer: int):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                h = output[0] if isinstance(output, tuple) else output
                if not isinstance(h, Tensor) or h.dim() != 3:
                    raise MassiveError(
                        f"massive calibration at layer {layer}: expected hidden states [B, S, D]"
                    )
                v = valid if valid is None or valid.shape == h.shape[:2] else valid[:, -h.shape[1] :]
                self.update(layer, h, v)
                if layer == first:
                    self.add_tokens(int(v.sum()) if v is not None else h.shape[0] * h.shape[1])

            return hook

        try:
            for layer in self.layers:
                handles.append(get_module(model, layer, component).register_forward_hook(make(layer)))
            yield
        finally:
            for handle in handles:
                handle.remove()


# ------------------------------------------------------------------------------- calibration records


def calibration_record(max_abs_by_layer: Mapping[int, Tensor], n_tokens: int, **meta: Any) -> dict[str, Any]:
    """JSON-ready record: every dim's max |h| per layer, plus caller metadata (model, component, ...)."""
    return {
        "version": CALIBRATION_VERSION,
        **meta,
        "layers": {
            str(layer): {"max_abs": [round(float(x), 6) for x in m.tolist()], "n_tokens": int(n_tokens)}
            for layer, m in sorted(max_abs_by_layer.items())
        },
    }


def record_max_abs(record: Mapping[str, Any]) -> dict[int, Tensor]:
    """Per-layer max |h| vectors of a calibration record; a malformed record raises MassiveError."""
    if not isinstance(record, Mapping) or record.get("version") != CALIBRATION_VERSION:
        raise MassiveError(
            f"calibration record: expected version {CALIBRATION_VERSION} with a 'layers' mapping"
        )
    layers = record.get("layers")
    if not isinstance(layers, Mapping):
        raise MassiveError("calibration record: 'layers' must map layer -> {'max_abs': [...]}")
    out = {}
    for key, entry in layers.items():
        values = entry.get("max_abs") if isinstance(entry, Mapping) else None
        if not isinstance(values, list) or not values:
            raise MassiveError(f"calibration record: layer {key} has no 'max_abs' list")
        out[int(key)] = torch.tensor(values, dtype=torch.float32)
    return out


def merge_records(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Layers of ``old`` are kept; ``new`` only adds the layers ``old`` lacks (a calibration never drifts)."""
    if old is None:
        return dict(new)
    merged = dict(old)
    merged["layers"] = {**dict(new.get("layers", {})), **dict(old.get("layers", {}))}
    return merged


def summarize(max_abs_by_layer: Mapping[int, Tensor], ratio: float = DEFAULT_RATIO) -> list[dict[str, Any]]:
    """Rows (layer, dim, max_abs, ratio to median) of every massive dim, for a table artifact."""
    rows = []
    for layer, m in sorted(max_abs_by_layer.items()):
        median = float(torch.as_tensor(m).float().median())
        for d in massive_dims(m, ratio):
            rows.append(
                {
                    "layer": int(layer),
                    "dim": d,
                    "max_abs": float(m[d]),
                    "ratio_to_median": float(m[d]) / median if median > 0 else float("inf"),
                }
            )
    return rows
