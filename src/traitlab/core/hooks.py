"""Forward hooks that read or edit one component's output: capture, steer, ablate, project, cap.

Every hook is a context manager: it registers on ``__enter__`` and removes every handle on ``__exit__``,
also when the body raises, so a model is never left steered by accident. An object may be entered again
after it exited (state starts fresh) but not while it is active.

Positions. A forward pre-hook on the trunk (the module that owns the decoder layers, reached by every
forward of the CausalLM and by callers that run the trunk alone to skip the LM head) records the 2D
``attention_mask`` of each forward call in a ``_ForwardContext``. From it every hook learns (a) which
positions are padding (edits skip them, projection scores there are 0) and (b) the absolute position of the
current chunk during KV-cached generation: ``offset = mask.shape[1] - seq_len`` (0 at prefill, then one more
per decode step). Positions are column indices of the padded batch, the same coordinates as capture spans.
Without a mask nothing is padding and the offset is the length of the KV cache passed in (0 for a plain
forward); this path matters because transformers' ``generate`` drops an all-ones mask, so unpadded decode
steps arrive with no mask at all. Only hooks that use positions (span captures, token ranges) read the
cache length: a steering hook's per-token cost is the add alone plus that one pre-hook.

Hooked outputs may be a Tensor ``[B, S, D]`` or a tuple whose first element is that Tensor; edits return
the same structure. Vectors are cast to the activation's device/dtype once per (device, dtype), not per
token. Scores, norms and captures are float32 and detached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from traitlab.core.components import base_model, component_dim, get_module
from traitlab.errors import TraitlabError

__all__ = [
    "POOLS",
    "AblationHook",
    "ActivationCappingHook",
    "CaptureHook",
    "HookError",
    "MultiLayerCapture",
    "MultiLayerProjection",
    "MultiLayerSteering",
    "PerPositionSteeringHook",
    "PerSampleSteering",
    "ProjectionHook",
    "SteeringHook",
]

POOLS = ("mean", "sum", "first", "last", "none")
CAPPING_MODES = ("floor", "ceiling")


class HookError(TraitlabError, ValueError):
    """A hook was given (or met at run time) a vector, layer, span or batch it cannot use."""


class _StopForward(Exception):
    """Raised after the deepest capture so upper layers and the LM head never run; swallowed by its owner.

    Not a TraitlabError on purpose: code that catches our errors must not swallow it.
    """

    def __init__(self, owner: object):
        super().__init__("capture finished; stopping the forward early")
        self.owner = owner


# --------------------------------------------------------------------------------------------- helpers


def _layer_module(model: nn.Module, layer: int, component: str) -> nn.Module:
    # components.get_module is the one source of truth for paths and the layer-range message.
    return get_module(model, layer, component)


def _as_vector(vector: Any, dim: int, who: str, *, unit: bool = False) -> Tensor:
    """A detached float32 copy of a 1D vector of width ``dim``; unit length when ``unit``."""
    if not isinstance(vector, Tensor):
        raise HookError(f"{who}: vector must be a torch.Tensor, got {type(vector).__name__}")
    if vector.dim() != 1:
        raise HookError(f"{who}: vector must be 1D [{dim}], got shape {list(vector.shape)}")
    if vector.shape[0] != dim:
        raise HookError(f"{who}: vector has {vector.shape[0]} dims but the component has {dim}")
    v = vector.detach().to(torch.float32).clone()
    if not bool(torch.isfinite(v).all()):
        raise HookError(f"{who}: vector contains NaN or inf")
    if unit:
        norm = float(torch.linalg.vector_norm(v))
        if norm < 1e-8:
            raise HookError(f"{who}: direction has zero norm ({norm:.3g}); expected a nonzero vector")
        v = v / norm
    return v


def _as_coefficient(value: Any, who: str, name: str = "coefficient") -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise HookError(f"{who}: {name} must be a number, got {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise HookError(f"{who}: {name} must be finite, got {out}")
    return out


class _Cast:
    """A float32 master tensor and its copies per (device, dtype), made on first use."""

    def __init__(self, master: Tensor):
        self.master = master
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._last: Tensor | None = None

    def like(self, h: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or h.dtype
        last = self._last  # the per-token path: the same device and dtype as the previous call
        if last is not None and last.dtype is dtype and last.device == h.device:
            return last
        key = (h.device, dtype)
        out = self._copies.get(key)
        if out is None:
            out = self._copies[key] = self.master.to(device=key[0], dtype=key[1])
        self._last = out
        return out


def _hidden(output: Any, who: str) -> Tensor:
    h = output[0] if isinstance(output, tuple) and output and isinstance(output[0], Tensor) else output
    if not isinstance(h, Tensor):
        raise HookError(
            f"{who}: hooked module returned {type(output).__name__}; expected a Tensor or a tuple"
        )
    if h.dim() != 3:
        raise HookError(f"{who}: expected hidden states [batch, seq, dim], got shape {list(h.shape)}")
    return h


def _replace_hidden(output: Any, new: Tensor) -> Any:
    if isinstance(output, Tensor):
        return new
    rest = tuple(output[1:])
    if hasattr(output, "_fields"):  # namedtuple
        return type(output)(new, *rest)
    return (new, *rest)


# ----------------------------------------------------------------------------------- forward context


class _ForwardContext:
    """Per-forward facts shared by a hook's module hooks: padding and the chunk's absolute offset.

    One forward pre-hook on the trunk (the module that owns the decoder layers) records them: every forward of
    the CausalLM passes through it, and so does a caller that runs the trunk alone. It is the only per-token
    cost besides the edit itself, so it stays small: the KV-cache length is read only for hooks that use
    absolute positions (``offsets=True``); for the others the offset is 0 when no mask is passed.
    """

    def __init__(self, model: nn.Module, *, offsets: bool):
        self._target = base_model(model)
        self._offsets = offsets
        self._handle: Any = None
        self._mask: Tensor | None = None
        self._cache_len = 0
        self._memo: dict[tuple[int, torch.device], tuple[int, Tensor | None]] = {}

    def attach(self) -> None:
        self._handle = self._target.register_forward_pre_hook(self._record, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._mask = None
        self._cache_len = 0
        self._memo.clear()

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        # Only a 2D [batch, total_len] mask says which tokens are padding; 4D masks are ignored.
        self._mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None
        self._cache_len = 0
        if self._mask is None and self._offsets:
            past = kwargs.get("past_key_values", args[3] if len(args) > 3 else None)
            get_len = getattr(past, "get_seq_length", None)
            self._cache_len = int(get_len()) if callable(get_len) else 0
        if self._memo:
            self._memo.clear()

    def positions(self, h: Tensor) -> tuple[int, Tensor | None]:
        """(absolute offset of this chunk, bool [B, S] of real tokens, or None when none is padding)."""
        if self._mask is None:
            return self._cache_len, None
        seq = h.shape[1]
        key = (seq, h.device)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        mask, batch = self._mask, h.shape[0]
        offset = mask.shape[1] - seq
        if mask.shape[0] != batch or offset < 0:
            raise HookError(
                f"attention_mask has shape {list(mask.shape)} but the hidden states are "
                f"[{batch}, {seq}, ...]; expected [batch, >= seq]"
            )
        valid = mask[:, offset:].to(device=h.device) != 0
        # One check per forward call (not per layer) lets unpadded batches skip the masking work.
        result = (offset, None if bool(valid.all()) else valid)
        self._memo[key] = result
        return result


# ------------------------------------------------------------------------------------------ base class


class _Hooks:
    """Registers ``_targets()`` on enter and always removes them on exit."""

    # True for hooks that read absolute positions (span captures, token ranges) during cached decoding.
    _uses_offsets = False

    def __init__(self, model: nn.Module):
        self._model = model
        self._ctx = _ForwardContext(model, offsets=self._uses_offsets)
        self._handles: list[Any] = []
        self._active = False

    _layers: Sequence[int]
    _component: str

    def _targets(self) -> list[tuple[nn.Module, Callable[..., Any]]]:
        return [
            (_layer_module(self._model, layer, self._component), self._make(layer)) for layer in self._layers
        ]

    def _make(self, layer: int) -> Callable[..., Any]:
        raise NotImplementedError

    def _reset(self) -> None:
        """Clear results of a previous use; called on every enter."""

    def __enter__(self):
        if self._active:
            raise HookError(f"{type(self).__name__} is already active; exit it before entering it again")
        self._reset()
        try:
            self._ctx.attach()
            for module, fn in self._targets():
                self._handles.append(module.register_forward_hook(fn))
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        self._active = False
        return isinstance(exc, _StopForward) and exc.owner is self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._ctx.detach()


class _EditHooks(_Hooks):
    """Hooks that replace the hidden states with ``_edit(layer, h, offset, valid)``."""

    def _make(self, layer: int) -> Callable[..., Any]:
        who = f"{type(self).__name__} at layer {layer}"

        ctx, edit = self._ctx, self._edit

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            # Called once per layer per token while generating: the common case (a bare [B, S, D] Tensor, no
            # padding mask) goes straight to the edit.
            if type(output) is Tensor and output.dim() == 3:
                if ctx._mask is None and not ctx._offsets:
                    return edit(layer, output, 0, None)
                return edit(layer, output, *ctx.positions(output))
            h = _hidden(output, who)
            offset, valid = ctx.positions(h)
            return _replace_hidden(output, edit(layer, h, offset, valid))

        return hook

    def _edit(self, layer: int, h: Tensor, offset: int, valid: Tensor | None) -> Tensor:
        raise NotImplementedError


def _masked(delta: Tensor, valid: Tensor | None) -> Tensor:
    """``delta`` [B or 1, S or 1, D] zeroed at pad positions."""
    return delta if valid is None else delta * valid.unsqueeze(-1).to(delta.dtype)


def _unit_coords(h: Tensor, unit: _Cast) -> Tensor:
    """<h, v̂> in float32, [B, S]; float32 so that an ablation leaves ~0 behind even in bf16."""
    return torch.matmul(h.float(), unit.like(h, torch.float32))


# ---------------------------------------------------------------------------------------------- capture


class _Pooler:
    """Pools one layer's hidden states over per-row spans as chunks arrive; keeps [B, D], not [B, S, D]."""

    def __init__(self, pool: str, spans: Tensor | None, who: str):
        self.pool, self.who = pool, who
        self._spans = _Cast(spans) if spans is not None else None
        self.reset()

    def reset(self) -> None:
        self._acc: Tensor | None = None
        self._count: Tensor | None = None  # positions pooled (mean/sum) or found (first/last), per row
        self._chunks: list[Tensor] = []

    def use_buffers(self, acc: Tensor, count: Tensor) -> None:
        """Accumulate into these zeroed [B, D] float32 and [B] long tensors (views of one shared block)."""
        self._acc, self._count = acc, count

    def add(self, h: Tensor, offset: int, valid: Tensor | None) -> None:
        h = h.detach()
        batch, seq, dim = h.shape
        if self.pool == "none":
            self._check_batch(batch, self._chunks[0].shape[0] if self._chunks else batch)
            self._chunks.append(h.to(torch.float32, copy=True))
            return
        if self._acc is None:
            self._acc = torch.zeros(batch, dim, device=h.device, dtype=torch.float32)
            self._count = torch.zeros(batch, device=h.device, dtype=torch.long)
        self._check_batch(batch, self._acc.shape[0])
        select = valid
        if self._spans is not None:
            spans = self._spans.like(h, torch.long)
            pos = torch.arange(offset, offset + seq, device=h.device)
            select = (pos >= spans[:, :1]) & (pos < spans[:, 1:])
            if valid is not None:
                select = select & valid
        if self.pool in ("mean", "sum"):
            if select is None:
                self._acc += h.sum(1, dtype=torch.float32)
                self._count += seq
            else:
                h32 = h.float()
                self._acc += torch.bmm(select.to(h32.dtype).unsqueeze(1), h32).squeeze(1)
                self._count += select.sum(1)
            return
        # first / last: gather one position per row; no host sync, rows with nothing here keep their value.
        rows = torch.arange(batch, device=h.device)
        if select is None:
            has = torch.ones(batch, dtype=torch.bool, device=h.device)
            idx = torch.full((batch,), 0 if self.pool == "first" else seq - 1, device=h.device)
        else:
            has = select.any(1)
            flipped = self.pool == "last"
            picks = (select.flip(1) if flipped else select).to(torch.uint8).argmax(1)
            idx = seq - 1 - picks if flipped else picks
        take = has & (self._count == 0) if self.pool == "first" else has
        self._acc.copy_(torch.where(take.unsqueeze(1), h[rows, idx].float(), self._acc))
        self._count += has.long()

    def _check_batch(self, batch: int, expected: int) -> None:
        if self._spans is not None and batch != self._spans.master.shape[0]:
            raise HookError(
                f"{self.who}: spans has {self._spans.master.shape[0]} rows but the batch has {batch}"
            )
        if batch != expected:
            raise HookError(
                f"{self.who}: batch size changed from {expected} to {batch} between forward calls"
            )

    def result(self) -> Tensor:
        if self.pool == "none":
            if not self._chunks:
                raise HookError(f"{self.who}: nothing captured; run a forward inside the with-block first")
            return torch.cat(self._chunks, dim=1)
        if self._acc is None or self._count is None:
            raise HookError(f"{self.who}: nothing captured; run a forward inside the with-block first")
        if self.pool == "sum":
            return self._acc
        empty = (self._count == 0).nonzero().flatten().tolist()
        if empty:
            raise HookError(
                f"{self.who}: rows {empty[:8]} had no non-padding position inside their span; "
                f"expected each span [start, stop) to cover at least one real token"
            )
        return self._acc / self._count.unsqueeze(1) if self.pool == "mean" else self._acc


