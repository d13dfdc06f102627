"""Batch sizing: halving on OOM keeps every row in place (also with per-row steering); auto sizing."""

from __future__ import annotations

import pytest
import torch

from traitlab.core.hooks import PerSampleSteering
from traitlab.errors import ModelError
from traitlab.models.batching import PeakMemory, auto_batch_size, is_oom, run_halving

MB = 2**20


class FakeOOM:
    """A batch function that raises a real torch.OutOfMemoryError above `limit` rows and logs its calls."""

    def __init__(self, fn, limit: int):
        self.fn, self.limit, self.calls = fn, limit, []

    def __call__(self, rows):
        self.calls.append(list(rows))
        if len(rows) > self.limit:
            raise torch.OutOfMemoryError(f"fake: {len(rows)} rows > {self.limit}")
        return self.fn(rows)


def _steered_logits(tiny_llama, n: int = 8):
    """(ids [n, 6], hook, fn(rows) -> last-position logits of those rows, each row steered differently)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (n, 6), generator=g)
    configs = [(1, torch.randn(32, generator=g), 4.0 + i, i) for i in range(n)]
    hook = PerSampleSteering(tiny_llama, configs, batch_size=n)

    @torch.inference_mode()
    def fn(rows):
        with hook.rows(rows):
            return list(tiny_llama(input_ids=ids[rows]).logits[:, -1])

    return ids, hook, fn


def test_split_batch_equals_unsplit_row_for_row(tiny_llama):
    _, hook, fn = _steered_logits(tiny_llama)
    rows = [5, 2, 7, 0, 3, 6, 1, 4]  # not sorted: a misassigned row would get another row's delta
    with hook:
        unsplit = torch.stack(fn(rows))
        oom = FakeOOM(fn, limit=3)
        split = torch.stack(run_halving(oom, rows))
    leaves = [c for c in oom.calls if len(c) <= 3]
    assert [len(c) for c in leaves] == [2, 2, 2, 2]
    assert sum(leaves, []) == rows  # every row exactly once, in order
    assert torch.allclose(split, unsplit, atol=1e-5, rtol=0)
    # the check is sharp: rows really differ from each other, so a swap would be caught
    assert (unsplit[0] - unsplit[1]).abs().max() > 1e-2


def test_split_results_differ_from_unsteered(tiny_llama):
    ids, hook, fn = _steered_logits(tiny_llama)
    rows = list(range(8))
    with hook:
        steered = torch.stack(run_halving(FakeOOM(fn, limit=3), rows))
    with torch.inference_mode():
        plain = tiny_llama(input_ids=ids).logits[:, -1]
    assert (steered - plain).abs().amax(dim=-1).min() > 1e-3  # every row got its steering


def test_halving_oom_message_and_errors():
    calls = []

    def fn(rows):
        calls.append(len(rows))
        if len(rows) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [r * 10 for r in rows]

    assert run_halving(fn, [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert calls[0] == 5 and max(calls[1:]) <= 3

    def not_oom(rows):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_halving(not_oom, [1, 2, 3, 4])
    with pytest.raises(torch.OutOfMemoryError):
        run_halving(FakeOOM(lambda r: r, limit=0), [1, 2])
    with pytest.raises(RuntimeError, match="returned 1 results for 2 rows"):
        run_halving(lambda rows: rows[:1], [1, 2])


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_auto_batch_size_stops_at_oom_and_bisects():
    probe = FakeOOM(lambda b: None, limit=12)
    assert auto_batch_size(lambda b: probe([0] * b), start=1, max_size=64, device="cpu", budget=None) == 12
    tried = [len(c) for c in probe.calls]
    assert tried[:5] == [1, 2, 4, 8, 16] and 64 not in tried


def test_auto_batch_size_start_too_big_halves_down():
    probe = FakeOOM(lambda rows: None, limit=3)
    assert auto_batch_size(lambda b: probe([0] * b), start=16, max_size=64, device="cpu", budget=None) == 3


def test_auto_batch_size_batch_of_one_failing_raises():
    with pytest.raises(ModelError, match="even a batch of 1"):
        auto_batch_size(lambda b: FakeOOM(lambda r: None, limit=0)([0] * b), start=4, device="cpu", budget=None)


def test_auto_batch_size_respects_cpu_memory_budget():
    def probe(b):  # 16 MiB per row, touched so it is resident
        return float(torch.ones(b, 4 * MB).sum())

    b = auto_batch_size(probe, start=1, max_size=64, device="cpu", budget=200 * MB)
    assert 8 <= b <= 12 and b * 16 * MB <= 200 * MB


def test_auto_batch_size_reaches_max_on_a_real_forward(tiny_llama):
    ids = torch.randint(3, 128, (32, 8), generator=torch.Generator().manual_seed(1))

    @torch.inference_mode()
    def probe(b):
        tiny_llama(input_ids=ids[:b])

    assert auto_batch_size(probe, start=2, max_size=32, device="cpu") == 32


@pytest.mark.parametrize("sample", [False, True])
def test_peak_memory_sees_a_cpu_allocation(sample):
    import time

    with PeakMemory(torch.device("cpu"), sample=sample) as meter:
        x = torch.ones(16 * MB)  # 64 MiB
        time.sleep(0.05)
        del x
    assert meter.peak is not None and 56 * MB <= meter.peak <= 96 * MB
