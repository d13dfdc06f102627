"""Hooks checked against manual computations on the tiny random Llama: raw torch hooks patch or record the
same layer by hand, and every hook result must match them (padding, KV-cached decode, split batches)."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from traitlab.core.components import get_module
from traitlab.core.hooks import (
    AblationHook,
    ActivationCappingHook,
    CaptureHook,
    HookError,
    MultiLayerCapture,
    MultiLayerProjection,
    MultiLayerSteering,
    PerPositionSteeringHook,
    PerSampleSteering,
    ProjectionHook,
    SteeringHook,
)
from traitlab.errors import ModelError, TraitlabError

D = 32  # tiny_llama hidden size


def _ids(seed: int, batch: int, seq: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, seq), generator=g)


def _vec(seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed)) * scale


def _left_padded() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows, real lengths 5 and 8, left-padded to 8: (input_ids, attention_mask, position_ids)."""
    ids = _ids(1, 2, 8)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0
    ids[0, :3] = 5  # a real token id under a 0 mask, so pad positions carry nonzero states
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _out(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _record(model, layer: int):
    """Raw torch hook keeping every output of decoder layer ``layer`` (after hooks registered before it)."""
    seen: list[torch.Tensor] = []
    handle = get_module(model, layer).register_forward_hook(
        lambda m, a, o: seen.append(_out(o).detach().clone())
    )
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def _patch(model, layer: int, fn):
    """Raw torch hook replacing decoder layer ``layer``'s hidden states with fn(h)."""

    def hook(module, args, output):
        return (fn(output[0]), *output[1:]) if isinstance(output, tuple) else fn(output)

    handle = get_module(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _hook_snapshot(model) -> dict[int, tuple]:
    return {
        id(m): (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._forward_hooks_with_kwargs))
        for m in model.modules()
    }


@torch.no_grad()
def _logits(model, ids, mask=None, pos=None):
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


# ------------------------------------------------------------------------------------------------ capture


@torch.no_grad()
def test_capture_pools_spans_inside_hook_with_left_padding(tiny_llama):
    ids, mask, pos = _left_padded()
    hs = tiny_llama(
        input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True
    ).hidden_states
    ref = hs[3]  # output of decoder layer 2
    spans = torch.tensor([[4, 7], [1, 8]])
    results = {}
    for pool in ("mean", "sum", "first", "last"):
        with CaptureHook(tiny_llama, 2, spans=spans, pool=pool) as cap:
            tiny_llama(input_ids=ids, attention_mask=mask, position_ids=pos)
        results[pool] = cap.get()
        assert results[pool].shape == (2, D) and results[pool].dtype == torch.float32
    for r, (a, b) in enumerate(spans.tolist()):
        torch.testing.assert_close(results["mean"][r], ref[r, a:b].mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(results["sum"][r], ref[r, a:b].sum(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(results["first"][r], ref[r, a], atol=1e-5, rtol=0)
        torch.testing.assert_close(results["last"][r], ref[r, b - 1], atol=1e-5, rtol=0)
    # No spans: every real token, pads skipped (row 0 has 3 pads); a span over pads only pools its real part.
    with (
        CaptureHook(tiny_llama, 2, pool="mean") as cap,
        CaptureHook(tiny_llama, 2, spans=torch.tensor([[0, 5], [0, 2]]), pool="first") as first,
    ):
        tiny_llama(input_ids=ids, attention_mask=mask, position_ids=pos)
    torch.testing.assert_close(cap.get()[0], ref[0, 3:].mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(cap.get()[1], ref[1].mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(first.get()[0], ref[0, 3], atol=1e-5, rtol=0)


@torch.no_grad()
def test_capture_pool_none_and_empty_span(tiny_llama):
    ids = _ids(2, 2, 6)
    hs = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states
    with CaptureHook(tiny_llama, 0, pool="none") as cap:
        tiny_llama(input_ids=ids)
    torch.testing.assert_close(cap.get(), hs[1], atol=1e-6, rtol=0)
    ids, mask, pos = _left_padded()
    with CaptureHook(tiny_llama, 1, spans=torch.tensor([[0, 3], [0, 3]])) as cap:  # row 0: pads only
        tiny_llama(input_ids=ids, attention_mask=mask, position_ids=pos)
    with pytest.raises(HookError, match=r"rows \[0\]"):
        cap.get()


@torch.no_grad()
def test_multilayer_capture_stop_after_last_skips_upper_layers_and_lm_head(tiny_llama):
    ids = _ids(3, 2, 7)
    spans = torch.tensor([[2, 5], [0, 7]])
    calls = {"lm_head": 0, "layer3": 0}
    h1 = tiny_llama.lm_head.register_forward_hook(
        lambda *_: calls.__setitem__("lm_head", calls["lm_head"] + 1)
    )
    h2 = get_module(tiny_llama, 3).register_forward_hook(
        lambda *_: calls.__setitem__("layer3", calls["layer3"] + 1)
    )
    try:
        with MultiLayerCapture(tiny_llama, [2, 0], spans=spans) as full:
            tiny_llama(input_ids=ids)
        assert calls == {"lm_head": 1, "layer3": 1}
        reached_after_forward = False
        with MultiLayerCapture(tiny_llama, [0, 2], spans=spans, stop_after_last=True) as fast:
            tiny_llama(input_ids=ids)
            reached_after_forward = True
        assert calls == {"lm_head": 1, "layer3": 1}  # neither ran again
        assert not reached_after_forward
    finally:
        h1.remove()
        h2.remove()
    assert set(fast.get_all()) == {0, 2}
    for layer in (0, 2):
        torch.testing.assert_close(fast.get(layer), full.get(layer), atol=0, rtol=0)
    hs = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(fast.get(2)[0], hs[3][0, 2:5].mean(0), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- steering


@torch.no_grad()
def test_steering_equals_manual_patch(tiny_llama):
    ids = _ids(4, 2, 6)
    v = _vec(10)
    plain = _logits(tiny_llama, ids)
    with _patch(tiny_llama, 1, lambda h: h + 3.0 * v):
        manual = _logits(tiny_llama, ids)
    with SteeringHook(tiny_llama, 1, v, coefficient=3.0):
        hooked = _logits(tiny_llama, ids)
    assert (manual - plain).abs().max() > 1e-2
    torch.testing.assert_close(hooked, manual, atol=1e-5, rtol=0)


@torch.no_grad()
def test_multilayer_steering_sums_configs_on_one_layer(tiny_llama):
    ids = _ids(5, 1, 6)
    v1, v2, v3 = _vec(11), _vec(12), _vec(13)
    with _patch(tiny_llama, 1, lambda h: h + 2.0 * v1 - 0.5 * v2), _patch(tiny_llama, 3, lambda h: h + v3):
        manual = _logits(tiny_llama, ids)
    with MultiLayerSteering(tiny_llama, [(1, v1, 2.0), (3, v3, 1.0), (1, v2, -0.5)]):
        hooked = _logits(tiny_llama, ids)
    torch.testing.assert_close(hooked, manual, atol=1e-5, rtol=0)


@torch.no_grad()
def test_steering_skips_pad_positions(tiny_llama):
    ids, mask, pos = _left_padded()
    v = _vec(14, 2.0)
    with SteeringHook(tiny_llama, 1, v, coefficient=1.5), _record(tiny_llama, 1) as seen:
        padded = _logits(tiny_llama, ids, mask, pos)
    with _record(tiny_llama, 1) as plain_seen:
        _logits(tiny_llama, ids, mask, pos)
    with SteeringHook(tiny_llama, 1, v, coefficient=1.5):
        single = _logits(tiny_llama, ids[:1, 3:])
    torch.testing.assert_close(padded[0, 3:], single[0], atol=1e-4, rtol=0)
    steered, plain = seen[0], plain_seen[0]
    torch.testing.assert_close(steered[0, :3], plain[0, :3], atol=0, rtol=0)  # pads untouched
    torch.testing.assert_close(steered[0, 3:] - plain[0, 3:], (1.5 * v).expand(5, D), atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize(
    "make",
    [
        lambda m, v: AblationHook(m, 1, v),
        lambda m, v: ActivationCappingHook(m, 1, v, 100.0, mode="floor"),
        lambda m, v: ActivationCappingHook(m, 1, v, -100.0, mode="ceiling"),
        lambda m, v: PerPositionSteeringHook(m, 1, v, 1.0, token_range=(0, None)),
        lambda m, v: PerSampleSteering(m, [(1, v, 1.0, 0), (1, v, 1.0, 1)], batch_size=2),
    ],
    ids=["ablation", "floor", "ceiling", "per_position", "per_sample"],
)
def test_edits_skip_pad_positions(tiny_llama, make):
    ids, mask, pos = _left_padded()
    with _record(tiny_llama, 1) as plain_seen:
        _logits(tiny_llama, ids, mask, pos)
    with make(tiny_llama, _vec(28, 2.0)), _record(tiny_llama, 1) as seen:
        _logits(tiny_llama, ids, mask, pos)
    torch.testing.assert_close(seen[0][0, :3], plain_seen[0][0, :3], atol=0, rtol=0)
    assert (seen[0][:, 3:] - plain_seen[0][:, 3:]).abs().amax(-1).min() > 1e-3


@torch.no_grad()
def test_per_position_steering_only_changes_range(tiny_llama):
    ids = _ids(6, 1, 8)
    v = _vec(15)
    plain = _logits(tiny_llama, ids)
    with _record(tiny_llama, 1) as plain_seen:
        _logits(tiny_llama, ids)
    with PerPositionSteeringHook(tiny_llama, 1, v, 2.0, token_range=(3, 5)), _record(tiny_llama, 1) as seen:
        steered = _logits(tiny_llama, ids)
    diff = seen[0] - plain_seen[0]
    expected = torch.zeros_like(diff)
    expected[:, 3:5] = 2.0 * v
    torch.testing.assert_close(diff, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        steered[:, :3], plain[:, :3], atol=0, rtol=0
    )  # causal: earlier positions identical
    assert (steered[:, 3:] - plain[:, 3:]).abs().amax(-1).min() > 1e-3


_GREEDY = dict(
    do_sample=False, max_new_tokens=4, min_new_tokens=4, return_dict_in_generate=True, output_logits=True
)


@torch.no_grad()
@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "left_padded"])
def test_per_position_steering_kv_cached_generate_matches_recomputation(tiny_llama, padded):
    # transformers drops an all-ones mask in generate, so the unpadded case runs on the cache-length offset
    # and the padded one on mask.shape[1] - seq_len.
    ids, mask, _ = _left_padded() if padded else (_ids(7, 1, 8), torch.ones(1, 8, dtype=torch.long), None)
    v = _vec(16, 3.0)
    hook = PerPositionSteeringHook(tiny_llama, 2, v, 1.0, token_range=(6, 10))  # 2 prompt + 2 generated
    with hook:
        out = tiny_llama.generate(input_ids=ids, attention_mask=mask, **_GREEDY)
    plain = tiny_llama.generate(input_ids=ids, attention_mask=mask, **_GREEDY)
    seq = out.sequences
    assert seq.shape[1] == 12
    for step in range(4):
        full_mask = torch.cat([mask, torch.ones(len(ids), step, dtype=torch.long)], dim=1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        with hook:  # no cache: the full prefix each time
            full = _logits(tiny_llama, seq[:, : 8 + step], full_mask, pos)[:, -1]
        torch.testing.assert_close(out.logits[step], full, atol=1e-4, rtol=0)
    for step in (0, 1, 2):  # the range reaches the prompt's last tokens and the first two decode steps
        assert (out.logits[step] - plain.logits[step]).abs().max() > 1e-3


@torch.no_grad()
def test_capture_spans_reach_into_generated_tokens(tiny_llama):
    ids, mask, _ = _left_padded()
    spans = torch.tensor([[4, 10], [7, 11]])  # both start in the prompt (8 columns) and end in decode steps
    caps = {pool: CaptureHook(tiny_llama, 1, spans=spans, pool=pool) for pool in ("mean", "first", "last")}
    with caps["mean"], caps["first"], caps["last"]:
        seq = tiny_llama.generate(input_ids=ids, attention_mask=mask, **_GREEDY).sequences
    full_mask = torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], dim=1)
    with _record(tiny_llama, 1) as seen:
        _logits(tiny_llama, seq, full_mask, (full_mask.cumsum(-1) - 1).clamp(min=0))
    ref = seen[0]
    for r, (a, b) in enumerate(spans.tolist()):
        torch.testing.assert_close(caps["mean"].get()[r], ref[r, a:b].mean(0), atol=1e-4, rtol=0)
        torch.testing.assert_close(caps["first"].get()[r], ref[r, a], atol=1e-4, rtol=0)
        torch.testing.assert_close(caps["last"].get()[r], ref[r, b - 1], atol=1e-4, rtol=0)


@torch.no_grad()
def test_per_position_steering_manual_decode_without_mask_uses_cache_length(tiny_llama):
    ids = _ids(8, 1, 7)
    v = _vec(17, 3.0)
    with PerPositionSteeringHook(tiny_llama, 1, v, 1.0, token_range=(6, None)):
        reference = tiny_llama(input_ids=ids).logits[:, -1]
        prefill = tiny_llama(input_ids=ids[:, :6], use_cache=True)
        step = tiny_llama(input_ids=ids[:, 6:], past_key_values=prefill.past_key_values, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], reference, atol=1e-4, rtol=0)
    assert (reference - tiny_llama(input_ids=ids).logits[:, -1]).abs().max() > 1e-3


@torch.no_grad()
def test_per_sample_steering_rows_and_split_batches(tiny_llama):
    ids = _ids(9, 3, 6)
    v1, v2 = _vec(18), _vec(19)
    configs = [(1, v1, 2.0, 0), (2, v2, -1.5, 2), (1, v2, 0.5, 2)]
    hook = PerSampleSteering(tiny_llama, configs, batch_size=3)
    with hook:
        full = _logits(tiny_llama, ids)
        with hook.rows([2, 0]):
            part_a = _logits(tiny_llama, ids[[2, 0]])
        with hook.rows(slice(1, 2)):
            part_b = _logits(tiny_llama, ids[1:2])
        with pytest.raises(HookError, match="running batch has 2 rows"):
            _logits(tiny_llama, ids[:2])
        with hook.rows([0]), pytest.raises(HookError, match="selects 1"):
            _logits(tiny_llama, ids[:2])
    with SteeringHook(tiny_llama, 1, v1, 2.0):
        row0 = _logits(tiny_llama, ids[:1])
    row1 = _logits(tiny_llama, ids[1:2])
    with MultiLayerSteering(tiny_llama, [(2, v2, -1.5), (1, v2, 0.5)]):
        row2 = _logits(tiny_llama, ids[2:])
    torch.testing.assert_close(full, torch.cat([row0, row1, row2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([part_a[1:], part_b, part_a[:1]]), full, atol=1e-5, rtol=0)
    assert (full[0] - row1[0]).abs().max() > 1e-2


# ------------------------------------------------------------------------------ ablation, projection, capping


@torch.no_grad()
def test_ablation_removes_direction_and_keeps_the_rest(tiny_llama):
    ids = _ids(10, 2, 6)
    r = _vec(20, 5.0)
    unit = r / r.norm()
    with _record(tiny_llama, 2) as plain_seen:
        _logits(tiny_llama, ids)
    with (
        AblationHook(tiny_llama, 2, r),
        ProjectionHook(tiny_llama, 2, r) as proj,
        _record(tiny_llama, 2) as seen,
    ):
        _logits(tiny_llama, ids)
    assert proj.scores().shape == (2, 6)
    assert proj.scores().abs().max() < 1e-4
    plain = plain_seen[0]
    assert (plain @ unit).abs().max() > 1e-2
    torch.testing.assert_close(seen[0], plain - (plain @ unit)[..., None] * unit, atol=1e-5, rtol=0)


@torch.no_grad()
def test_projection_scores_equal_captured_dot_unit_vectors(tiny_llama):
    ids, mask, pos = _left_padded()
    vecs = torch.stack([_vec(21, 3.0), _vec(22, 0.2), _vec(23)])
    units = vecs / vecs.norm(dim=-1, keepdim=True)
    with (
        MultiLayerProjection(tiny_llama, {1: vecs, 3: vecs[0]}) as proj,
        _record(tiny_llama, 1) as seen1,
        _record(tiny_llama, 3) as seen3,
    ):
        _logits(tiny_llama, ids, mask, pos)
    real = mask.bool()
    h1, h3 = seen1[0], seen3[0]
    scores = proj.scores(1)
    assert scores.shape == (2, 8, 3) and scores.dtype == torch.float32
    torch.testing.assert_close(scores[real], (h1 @ units.T)[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(proj.norms(1)[real], h1.norm(dim=-1)[real], atol=1e-5, rtol=0)
    assert scores[0, :3].abs().max() == 0 and proj.norms(1)[0, :3].abs().max() == 0  # pads zeroed
    assert proj.all_scores()[3].shape == (2, 8)
    torch.testing.assert_close(proj.scores(3)[real], (h3 @ units[0])[real], atol=1e-5, rtol=0)


@torch.no_grad()
def test_projection_accumulates_prefill_and_decode_steps(tiny_llama):
    ids = _ids(11, 1, 5)
    v = _vec(24)
    with ProjectionHook(tiny_llama, 2, v.unsqueeze(0)) as proj:
        out = tiny_llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **_GREEDY).sequences
    with _record(tiny_llama, 2) as seen:
        _logits(tiny_llama, out[:, :-1])  # the last token is never fed back
    assert proj.scores().shape == (1, 8, 1)
    torch.testing.assert_close(proj.scores()[..., 0], seen[0] @ (v / v.norm()), atol=1e-4, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["floor", "ceiling"])
def test_activation_capping(tiny_llama, mode):
    ids = _ids(12, 2, 6)
    v = _vec(25, 4.0)
    unit = v / v.norm()
    with _record(tiny_llama, 1) as plain_seen:
        _logits(tiny_llama, ids)
    plain = plain_seen[0]
    coords = plain @ unit
    tau = float(coords.median())
    with ActivationCappingHook(tiny_llama, 1, v, tau, mode=mode), _record(tiny_llama, 1) as seen:
        _logits(tiny_llama, ids)
    capped = coords.clamp(min=tau) if mode == "floor" else coords.clamp(max=tau)
    assert (capped != coords).any() and (capped == coords).any()
    torch.testing.assert_close(seen[0] @ unit, capped, atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[0], plain + (capped - coords)[..., None] * unit, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------- tuple outputs, lifecycle


class _TupleLayer(nn.Module):
    def forward(self, h):
        return (h * 2.0, "extra")


class _TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=4)
        self.layers = nn.ModuleList([_TupleLayer(), _TupleLayer()])

    def forward(self, h):
        outs = []
        for layer in self.layers:
            h, extra = layer(h)
            outs.append(extra)
        return h, outs


def test_tuple_outputs_are_edited_in_place_of_the_first_element():
    model = _TupleModel()
    x = torch.ones(1, 3, 4)
    v = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with SteeringHook(model, 0, v, coefficient=10.0), CaptureHook(model, 0, pool="last") as cap:
        h, extras = model(x)
    assert extras == ["extra", "extra"]
    torch.testing.assert_close(h[0, 0], torch.tensor([24.0, 4.0, 4.0, 4.0]))
    torch.testing.assert_close(cap.get()[0], torch.tensor([12.0, 2.0, 2.0, 2.0]))


def _all_hooks(model):
    v = _vec(26)
    return [
        CaptureHook(model, 1),
        MultiLayerCapture(model, [0, 2], stop_after_last=True),
        SteeringHook(model, 1, v),
        PerPositionSteeringHook(model, 1, v, 1.0, token_range=(1, None)),
        AblationHook(model, 1, v),
        ProjectionHook(model, 1, v),
        MultiLayerProjection(model, {0: v, 3: v}),
        ActivationCappingHook(model, 1, v, 0.0, mode="ceiling"),
        MultiLayerSteering(model, [(0, v, 1.0), (2, v, 1.0)]),
        PerSampleSteering(model, [(1, v, 1.0, 0)], batch_size=2),
    ]


@torch.no_grad()
def test_every_hook_is_removed_after_an_exception(tiny_llama):
    before = _hook_snapshot(tiny_llama)
    for hook in _all_hooks(tiny_llama):
        with pytest.raises(RuntimeError, match="boom"), hook:
            assert _hook_snapshot(tiny_llama) != before
            raise RuntimeError("boom")
        assert _hook_snapshot(tiny_llama) == before, type(hook).__name__
    # An error raised from inside a hook during the forward is not swallowed, and cleans up too.
    with pytest.raises(HookError), PerSampleSteering(tiny_llama, [(1, _vec(1), 1.0, 0)], batch_size=2):
        _logits(tiny_llama, _ids(0, 3, 4))
    assert _hook_snapshot(tiny_llama) == before


def test_reentering_an_active_hook_fails(tiny_llama):
    hook = SteeringHook(tiny_llama, 0, _vec(27))
    with hook, pytest.raises(HookError, match="already active"):
        hook.__enter__()
    with hook:  # reusable after exit
        pass


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: SteeringHook(m, 0, torch.zeros(31)), "31 dims but the component has 32"),
        (lambda m: SteeringHook(m, 0, torch.zeros(2, 32)), "must be 1D"),
        (lambda m: AblationHook(m, 0, torch.zeros(32)), "zero norm"),
        (lambda m: ActivationCappingHook(m, 0, torch.zeros(32), 1.0), "zero norm"),
        (lambda m: ProjectionHook(m, 0, torch.stack([torch.ones(32), torch.zeros(32)])), "row 1.*zero norm"),
        (lambda m: ProjectionHook(m, 0, torch.ones(2, 3, 32)), r"\[T, 32\]"),
        (lambda m: ActivationCappingHook(m, 0, torch.ones(32), 1.0, mode="clip"), "floor|ceiling"),
        (lambda m: CaptureHook(m, 0, pool="max"), "mean|sum|first|last|none"),
        (lambda m: CaptureHook(m, 0, spans=torch.tensor([[3, 3]])), "start < stop"),
        (lambda m: CaptureHook(m, 0, spans=torch.tensor([1, 3])), r"\[batch, 2\]"),
        (lambda m: PerPositionSteeringHook(m, 0, torch.ones(32), 1.0, token_range=(5, 2)), "start < stop"),
        (lambda m: PerSampleSteering(m, [(0, torch.ones(32), 1.0, 4)], batch_size=2), r"row 4.*0\.\.1"),
        (lambda m: SteeringHook(m, 0, torch.full((32,), float("nan"))), "NaN"),
    ],
)
def test_bad_inputs_fail_fast(tiny_llama, make, match):
    with pytest.raises(HookError, match=match):
        make(tiny_llama)


@pytest.mark.parametrize("layer", [4, -1])
def test_out_of_range_layer_fails(tiny_llama, layer):
    with pytest.raises(ModelError, match=r"0\.\.3"):
        SteeringHook(tiny_llama, layer, _vec(0))


@torch.no_grad()
def test_capture_spans_batch_mismatch_fails_during_forward(tiny_llama):
    with (
        pytest.raises(TraitlabError, match="spans has 1 rows but the batch has 2"),
        CaptureHook(tiny_llama, 0, spans=torch.tensor([[0, 2]])),
    ):
        _logits(tiny_llama, _ids(0, 2, 4))