def _check_pool_and_spans(pool: str, spans: Tensor | None, who: str) -> Tensor | None:
    if pool not in POOLS:
        raise HookError(f"{who}: unknown pool {pool!r}; expected one of {'|'.join(POOLS)}")
    if spans is None:
        return None
    if pool == "none":
        raise HookError(
            f"{who}: spans are not used with pool='none' (it returns every position); pass spans=None"
        )
    if not isinstance(spans, Tensor) or spans.dim() != 2 or spans.shape[1] != 2:
        shape = list(spans.shape) if isinstance(spans, Tensor) else type(spans).__name__
        raise HookError(f"{who}: spans must be a LongTensor [batch, 2] of [start, stop), got {shape}")
    if spans.dtype.is_floating_point or spans.dtype == torch.bool:
        raise HookError(f"{who}: spans must be integer (LongTensor), got {spans.dtype}")
    spans = spans.detach().to(torch.long)
    bad = ((spans[:, 0] < 0) | (spans[:, 1] <= spans[:, 0])).nonzero().flatten().tolist()
    if bad:
        raise HookError(f"{who}: spans rows {bad[:8]} are not 0 <= start < stop: {spans[bad[0]].tolist()}")
    return spans


class MultiLayerCapture(_Hooks):
    """Pool one component at several layers in one pass; optionally stop the forward after the deepest.

    With ``stop_after_last=True`` the deepest hook raises a private exception after capturing and
    ``__exit__`` swallows exactly that one, so upper layers and the LM head never run (no logits). The
    forward must then be the LAST statement in the with-block: nothing after it runs.

    ``spans`` [B, 2] are per-row absolute [start, stop) columns of the padded batch (None: every real
    token); pad positions are never pooled. ``pool`` in mean|sum|first|last|none; ``none`` keeps [B, S, D].
    """

    _uses_offsets = True

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        component: str = "residual",
        spans: Tensor | None = None,
        pool: str = "mean",
        stop_after_last: bool = False,
    ):
        super().__init__(model)
        who = type(self).__name__
        layers = list(layers)
        if not layers:
            raise HookError(f"{who}: layers is empty; expected at least one layer index")
        for layer in layers:
            _layer_module(model, layer, component)  # fail fast on range / component
        if len(set(layers)) != len(layers):
            raise HookError(f"{who}: layers {layers} contain duplicates")
        spans = _check_pool_and_spans(pool, spans, who)
        self._layers, self._component = sorted(layers), component
        self._stop = stop_after_last
        self._pool = pool
        self._poolers = {layer: _Pooler(pool, spans, f"{who} at layer {layer}") for layer in self._layers}

    def _allocate(self, h: Tensor) -> None:
        """Every layer's accumulators as views of one block, made when the first hook fires.

        One allocation instead of one per layer in the middle of the forward: small long-lived tensors placed
        between a forward's large short-lived ones keep glibc from reusing the freed space, which raised the
        process's peak memory of a 30-layer capture 2.5x above the forward's own (measured on SmolLM2).
        """
        batch, _, dim = h.shape
        n = len(self._layers)
        acc = torch.zeros(n, batch, dim, device=h.device, dtype=torch.float32)
        count = torch.zeros(n, batch, device=h.device, dtype=torch.long)
        for i, layer in enumerate(self._layers):
            self._poolers[layer].use_buffers(acc[i], count[i])

    def _reset(self) -> None:
        for pooler in self._poolers.values():
            pooler.reset()

    def _make(self, layer: int) -> Callable[..., Any]:
        pooler = self._poolers[layer]
        stop_here = self._stop and layer == self._layers[-1]

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            h = _hidden(output, pooler.who)
            if pooler._acc is None and self._pool != "none":
                self._allocate(h)
            pooler.add(h, *self._ctx.positions(h))
            if stop_here:
                raise _StopForward(self)

        return hook

    def get(self, layer: int) -> Tensor:
        """Pooled activations [B, D] (or [B, S, D] for pool='none'), float32."""
        if layer not in self._poolers:
            raise HookError(
                f"{type(self).__name__}: layer {layer} was not captured; captured: {self._layers}"
            )
        return self._poolers[layer].result()

    def get_all(self) -> dict[int, Tensor]:
        return {layer: self.get(layer) for layer in self._layers}


