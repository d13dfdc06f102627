"""Massive-activation detection on planted outliers, and the calibration hooks on the tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch

from traitlab.core.components import get_module
from traitlab.core.massive import (
    MassiveError,
    MaxAbsTracker,
    calibration_record,
    detect_massive_dims,
    massive_dims,
    max_abs_per_dim,
    merge_records,
    record_max_abs,
    record_peak_positions,
    summarize,
    zero_dims,
)


def _acts_with_outlier(dim: int = 7, value: float = 500.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(3, 10, 32, generator=g) * 2 - 1  # every dim's max |h| is close to 1
    acts[1, 4, dim] = -value  # one token, negative: |h| must count, not h
    return acts


def test_planted_outlier_dim_is_the_only_one_found():
    m = max_abs_per_dim(_acts_with_outlier())
    assert m.shape == (32,)
    assert m[7] == pytest.approx(500.0)
    assert massive_dims(m) == [7]


def test_ratio_threshold_is_strict_and_configurable():
    m = torch.ones(9)
    m[2], m[5] = 100.0, 100.5  # median 1: 100 is not > 100x, 100.5 is
    assert massive_dims(m, ratio=100) == [5]
    assert massive_dims(m, ratio=50) == [2, 5]
    assert massive_dims(torch.zeros(4)) == []
    with pytest.raises(MassiveError, match="ratio"):
        massive_dims(m, ratio=0)


def test_padding_is_ignored():
    acts = _acts_with_outlier()
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[1, 4] = False  # the outlier sits on a pad position
    assert massive_dims(max_abs_per_dim(acts, valid)) == []
    with pytest.raises(MassiveError, match="valid"):
        max_abs_per_dim(acts, valid[:, :5])


def test_detect_per_layer_and_summary_rows():
    clean = max_abs_per_dim(_acts_with_outlier(value=0.5))
    dirty = max_abs_per_dim(_acts_with_outlier(dim=3, value=1000.0))
    dims = detect_massive_dims({5: dirty, 2: clean})
    assert dims == {2: [], 5: [3]}
    rows = summarize({5: dirty, 2: clean})
    assert [(r["layer"], r["dim"]) for r in rows] == [(5, 3)]
    assert rows[0]["ratio_to_median"] == pytest.approx(1000.0 / float(dirty.median()))


def test_zero_dims_copies_and_refuses_an_empty_result():
    v = torch.arange(1.0, 5.0)
    out = zero_dims(v, [1, 3])
    assert out.tolist() == [1.0, 0.0, 3.0, 0.0]
    assert v.tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(MassiveError, match="entirely"):
        zero_dims(torch.tensor([0.0, 2.0]), [1])
    with pytest.raises(MassiveError, match="out of range"):
        zero_dims(v, [4])


def test_tracker_budget_and_running_max():
    t = MaxAbsTracker([3, 1], max_tokens=20)
    a, b = torch.zeros(1, 8, 4), torch.zeros(1, 8, 4)
    a[0, 0, 0], b[0, 1, 2] = 5.0, -7.0
    t.update(1, a)
    t.add_tokens(8)
    assert not t.full
    t.update(1, b)
    t.add_tokens(12)
    assert t.full
    assert t.max_abs()[1].tolist() == [5.0, 0.0, 7.0, 0.0]
    assert t.layers == [1, 3]


def test_record_round_trip_and_merge_keeps_old_layers():
    rec = calibration_record(
        {0: torch.tensor([1.0, 300.0, 1.0]), 2: torch.tensor([1.0, 1.0, 1.0])}, 42, model="m"
    )
    back = record_max_abs(rec)
    assert back[0].tolist() == [1.0, 300.0, 1.0] and rec["layers"]["0"]["n_tokens"] == 42
    newer = calibration_record({0: torch.tensor([9.0, 9.0, 9.0]), 5: torch.tensor([2.0, 2.0, 2.0])}, 7)
    merged = merge_records(rec, newer)
    assert sorted(merged["layers"], key=int) == ["0", "2", "5"]
    assert merged["layers"]["0"]["max_abs"] == [1.0, 300.0, 1.0]  # a calibration never drifts
    with pytest.raises(MassiveError):
        record_max_abs({"version": 99})


def test_tracker_hooks_match_manual_max_on_padded_batch(tiny_llama):
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    seen = {}
    handles = [
        get_module(tiny_llama, layer).register_forward_hook(
            lambda m, a, o, layer=layer: seen.__setitem__(
                layer, (o[0] if isinstance(o, tuple) else o).detach()
            )
        )
        for layer in (0, 2)
    ]
    tracker = MaxAbsTracker([0, 2], max_tokens=100)
    try:
        with torch.no_grad(), tracker.hooks(tiny_llama, valid=mask.bool()):
            tiny_llama(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    assert tracker.n_tokens == 10  # real tokens only, counted once per forward
    for layer in (0, 2):
        want = seen[layer][mask.bool()].abs().amax(0)
        assert torch.equal(tracker.max_abs()[layer], want)
    # hooks are gone afterwards: another forward changes nothing
    with torch.no_grad():
        tiny_llama(input_ids=ids)
    assert tracker.n_tokens == 10


def test_tracker_records_where_each_dim_peaked_in_its_text():
    t = MaxAbsTracker([0], max_tokens=100)
    a = torch.zeros(2, 4, 3)
    a[0, 3, 0] = 9.0  # row 0 has one pad position: token 3 of the batch is position 2 of its text
    a[1, 1, 1] = -4.0
    valid = torch.tensor([[False, True, True, True], [True, True, True, True]])
    t.update(0, a, valid)
    assert t.max_abs()[0].tolist() == [9.0, 4.0, 0.0]
    assert t.peak_positions()[0][:2].tolist() == [2, 1]
    b = torch.zeros(1, 2, 3)
    b[0, 0, 1] = 5.0  # a later, larger max moves the peak; a smaller one does not
    b[0, 1, 0] = 1.0
    t.update(0, b)
    assert t.max_abs()[0].tolist() == [9.0, 5.0, 0.0] and t.peak_positions()[0][:2].tolist() == [2, 0]
    rec = calibration_record(t.max_abs(), 12, t.peak_positions(), model="m")
    assert rec["n_tokens"] == 12 and record_peak_positions(rec)[0][:2].tolist() == [2, 0]
    assert record_peak_positions(calibration_record(t.max_abs(), 12)) == {}  # passive records may lack them


def _planted_copy(tiny_llama, token: int, dim: int, value: float):
    model = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        model.model.embed_tokens.weight[token, dim] = value  # the residual stream carries it to every layer
    return model


@pytest.mark.parametrize("planted", [True, False])
def test_calibration_finds_a_planted_massive_dim_at_the_first_token(tiny_llama, planted):
    """A dim planted in the embedding of the token every text starts with is massive at every layer and peaks
    at position 0 of its text, though texts of different lengths are left-padded in one batch; without the
    plant the same calibration finds nothing."""
    from traitlab.models.encoding import Encoded
    from traitlab.monitor.scoring import calibrate_encoded

    model = _planted_copy(tiny_llama, token=5, dim=11, value=400.0) if planted else tiny_llama
    g = torch.Generator().manual_seed(1)
    texts = [Encoded([5, *torch.randint(6, 128, (n,), generator=g).tolist()], 2) for n in (3, 9, 6, 12, 4)]
    tracker = MaxAbsTracker(range(4), max_tokens=1000)
    calibrate_encoded(model, texts, tracker, batch_size=3)
    assert tracker.n_tokens == sum(len(e.ids) for e in texts) and tracker.n_texts == 5
    rows = summarize(tracker.max_abs(), 100.0, tracker.peak_positions())
    if planted:
        assert [(r["layer"], r["dim"], r["peak_position"]) for r in rows] == [(ly, 11, 0) for ly in range(4)]
        assert all(r["ratio_to_median"] > 1000 for r in rows)
    else:
        assert rows == []
        assert max(float(m.max() / m.median()) for m in tracker.max_abs().values()) < 20


def test_layer_ranges_name_runs_of_layers():
    from traitlab.monitor.calibration import layer_ranges

    assert layer_ranges([28, 2, 11, 12, 13, 27]) == "2, 11-13, 27-28" and layer_ranges([5]) == "5"
