"""Vector geometry shared by extraction, analysis and inference: projections, subspaces, PCA, dynamics.

Named `vecmath` (not `math`) so it never shadows the stdlib module inside the package. Pure torch.
Half-precision inputs are upcast to float32 first: dot products over thousands of dims in fp16/bf16
lose enough precision to flip the sign of small scores.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from traitlab.errors import ConfigError, TraitlabError

_EPS = 1e-12
SCORE_MODES = ("raw", "normalized", "cosine")


def _f(x: Tensor) -> Tensor:
    """Upcast half/bfloat16/integer tensors to float32; float32/float64 pass through."""
    x = torch.as_tensor(x)
    if not x.is_floating_point() or x.element_size() < 4:
        return x.float()
    return x


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both operands upcast to one common float dtype (float64 wins over float32)."""
    a, b = _f(a), _f(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _check_dim(x: Tensor, d: int, what: str) -> None:
    if x.shape[-1] != d:
        raise TraitlabError(f"{what}: last dimension is {x.shape[-1]}, expected the hidden size {d}")


def _unit(v: Tensor, what: str = "vector") -> Tensor:
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm <= _EPS).any()):
        raise TraitlabError(f"{what} has zero norm; expected a non-zero direction")
    return v / norm


def projection(acts: Tensor, vector: Tensor) -> Tensor:
    """Scalar projection of each activation onto the vector's direction: acts · v/‖v‖, shape acts[..., :-1].

    Only the vector is normalised, so scores keep the activation's scale (the "raw" score mode).
    """
    acts, vector = _pair(acts, vector)
    if vector.dim() != 1:
        raise TraitlabError(f"projection: vector must be 1-D [D], got shape {tuple(vector.shape)}")
    _check_dim(acts, vector.shape[0], "projection: acts")
    return acts @ _unit(vector)


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine along the last dim with broadcasting; two 1-D vectors give a 0-d tensor in [-1, 1]."""
    a, b = _pair(a, b)
    _check_dim(a, b.shape[-1], "cosine_similarity: a")
    num = (a * b).sum(-1)
    den = (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(_EPS)
    return (num / den).clamp(-1.0, 1.0)


def batch_cosine_similarity(acts: Tensor, vector: Tensor) -> Tensor:
    """Cosine of every activation row with one vector, shape acts[..., :-1] (zero rows score 0)."""
    acts, vector = _pair(acts, vector)
    if vector.dim() != 1:
        raise TraitlabError(
            f"batch_cosine_similarity: vector must be 1-D [D], got shape {tuple(vector.shape)}"
        )
    _check_dim(acts, vector.shape[0], "batch_cosine_similarity: acts")
    return ((acts @ _unit(vector)) / acts.norm(dim=-1).clamp_min(_EPS)).clamp(-1.0, 1.0)


def _orthonormal_basis(basis: Tensor) -> Tensor:
    """Orthonormal rows spanning `basis` rows ([K, D] or [D]); near-dependent rows are dropped."""
    if basis.dim() == 1:
        basis = basis.unsqueeze(0)
    if basis.dim() != 2:
        raise TraitlabError(f"basis must be [K, D], got shape {tuple(basis.shape)}")
    # QR of basis^T gives Q [D, K] whose columns span the rows; R's diagonal reveals dependent rows.
    q, r = torch.linalg.qr(basis.T.to(torch.float64))
    diag = r.diagonal().abs()
    keep = diag > diag.max().clamp_min(_EPS) * 1e-8 if diag.numel() else diag.bool()
    return q[:, keep].T


def project_out_subspace(vectors: Tensor, basis: Tensor) -> Tensor:
    """Remove from `vectors` [..., D] their component in span(basis rows) [K, D]; basis need not be orthonormal."""
    vectors, basis = _pair(vectors, basis)
    _check_dim(vectors, basis.shape[-1], "project_out_subspace: vectors")
    q = _orthonormal_basis(basis)
    if q.shape[0] == 0:
        return vectors.clone()
    v64 = vectors.to(torch.float64)
    return (v64 - (v64 @ q.T) @ q).to(vectors.dtype)


def orthogonalize(v: Tensor, against: Tensor) -> Tensor:
    """v minus its component along `against` ([D], or [K, D] for a span); the result has dot ≈ 0 with it."""
    return project_out_subspace(v, against)


def pairwise_cosine_matrix(vectors: Tensor) -> Tensor:
    """[N, N] cosine similarities of the rows of `vectors` [N, D]."""
    vectors = _f(vectors)
    if vectors.dim() != 2:
        raise TraitlabError(f"pairwise_cosine_matrix: expected [N, D], got shape {tuple(vectors.shape)}")
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def pca(x: Tensor, n_components: int) -> tuple[Tensor, Tensor, Tensor]:
    """PCA by SVD of the centred rows of x [N, D].

    Returns (components [k, D] orthonormal, var_ratio [k] of total variance, projections [N, k]).
    Signs follow sklearn's convention (largest-|loading| entry positive) so results are reproducible.
    """
    x = _f(x)
    if x.dim() != 2 or x.shape[0] < 2:
        raise TraitlabError(f"pca: expected [N>=2, D] data, got shape {tuple(x.shape)}")
    k_max = min(x.shape)
    if not 1 <= n_components <= k_max:
        raise TraitlabError(
            f"pca: n_components must be in 1..{k_max} for data of shape {tuple(x.shape)}, got {n_components}"
        )
    xc = (x - x.mean(0)).to(torch.float64)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:n_components]
    idx = comps.abs().argmax(dim=1)
    signs = torch.sign(comps[torch.arange(comps.shape[0]), idx])
    comps = comps * signs.unsqueeze(1)
    var = s**2
    ratio = var[:n_components] / var.sum().clamp_min(_EPS)
    proj = xc @ comps.T
    return comps.to(x.dtype), ratio.to(x.dtype), proj.to(x.dtype)


def grand_mean_center(vectors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """Subtract the mean over traits from each trait's vector: removes the direction all traits share."""
    if not vectors:
        raise TraitlabError(
            "grand_mean_center: got no vectors; expected a {name: tensor} dict with at least one entry"
        )
    names = list(vectors)
    stacked = torch.stack([_f(vectors[n]) for n in names])
    mean = stacked.mean(0)
    return {n: stacked[i] - mean for i, n in enumerate(names)}, mean