class CaptureHook(MultiLayerCapture):
    """Pool one component at one layer inside the hook (see MultiLayerCapture for spans and pools)."""

    def __init__(
        self,
        model: nn.Module,
        layer: int,
        component: str = "residual",
        spans: Tensor | None = None,
        pool: str = "mean",
    ):
        super().__init__(model, [layer], component=component, spans=spans, pool=pool)
        self.layer = layer

    def get(self, layer: int | None = None) -> Tensor:  # type: ignore[override]
        return super().get(self.layer if layer is None else layer)


# ------------------------------------------------------------------------------------------- projection


class MultiLayerProjection(_Hooks):
    """Score hidden states on unit vectors inside the hook; only scores [B, S, T] and norms [B, S] leave it.

    Calls accumulate along S (a generate's prefill then each decode step). Pad positions score 0 and have
    norm 0. A 1D vector gives scores [B, S] (as ``h @ v̂``); a [T, D] matrix gives [B, S, T].
    """

    def __init__(self, model: nn.Module, vectors_by_layer: Mapping[int, Tensor], component: str = "residual"):
        super().__init__(model)
        who = type(self).__name__
        if not vectors_by_layer:
            raise HookError(f"{who}: vectors_by_layer is empty; expected {{layer: Tensor[T, D]}}")
        self._component = component
        self._layers = sorted(vectors_by_layer)
        self._units: dict[int, _Cast] = {}
        self._squeeze: dict[int, bool] = {}
        for layer in self._layers:
            _layer_module(model, layer, component)
            dim = component_dim(model, component, layer)
            vecs = vectors_by_layer[layer]
            lwho = f"{who} at layer {layer}"
            if not isinstance(vecs, Tensor) or vecs.dim() not in (1, 2):
                shape = list(vecs.shape) if isinstance(vecs, Tensor) else type(vecs).__name__
                raise HookError(f"{lwho}: vectors must be [T, {dim}] or [{dim}], got {shape}")
            rows = vecs.unsqueeze(0) if vecs.dim() == 1 else vecs
            if rows.shape[0] == 0:
                raise HookError(f"{lwho}: vectors has no rows; expected [T, {dim}] with T >= 1")
            units = torch.stack(
                [_as_vector(r, dim, f"{lwho} row {i}", unit=True) for i, r in enumerate(rows)]
            )
            self._units[layer] = _Cast(units.T.contiguous())  # [D, T]
            self._squeeze[layer] = vecs.dim() == 1
        self._scores: dict[int, list[Tensor]] = {}
        self._norms: dict[int, list[Tensor]] = {}

    def _reset(self) -> None:
        self._scores = {layer: [] for layer in self._layers}
        self._norms = {layer: [] for layer in self._layers}

    def _make(self, layer: int) -> Callable[..., Any]:
        who = f"{type(self).__name__} at layer {layer}"
        units, scores, norms = self._units[layer], self._scores, self._norms

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            h = _hidden(output, who)
            _, valid = self._ctx.positions(h)
            h32 = h.detach().float()
            s = torch.matmul(h32, units.like(h, torch.float32))
            n = torch.linalg.vector_norm(h32, dim=-1)
            if valid is not None:
                s = s * valid.unsqueeze(-1)
                n = n * valid
            previous = scores[layer]
            if previous and previous[0].shape[0] != s.shape[0]:
                raise HookError(f"{who}: batch size changed from {previous[0].shape[0]} to {s.shape[0]}")
            previous.append(s)
            norms[layer].append(n)

        return hook

    def _collected(self, store: dict[int, list[Tensor]], layer: int) -> Tensor:
        if layer not in self._units:
            raise HookError(
                f"{type(self).__name__}: layer {layer} was not projected; projected: {self._layers}"
            )
        chunks = store.get(layer) or []
        if not chunks:
            raise HookError(f"{type(self).__name__} at layer {layer}: nothing scored; run a forward first")
        return torch.cat(chunks, dim=1)

    def scores(self, layer: int) -> Tensor:
        out = self._collected(self._scores, layer)
        return out.squeeze(-1) if self._squeeze[layer] else out

    def norms(self, layer: int) -> Tensor:
        return self._collected(self._norms, layer)

    def all_scores(self) -> dict[int, Tensor]:
        return {layer: self.scores(layer) for layer in self._layers}

    def all_norms(self) -> dict[int, Tensor]:
        return {layer: self.norms(layer) for layer in self._layers}


