"""Vector geometry: each function checked against a construction whose answer is known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab.core.vecmath import (
    angular_velocity,
    batch_cosine_similarity,
    cosine_similarity,
    denoise_with_pcs,
    derivative,
    grand_mean_center,
    normalize_scores,
    orthogonalize,
    pairwise_cosine_matrix,
    pca,
    project_out_subspace,
    projection,
    radial_velocity,
    second_derivative,
    top_pcs_by_variance,
)
from traitlab.errors import ConfigError, TraitlabError


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_projection_normalises_only_the_vector():
    acts = torch.tensor([[3.0, 4.0], [1.0, -2.0]])
    v = torch.tensor([10.0, 0.0])
    assert torch.allclose(projection(acts, v), torch.tensor([3.0, 1.0]))
    assert torch.allclose(projection(acts * 2, v), torch.tensor([6.0, 2.0]))
    # fp16 activations are scored in float32
    assert projection(acts.half(), v).dtype == torch.float32


def test_cosines():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert float(cosine_similarity(a, b)) == pytest.approx(1 / math.sqrt(2))
    assert float(cosine_similarity(a, -a * 5)) == pytest.approx(-1.0)
    acts = torch.randn(7, 16, generator=_g())
    v = torch.randn(16, generator=_g(1))
    expected = torch.nn.functional.cosine_similarity(acts, v[None], dim=-1)
    assert torch.allclose(batch_cosine_similarity(acts, v), expected, atol=1e-6)
    assert torch.allclose(cosine_similarity(acts, v), expected, atol=1e-6)


def test_pairwise_cosine_matrix():
    vecs = torch.randn(5, 32, generator=_g())
    m = pairwise_cosine_matrix(vecs)
    assert m.shape == (5, 5)
    assert torch.allclose(m.diagonal(), torch.ones(5), atol=1e-6)
    assert torch.allclose(m, m.T)
    assert float(m[1, 3]) == pytest.approx(float(cosine_similarity(vecs[1], vecs[3])), abs=1e-6)


def test_orthogonalize_removes_the_component():
    v = torch.randn(64, generator=_g())
    against = torch.randn(64, generator=_g(1))
    out = orthogonalize(v, against)
    assert abs(float(out @ against)) < 1e-4
    # The part of v already orthogonal to `against` is untouched.
    unit = against / against.norm()
    assert torch.allclose(out, v - (v @ unit) * unit, atol=1e-5)


def test_project_out_subspace_removes_a_non_orthonormal_basis():
    basis = torch.randn(3, 40, generator=_g())  # not orthonormal on purpose
    vecs = torch.randn(6, 40, generator=_g(1))
    out = project_out_subspace(vecs, basis)
    assert (out @ basis.T).abs().max() < 1e-4
    # Vectors orthogonal to the basis pass through unchanged; vectors in its span vanish.
    assert torch.allclose(project_out_subspace(out, basis), out, atol=1e-5)
    in_span = torch.tensor([2.0, -1.0, 0.5]) @ basis
    assert project_out_subspace(in_span, basis).norm() < 1e-4


def test_pca_recovers_a_planted_axis():
    d = 50
    axis = torch.nn.functional.normalize(torch.randn(d, generator=_g()), dim=0)
    x = torch.randn(400, d, generator=_g(1)) * 0.5 + torch.randn(400, 1, generator=_g(2)) * 6 * axis
    comps, ratio, proj = pca(x, 3)
    assert comps.shape == (3, d) and ratio.shape == (3,) and proj.shape == (400, 3)
    assert abs(float(comps[0] @ axis)) > 0.99
    assert float(ratio[0]) > 0.5 and bool((ratio[:-1] >= ratio[1:]).all()) and float(ratio.sum()) <= 1.0
    assert torch.allclose(comps @ comps.T, torch.eye(3), atol=1e-5)
    assert torch.allclose(proj, (x - x.mean(0)) @ comps.T, atol=1e-3)
    with pytest.raises(TraitlabError, match="n_components"):
        pca(x, 0)


def test_top_pcs_by_variance_and_denoise():
    # Variances 16, 4, 1, 1, ... in the standard basis: two PCs hold 20/(20+46·1)≈0.30 of the variance.
    d = 48
    stds = torch.ones(d)
    stds[0], stds[1] = 4.0, 2.0
    acts = torch.randn(5000, d, generator=_g()) * stds
    basis, ratio, k = top_pcs_by_variance(acts, 0.25)
    total = 16 + 4 + (d - 2)
    assert k == 2 and basis.shape == (2, d)
    assert float(ratio[0]) == pytest.approx(16 / total, rel=0.1)
    assert abs(float(basis[0, 0])) > 0.99 and abs(float(basis[1, 1])) > 0.99
    _, _, k_all = top_pcs_by_variance(acts, 1.0)
    assert k_all == d
    vecs = {"a": torch.randn(d, generator=_g(1)), "b": torch.randn(d, generator=_g(2))}
    cleaned = denoise_with_pcs(vecs, basis)
    assert set(cleaned) == {"a", "b"}
    assert (cleaned["a"] @ basis.T).abs().max() < 1e-4
    assert torch.allclose(denoise_with_pcs(vecs["b"], basis), cleaned["b"])


def test_grand_mean_center():
    vecs = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([3.0, 6.0])}
    centred, mean = grand_mean_center(vecs)
    assert torch.allclose(mean, torch.tensor([2.0, 4.0]))
    assert torch.allclose(centred["x"], torch.tensor([-1.0, -2.0]))
    assert torch.allclose(centred["x"] + centred["y"], torch.zeros(2))


def test_derivatives_of_a_linear_trajectory():
    h0, step = torch.randn(16, generator=_g()), torch.randn(16, generator=_g(1))
    t = torch.arange(10, dtype=torch.float32)[:, None]
    traj = h0 + t * step
    vel = derivative(traj)
    assert vel.shape == (9, 16)
    assert torch.allclose(vel, step.expand(9, 16), atol=1e-5)
    acc = second_derivative(traj)
    assert acc.shape == (8, 16) and acc.abs().max() < 1e-4
    quad = t**2 * step  # second difference of t² is 2
    assert torch.allclose(second_derivative(quad), 2 * step.expand(8, 16), atol=1e-4)
    with pytest.raises(TraitlabError, match="more than 1 tokens"):
        derivative(traj[:1])


def test_angular_and_radial_velocity_of_a_spiral():
    theta, d = 0.05, 8
    t = torch.arange(20, dtype=torch.float64)
    radius = 1.0 + 0.5 * t
    traj = torch.zeros(20, d, dtype=torch.float64)
    traj[:, 0], traj[:, 1] = radius * torch.cos(theta * t), radius * torch.sin(theta * t)
    ang = angular_velocity(traj)
    assert ang.shape == (19,)
    assert torch.allclose(ang, torch.full((19,), theta, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(radial_velocity(traj), torch.full((19,), 0.5, dtype=torch.float64), atol=1e-10)
    # Tiny angles stay accurate (arccos of the cosine would lose them in float32).
    tiny = torch.tensor([[1.0, 0.0], [math.cos(1e-4), math.sin(1e-4)]])
    assert float(angular_velocity(tiny)[0]) == pytest.approx(1e-4, rel=1e-2)


def test_normalize_scores_modes():
    acts = torch.randn(6, 12, generator=_g())
    v = torch.randn(12, generator=_g(1))
    raw = projection(acts, v)
    norms = acts.norm(dim=-1)
    assert torch.equal(normalize_scores(raw, norms, "raw"), raw)
    assert torch.allclose(normalize_scores(raw, norms, "normalized"), raw / norms.mean())
    assert torch.allclose(normalize_scores(raw, norms, "cosine"), batch_cosine_similarity(acts, v), atol=1e-6)
    with pytest.raises(ConfigError, match="expected one of raw, normalized, cosine"):
        normalize_scores(raw, norms, "zscore")


def test_shape_errors_name_the_problem():
    with pytest.raises(TraitlabError, match="hidden size 8"):
        projection(torch.zeros(3, 4), torch.ones(8))
    with pytest.raises(TraitlabError, match="zero norm"):
        projection(torch.zeros(3, 4), torch.zeros(4))
