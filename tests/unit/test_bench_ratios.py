"""The verdict arithmetic of `make bench` (benchmarks/common.py, benchmarks/run_all.py) on hand-worked values:
a ratio that misses its target by more than its noise must fail the run, one within its noise must not."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_scoring import trunk_bound  # noqa: E402
from benchmarks.common import Ratio, ratio_of  # noqa: E402


def test_ratio_is_the_median_of_paired_rounds_and_noise_half_their_range():
    r = ratio_of("b", "x", [2.0, 4.0, 9.0], [1.0, 1.0, 3.0], target=2.5)
    assert r.samples == [2.0, 4.0, 3.0]
    assert r.value == 3.0 and r.noise == 1.0 and r.n == 3
    assert r.verdict == "met"


@pytest.mark.parametrize(("value", "noise", "target", "higher", "verdict"), [
    (6.1, 0.1, 6.0, True, "met"),
    (5.9, 0.2, 6.0, True, "within noise"),
    (5.0, 0.2, 6.0, True, "MISSED"),
    (1.04, 0.0, 1.05, False, "met"),
    (1.06, 0.02, 1.05, False, "within noise"),
    (1.10, 0.02, 1.05, False, "MISSED"),
    (0.5, 0.0, None, True, "-"),
])
def test_verdicts(value, noise, target, higher, verdict):
    assert Ratio("b", "x", value, noise, 3, target=target, higher_is_better=higher).verdict == verdict


def test_a_missed_target_fails_the_run_and_the_table_says_which(monkeypatch, tmp_path):
    from benchmarks import run_all

    ratios = [Ratio("steering", "fast", 3.1, 0.2, 3, target=6.0, bound=3.5),
              Ratio("scoring", "batched", 1.4, 0.05, 3, target=4.8, bound=5.0),
              Ratio("peers", "slim", 40.0, 2.0, 3, target=50.0, higher_is_better=False, unit="us")]
    monkeypatch.setattr(run_all, "RESULTS_MD", tmp_path / "RESULTS.md")
    fake = types.ModuleType("benchmarks.bench_fake")
    fake.run = lambda quick: ratios
    monkeypatch.setitem(sys.modules, "benchmarks.bench_fake", fake)
    assert run_all.main(["fake"]) == 1
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| steering | fast | 3.1x | 0.2 | >= 6x | 3.5x | MISSED | 3 |" in text
    assert "| peers | slim | 40 us | 2 | <= 50 us | - | met | 3 |" in text
    assert "missed 2: fast; batched." in text
    assert "Of the misses, 1 has a target beyond the bound this device allows: fast (bound 3.5x)." in text
    ratios[0] = Ratio("steering", "fast", 5.9, 0.2, 3, target=6.0)
    ratios[1] = Ratio("scoring", "batched", 4.8, 0.0, 3, target=4.8)
    assert run_all.main(["fake"]) == 0
    assert "Of the misses" not in (tmp_path / "RESULTS.md").read_text()


def test_trunk_bound():
    # 8 rows of one input steered at layer 12 of 30: 8 * 30 layer-rows unshared, 12 + 8 * 18 shared
    assert trunk_bound(12, 30, 8) == pytest.approx(240 / 156)
    assert trunk_bound(0, 30, 8) == pytest.approx(1.0)