class ProjectionHook(MultiLayerProjection):
    """Projection at one layer: ``scores()`` [B, S, T] (or [B, S] for a 1D vector), ``norms()`` [B, S]."""

    def __init__(self, model: nn.Module, layer: int, vectors: Tensor, component: str = "residual"):
        super().__init__(model, {layer: vectors}, component=component)
        self.layer = layer

    def scores(self, layer: int | None = None) -> Tensor:  # type: ignore[override]
        return super().scores(self.layer if layer is None else layer)

    def norms(self, layer: int | None = None) -> Tensor:  # type: ignore[override]
        return super().norms(self.layer if layer is None else layer)


# --------------------------------------------------------------------------------------------- steering


def _summed_deltas(
    model: nn.Module, configs: Sequence[Sequence[Any]], component: str, who: str
) -> dict[int, Tensor]:
    """{layer: sum of coef * v} over (layer, vector, coefficient) configs, float32."""
    deltas: dict[int, Tensor] = {}
    for i, config in enumerate(configs):
        if len(config) != 3:
            raise HookError(
                f"{who}: config {i} must be (layer, vector, coefficient), got {len(config)} items"
            )
        layer, vector, coefficient = config
        _layer_module(model, layer, component)
        v = _as_vector(vector, component_dim(model, component, layer), f"{who} config {i} (layer {layer})")
        delta = _as_coefficient(coefficient, f"{who} config {i}") * v
        deltas[layer] = deltas[layer] + delta if layer in deltas else delta
    return deltas