def top_pcs_by_variance(acts: Tensor, variance_threshold: float) -> tuple[Tensor, Tensor, int]:
    """Smallest set of top PCs of `acts` [N, D] whose variance ratios sum to >= variance_threshold.

    Returns (basis [k, D], var_ratio [k], k). Used to find the neutral-prompt subspace to denoise with.
    """
    if not 0.0 < variance_threshold <= 1.0:
        raise TraitlabError(
            f"top_pcs_by_variance: variance_threshold must be in (0, 1], got {variance_threshold}"
        )
    acts = _f(acts)
    comps, ratio, _ = pca(acts, min(acts.shape))
    cum = ratio.to(torch.float64).cumsum(0)
    # Tolerance so a threshold of exactly 1.0 is reachable despite rounding in the ratios.
    k = int((cum < variance_threshold - 1e-9).sum().item()) + 1
    k = min(k, comps.shape[0])
    return comps[:k], ratio[:k], k


def denoise_with_pcs(vectors: Tensor | Mapping[str, Tensor], basis: Tensor) -> Tensor | dict[str, Tensor]:
    """Project the basis (e.g. neutral-activation PCs) out of one tensor or each value of a dict."""
    if isinstance(vectors, Mapping):
        return {name: project_out_subspace(v, basis) for name, v in vectors.items()}
    return project_out_subspace(vectors, basis)


def derivative(traj: Tensor, order: int = 1) -> Tensor:
    """Finite differences along the token axis (dim 0): [T, ...] -> [T - order, ...]."""
    traj = _f(traj)
    if order < 1:
        raise TraitlabError(f"derivative: order must be >= 1, got {order}")
    if traj.dim() < 1 or traj.shape[0] <= order:
        raise TraitlabError(
            f"derivative: need more than {order} tokens along dim 0, got shape {tuple(traj.shape)}"
        )
    for _ in range(order):
        traj = traj[1:] - traj[:-1]
    return traj


def second_derivative(traj: Tensor) -> Tensor:
    """Acceleration along the token axis: [T, ...] -> [T - 2, ...]."""
    return derivative(traj, order=2)


def _check_traj(traj: Tensor, what: str) -> Tensor:
    traj = _f(traj)
    if traj.dim() != 2 or traj.shape[0] < 2:
        raise TraitlabError(f"{what}: expected a trajectory [T>=2, D], got shape {tuple(traj.shape)}")
    return traj


def radial_velocity(traj: Tensor) -> Tensor:
    """Change of ‖h‖ between consecutive tokens, [T, D] -> [T - 1]."""
    norms = _check_traj(traj, "radial_velocity").norm(dim=-1)
    return norms[1:] - norms[:-1]


def angular_velocity(traj: Tensor) -> Tensor:
    """Angle in radians between consecutive token vectors, [T, D] -> [T - 1].

    Uses 2·atan2(‖a−b‖, ‖a+b‖) on unit vectors: arccos of the cosine is ill-conditioned for small angles.
    """
    traj = _check_traj(traj, "angular_velocity")
    unit = traj / traj.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    a, b = unit[:-1], unit[1:]
    return 2.0 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))


def normalize_scores(raw: Tensor, norms: Tensor, mode: str) -> Tensor:
    """Turn raw projections (onto a unit vector) into the requested score mode.

    raw: unchanged; normalized: ÷ mean ‖h‖ over the given tokens (comparable across layers, keeps
    per-token magnitude differences); cosine: ÷ each token's own ‖h‖ (a cosine in [-1, 1]).
    """
    if mode not in SCORE_MODES:
        raise ConfigError("score_mode", f"unknown mode {mode!r}; expected one of {', '.join(SCORE_MODES)}")
    raw, norms = _pair(raw, norms)
    if mode == "raw":
        return raw
    if mode == "normalized":
        return raw / norms.mean().clamp_min(_EPS)
    if norms.shape != raw.shape:
        norms = torch.broadcast_to(norms, raw.shape)
    return raw / norms.clamp_min(_EPS)
