"""Cross-trait normalisation on constructed vectors: centring removes what every trait shares, denoising removes
a planted neutral principal component."""

from __future__ import annotations

import pytest
import torch

from traitlab.core.normalization import mean_abs_cosine, neutral_basis, normalize_vectors
from traitlab.errors import TraitlabError

D = 16


def e(i: int) -> torch.Tensor:
    v = torch.zeros(D)
    v[i] = 1.0
    return v


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_centering_removes_a_component_planted_in_every_trait():
    shared = 3.0 * e(10)
    vectors = {f"t{i}": e(i) + shared for i in range(4)}
    assert cos(vectors["t0"], shared) == pytest.approx(3 / 10**0.5)  # 0.95 before
    out = normalize_vectors(vectors, center=True)
    for i in range(4):
        v = out.vectors[f"t{i}"]
        assert abs(cos(v, shared)) < 1e-6
        # by hand: unit(e_i) - mean of the units, the shared part cancels; e_i - (e0+e1+e2+e3)/4, renormalised
        expected = e(i) - sum(e(j) for j in range(4)) / 4
        assert torch.allclose(v, expected / expected.norm(), atol=1e-6)
        # each input was unit: (e_i + 3 e_10)/sqrt(10); the removed mean is (sum e_j / 4 + 3 e_10) / sqrt(10)
        assert out.removed_by_centering[f"t{i}"] == pytest.approx(float((sum(e(j) for j in range(4)) / 4 + shared).norm()
                                                                        / 10**0.5), abs=1e-6)
    assert mean_abs_cosine(vectors) > 0.8 and mean_abs_cosine(out.vectors) == pytest.approx(1 / 3, abs=1e-6)


def test_denoising_removes_a_planted_neutral_principal_component():
    g = torch.Generator().manual_seed(0)
    neutral = torch.randn(200, D, generator=g) * 0.1
    neutral[:, 5] += torch.randn(200, generator=g) * 10.0  # one direction carries ~99% of the variance
    basis, explained = neutral_basis(neutral, 0.5)
    assert basis.shape == (1, D) and explained > 0.95
    vectors = {"a": e(0) + 2.0 * e(5), "b": e(1) - 2.0 * e(5)}
    out = normalize_vectors(vectors, center=False, basis=basis)
    for name, clean in (("a", e(0)), ("b", e(1))):
        assert abs(cos(out.vectors[name], e(5))) < 0.02  # 0.89 before
        assert cos(out.vectors[name], clean) > 0.999
        assert out.removed_by_denoising[name] == pytest.approx(2 / 5**0.5, abs=0.01)
    assert out.n_pcs == 1


def test_centering_needs_two_traits_and_an_emptied_vector_fails():
    with pytest.raises(TraitlabError, match="at least 2 traits"):
        normalize_vectors({"a": e(0)}, center=True)
    with pytest.raises(TraitlabError, match="left nothing of a"):
        normalize_vectors({"a": e(3)}, center=False, basis=e(3)[None])


def test_two_traits_come_out_opposite_after_centering():
    out = normalize_vectors({"a": e(0) + e(2), "b": e(1) + e(2)}, center=True)
    assert cos(out.vectors["a"], out.vectors["b"]) == pytest.approx(-1.0, abs=1e-6)