class MultiLayerSteering(_EditHooks):
    """Add ``coefficient * vector`` at several layers in one pass; configs sharing a layer are summed."""

    def __init__(
        self, model: nn.Module, configs: Sequence[tuple[int, Tensor, float]], component: str = "residual"
    ):
        super().__init__(model)
        who = type(self).__name__
        if not configs:
            raise HookError(f"{who}: configs is empty; expected [(layer, vector, coefficient), ...]")
        self._component = component
        self._deltas = {
            layer: _Cast(d) for layer, d in _summed_deltas(model, configs, component, who).items()
        }
        self._layers = sorted(self._deltas)

    def _edit(self, layer: int, h: Tensor, offset: int, valid: Tensor | None) -> Tensor:
        delta = self._deltas[layer].like(h)
        return h + delta if valid is None else h + _masked(delta, valid)


class SteeringHook(MultiLayerSteering):
    """``h += coefficient * vector`` (vector as given, not renormalised) at every non-pad position."""

    def __init__(
        self,
        model: nn.Module,
        layer: int,
        vector: Tensor,
        coefficient: float = 1.0,
        component: str = "residual",
    ):
        super().__init__(model, [(layer, vector, coefficient)], component=component)


class PerPositionSteeringHook(_EditHooks):
    """Steer only absolute positions in ``token_range = (start, stop)``; stop None means open-ended.

    Positions count columns of the padded input and keep counting through KV-cached decode steps.
    """

    _uses_offsets = True

    def __init__(
        self,
        model: nn.Module,
        layer: int,
        vector: Tensor,
        coefficient: float,
        token_range: tuple[int, int | None],
        component: str = "residual",
    ):
        super().__init__(model)
        who = f"{type(self).__name__} at layer {layer}"
        _layer_module(model, layer, component)
        v = _as_vector(vector, component_dim(model, component, layer), who)
        self._delta = _Cast(_as_coefficient(coefficient, who) * v)
        try:
            start, stop = token_range
        except (TypeError, ValueError):
            raise HookError(f"{who}: token_range must be (start, stop), got {token_range!r}") from None
        bad_stop = stop is not None and (not isinstance(stop, int) or stop <= start)
        if not isinstance(start, int) or start < 0 or bad_stop:
            raise HookError(
                f"{who}: token_range {token_range!r} must satisfy 0 <= start < stop (stop may be None)"
            )
        self._range = (start, stop)
        self._layers, self._component = [layer], component

    def _edit(self, layer: int, h: Tensor, offset: int, valid: Tensor | None) -> Tensor:
        start, stop = self._range
        seq = h.shape[1]
        if offset >= (stop if stop is not None else offset + seq) or offset + seq <= start:
            return h  # this chunk lies wholly outside the range
        pos = torch.arange(offset, offset + seq, device=h.device)
        inside = pos >= start if stop is None else (pos >= start) & (pos < stop)
        keep = inside.unsqueeze(0) if valid is None else inside & valid
        return h + _masked(self._delta.like(h), keep)


