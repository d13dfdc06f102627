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


def max_abs_and_position(acts: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each dim's max |h| over tokens [D] and where it was: the token's position in its own text
    (0 = first real token, padding not counted) [D] long. Same input contract as ``max_abs_per_dim``."""
    m = max_abs_per_dim(acts, valid)  # validates shapes
    a = acts.detach().float().abs()
    if valid is not None:
        a = a * valid.to(device=a.device, dtype=a.dtype).unsqueeze(-1)
        positions = valid.to(device=a.device, dtype=torch.long).cumsum(-1) - 1
    else:
        positions = torch.arange(a.shape[-2], device=a.device).expand(a.shape[:-1])
    idx = a.reshape(-1, a.shape[-1]).argmax(dim=0)
    return m, positions.reshape(-1)[idx].cpu()


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


def ratios_to_median(max_abs: Tensor) -> Tensor:
    """Each dim's max |h| over the median dim's (NaN for a layer whose median is 0: never calibrated)."""
    m = torch.as_tensor(max_abs).float()
    median = float(m.median())
    return m / median if median > 0 else torch.full_like(m, float("nan"))


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
        self.n_texts = 0
        self._max: dict[int, Tensor] = {}
        self._peak: dict[int, Tensor] = {}  # position in its text of the token holding each dim's max

    @property
    def full(self) -> bool:
        return self.n_tokens >= self.max_tokens

    def update(self, layer: int, acts: Tensor, valid: Tensor | None = None) -> None:
        m, pos = max_abs_and_position(acts, valid)
        m = m.cpu()
        prev = self._max.get(layer)
        if prev is None:
            self._max[layer], self._peak[layer] = m, pos
        else:
            self._peak[layer] = torch.where(m > prev, pos, self._peak[layer])
            self._max[layer] = torch.maximum(prev, m)

    def add_tokens(self, n: int, texts: int = 0) -> None:
        self.n_tokens += int(n)
        self.n_texts += int(texts)

    def max_abs(self) -> dict[int, Tensor]:
        return dict(self._max)

    def peak_positions(self) -> dict[int, Tensor]:
        return dict(self._peak)

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
                    self.add_tokens(int(v.sum()) if v is not None else h.shape[0] * h.shape[1], h.shape[0])

            return hook

        try:
            for layer in self.layers:
                handles.append(get_module(model, layer, component).register_forward_hook(make(layer)))
            yield
        finally:
            for handle in handles:
                handle.remove()


# ------------------------------------------------------------------------------- calibration records


def calibration_record(
    max_abs_by_layer: Mapping[int, Tensor],
    n_tokens: int,
    peak_positions: Mapping[int, Tensor] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """JSON-ready record: every dim's max |h| per layer (and, when given, the position in its text of the
    token that held it), plus caller metadata (model, component, source, ...)."""
    layers: dict[str, Any] = {}
    for layer, m in sorted(max_abs_by_layer.items()):
        entry: dict[str, Any] = {"max_abs": [round(float(x), 6) for x in m.tolist()], "n_tokens": int(n_tokens)}
        if peak_positions is not None and layer in peak_positions:
            entry["peak_position"] = [int(p) for p in peak_positions[layer].tolist()]
        layers[str(layer)] = entry
    return {"version": CALIBRATION_VERSION, **meta, "n_tokens": int(n_tokens), "layers": layers}


def record_peak_positions(record: Mapping[str, Any]) -> dict[int, Tensor]:
    """Per-layer peak positions of a calibration record (layers recorded without them are absent)."""
    out = {}
    for key, entry in record.get("layers", {}).items():
        pos = entry.get("peak_position") if isinstance(entry, Mapping) else None
        if isinstance(pos, list) and pos:
            out[int(key)] = torch.tensor(pos, dtype=torch.long)
    return out


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


def summarize(
    max_abs_by_layer: Mapping[int, Tensor],
    ratio: float = DEFAULT_RATIO,
    peak_positions: Mapping[int, Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Rows (layer, dim, max_abs, ratio to median[, peak_position]) of every massive dim, for a table."""
    rows = []
    for layer, m in sorted(max_abs_by_layer.items()):
        median = float(torch.as_tensor(m).float().median())
        peaks = (peak_positions or {}).get(layer)
        for d in massive_dims(m, ratio):
            row = {
                "layer": int(layer),
                "dim": d,
                "max_abs": float(m[d]),
                "ratio_to_median": float(m[d]) / median if median > 0 else float("inf"),
            }
            if peaks is not None:
                row["peak_position"] = int(peaks[d])
            rows.append(row)
    return rows