class AblationHook(_EditHooks):
    """Project a direction out: ``h <- h - (h . r̂) r̂`` at non-pad positions."""

    def __init__(self, model: nn.Module, layer: int, direction: Tensor, component: str = "residual"):
        super().__init__(model)
        who = f"{type(self).__name__} at layer {layer}"
        _layer_module(model, layer, component)
        self._unit = _Cast(_as_vector(direction, component_dim(model, component, layer), who, unit=True))
        self._layers, self._component = [layer], component

    def _edit(self, layer: int, h: Tensor, offset: int, valid: Tensor | None) -> Tensor:
        coords = _masked(_unit_coords(h, self._unit).unsqueeze(-1), valid)
        return (h.float() - coords * self._unit.like(h, torch.float32)).to(h.dtype)


class ActivationCappingHook(_EditHooks):
    """Clamp the coordinate along v̂: floor ``h + max(0, tau - <h,v̂>) v̂``; ceiling ``h - max(0, <h,v̂> - tau) v̂``."""

    def __init__(
        self,
        model: nn.Module,
        layer: int,
        vector: Tensor,
        threshold: float,
        component: str = "residual",
        mode: str = "floor",
    ):
        super().__init__(model)
        who = f"{type(self).__name__} at layer {layer}"
        if mode not in CAPPING_MODES:
            raise HookError(f"{who}: unknown mode {mode!r}; expected one of {'|'.join(CAPPING_MODES)}")
        _layer_module(model, layer, component)
        self._unit = _Cast(_as_vector(vector, component_dim(model, component, layer), who, unit=True))
        self._tau = _as_coefficient(threshold, who, "threshold")
        self._mode = mode
        self._layers, self._component = [layer], component

    def _edit(self, layer: int, h: Tensor, offset: int, valid: Tensor | None) -> Tensor:
        coords = _unit_coords(h, self._unit)
        shift = (
            (self._tau - coords).clamp_min(0) if self._mode == "floor" else -(coords - self._tau).clamp_min(0)
        )
        shift = _masked(shift.unsqueeze(-1), valid)
        return (h.float() + shift * self._unit.like(h, torch.float32)).to(h.dtype)


class PerSampleSteering(_EditHooks):
    """A different (layer, vector, coefficient) per batch row; rows without a config are unsteered.

    configs are (layer, vector, coefficient, row); several may hit one row (summed). One [B, D] delta per
    layer is built on construction. When the caller splits the batch (e.g. on OOM) it must run each
    sub-batch inside ``with hook.rows(idx):`` so row i of the sub-batch gets ``delta[idx[i]]``; a running
    batch whose size differs from the selected rows fails instead of misassigning rows.
    """

    def __init__(
        self,
        model: nn.Module,
        configs: Sequence[tuple[int, Tensor, float, int]],
        batch_size: int,
        component: str = "residual",
    ):
        super().__init__(model)
        who = type(self).__name__
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise HookError(f"{who}: batch_size must be a positive int, got {batch_size!r}")
        if not configs:
            raise HookError(f"{who}: configs is empty; expected [(layer, vector, coefficient, row), ...]")
        deltas: dict[int, Tensor] = {}
        for i, config in enumerate(configs):
            if len(config) != 4:
                raise HookError(
                    f"{who}: config {i} must be (layer, vector, coefficient, row), got {len(config)} items"
                )
            layer, vector, coefficient, row = config
            if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < batch_size:
                raise HookError(
                    f"{who}: config {i} row {row!r} is out of range; expected 0..{batch_size - 1}"
                )
            _layer_module(model, layer, component)
            dim = component_dim(model, component, layer)
            v = _as_vector(vector, dim, f"{who} config {i} (layer {layer})")
            if layer not in deltas:
                deltas[layer] = torch.zeros(batch_size, dim, dtype=torch.float32, device=v.device)
            deltas[layer][row] += _as_coefficient(coefficient, f"{who} config {i}") * v.to(
                deltas[layer].device
            )
        self._deltas = {layer: _Cast(d) for layer, d in deltas.items()}
        self._layers, self._component = sorted(deltas), component
        self._batch_size = batch_size
        self._rows: Tensor | None = None
        self._row_cache: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    @contextmanager
    def rows(self, idx: Sequence[int] | slice) -> Iterator[PerSampleSteering]:
        """Apply ``delta[idx]`` to the sub-batch run inside this block (nested blocks restore on exit)."""
        selected = torch.arange(self._batch_size)[idx] if isinstance(idx, slice) else self._row_index(idx)
        if selected.numel() == 0:
            raise HookError(
                f"{type(self).__name__}.rows: {idx!r} selects no rows of batch_size {self._batch_size}"
            )
        previous = self._rows
        self._rows = selected
        self._row_cache.clear()
        try:
            yield self
        finally:
            self._rows = previous
            self._row_cache.clear()

    def _row_index(self, idx: Sequence[int]) -> Tensor:
        items = idx.tolist() if isinstance(idx, Tensor) else list(idx)
        bad = [
            i for i in items if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self._batch_size
        ]
        if bad:
            raise HookError(
                f"{type(self).__name__}.rows: indices {bad[:8]} are not in 0..{self._batch_size - 1}"
            )
        return torch.tensor(items, dtype=torch.long)

    def _edit(self, layer: int, h: Tensor, offset: int, valid: Tensor | None) -> Tensor:
        expected = self._batch_size if self._rows is None else self._rows.numel()
        if h.shape[0] != expected:
            how = "hook.rows(idx)" if self._rows is None else f"hook.rows(...) ({expected} rows)"
            raise HookError(
                f"{type(self).__name__} at layer {layer}: running batch has {h.shape[0]} rows but "
                f"{how} selects {expected}; run each sub-batch inside hook.rows(idx) with matching rows"
            )
        key = (layer, h.device, h.dtype)
        delta = self._row_cache.get(key)
        if delta is None:
            full = self._deltas[layer].like(h)
            delta = full if self._rows is None else full[self._rows.to(h.device)]
            delta = self._row_cache[key] = delta.unsqueeze(1)  # [B, 1, D]
        return h + _masked(delta, valid)
