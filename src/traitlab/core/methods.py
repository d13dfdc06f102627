"""Extraction methods: pooled activations of contrasting examples -> one unit-norm trait vector.

Every method takes `pos` [N, D] and `neg` [M, D] (or None for a single-polarity dataset, where only
methods that can do without negatives accept it), is deterministic for a given `seed`, and returns a
float32 unit vector oriented so the positive examples project higher, plus JSON-safe metadata.
Inputs are upcast to float32 (float64 inside decompositions and solves, where rounding matters).
Vectors come back on the CPU: they are artifacts, and hooks move them to the model's device.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from traitlab.core.metrics import accuracy, auroc, effect_size
from traitlab.errors import ConfigError, TraitlabError

_EPS = 1e-12


class ExtractionError(TraitlabError):
    """The activations given cannot produce a vector with this method (shape, missing class, degenerate)."""


@dataclass
class MethodResult:
    """A unit trait vector [D] (float32, CPU) and what the method learned about it (JSON-safe values)."""

    vector: Tensor
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# shared helpers


def _as_acts(x: Any, what: str) -> Tensor:
    """Validate one activation matrix and upcast it to float32 (fp16 caches are common)."""
    t = torch.as_tensor(x).detach()
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ExtractionError(
            f"{what} activations must be a non-empty [n, D] matrix, got shape {tuple(t.shape)}"
        )
    t = t.float()
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ExtractionError(
            f"{what} activations contain {bad} non-finite values (NaN/inf); expected finite floats"
        )
    return t


def _as_reference(ref: Any, d: int) -> Tensor:
    r = torch.as_tensor(ref).detach().float().reshape(-1)
    if r.shape[0] != d or not bool(torch.isfinite(r).all()):
        raise ExtractionError(
            f"reference mean must be a finite vector of size {d}, got shape {tuple(torch.as_tensor(ref).shape)}"
        )
    return r


def _unit(v: Tensor, method: str) -> Tensor:
    v = v.detach().to("cpu", torch.float64)
    norm = float(v.norm())
    if not math.isfinite(norm) or norm <= _EPS:
        raise ExtractionError(f"{method} produced a zero or non-finite vector; the classes may be identical")
    return (v / norm).float()


def _orient(v: Tensor, direction: Tensor) -> Tensor:
    """Flip v so it has a non-negative dot product with `direction` (normally mean(pos) - mean(neg))."""
    return -v if float(v.to(direction.dtype) @ direction) < 0 else v


def _mean_diff(pos: Tensor, neg: Tensor) -> Tensor:
    return pos.double().mean(0) - neg.double().mean(0)


def _fit_quality(vector: Tensor, pos: Tensor, neg: Tensor | None) -> dict[str, Any]:
    """Training-set separation of the final vector, comparable across methods."""
    if neg is None:
        return {}
    v = vector.to(pos.device)
    ps, ns = pos @ v, neg @ v
    return {
        "train_acc": accuracy(ps, ns),
        "train_effect_size": effect_size(ps, ns),
        "train_auroc": auroc(ps, ns),
    }


def _stratified_split(
    n_pos: int, n_neg: int, frac: float, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Seeded train/val index split holding out round(frac·n), at least 1, of each class.

    Equal class counts are pairs (the convention pca_diff uses too): one permutation for both sides, so
    a pair is held out whole and pos[i] still pairs with neg[i]. Otherwise each class is split on its own.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    perm = None
    for n in (n_pos, n_neg):
        if perm is None or n_pos != n_neg:
            perm = torch.randperm(n, generator=g)
        k = max(1, round(frac * n))
        out += [perm[k:], perm[:k]]
    return out[0], out[1], out[2], out[3]


def derive_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed for (seed, *keys), e.g. one per layer: independent streams, reproducible from one run seed."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)]).generate_state(1)[0]
               & 0x7FFFFFFF)


def _row_space(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD x = U·S·Vh via the n×n Gram matrix, largest first, numerically-zero directions dropped.

    Returns (U·S [n, r], Vh [r, D], S [r]). For D >> n this is several times faster than an SVD of x,
    and every method here only needs the directions with real variance.
    """
    x = x.double()
    evals, evecs = torch.linalg.eigh(x @ x.T)
    evals, evecs = evals.flip(0), evecs.flip(1)
    keep = evals > evals[0].clamp_min(_EPS) * 1e-10
    if not bool(keep.any()):
        raise ExtractionError(
            "the activations (or their differences) have no variance; expected distinct examples"
        )
    sv, u = evals[keep].sqrt(), evecs[:, keep]
    return u * sv, (x.T @ (u / sv)).T, sv


# ---------------------------------------------------------------------------------------------------------
# base class


class ExtractionMethod:
    """Base: subclasses set `name`, whether they need negatives, and implement `_extract`."""

    name: ClassVar[str] = ""
    needs_negatives: ClassVar[bool] = True
    # True when `seed` changes the result (not only a data split); tests and sweeps rely on it.
    stochastic: ClassVar[bool] = False

    def extract(self, pos: Tensor, neg: Tensor | None = None, *, seed: int = 0) -> MethodResult:
        """Extract the unit vector; `neg=None` only for methods that can work from one polarity."""
        p = _as_acts(pos, "positive")
        n = None
        if neg is not None:
            n = _as_acts(neg, "negative")
            if n.shape[1] != p.shape[1]:
                raise ExtractionError(
                    f"positive and negative activations differ in width: D={p.shape[1]} vs D={n.shape[1]}"
                )
            n = n.to(p.device)
        elif self.needs_negatives:
            raise ExtractionError(
                f"method {self.name} needs negative examples; for a single-polarity dataset use mean_diff or "
                "pca_diff with a reference mean, or random_baseline"
            )
        raw, meta = self._extract(p, n, int(seed))
        vector = _unit(raw, self.name)
        return MethodResult(
            vector=vector,
            metadata={"method": self.name, "seed": int(seed), **meta, **_fit_quality(vector, p, n)},
        )

    def _extract(self, pos: Tensor, neg: Tensor | None, seed: int) -> tuple[Tensor, dict[str, Any]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = {k: v for k, v in vars(self).items() if not isinstance(v, Tensor)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in opts.items())})"


# ---------------------------------------------------------------------------------------------------------
# methods


class MeanDiff(ExtractionMethod):
    """mean(pos) - mean(neg): the optimal linear discriminant when within-class noise is isotropic.

    Single-polarity data: pass `reference` (e.g. the mean activation of neutral prompts) and call with
    neg=None; the vector is then mean(pos) - reference.
    """

    name = "mean_diff"
    needs_negatives = False

    def __init__(self, *, reference: Tensor | None = None):
        self.reference = reference

    def _extract(self, pos, neg, seed):
        if neg is not None:
            return _mean_diff(pos, neg), {"n_pos": pos.shape[0], "n_neg": neg.shape[0]}
        if self.reference is None:
            raise ExtractionError(
                "mean_diff without negatives needs reference=<mean activation of neutral prompts>"
            )
        ref = _as_reference(self.reference, pos.shape[1]).to(pos.device)
        return pos.double().mean(0) - ref.double(), {
            "n_pos": pos.shape[0],
            "n_neg": 0,
            "against": "reference",
        }


class Probe(ExtractionMethod):
    """Logistic-regression probe on row-normalised activations (each row ÷ its norm).

    Row normalisation makes C mean the same thing at every layer and model, whatever the residual
    scale, and stops a few high-norm examples from dominating the fit.
    """

    name = "probe"
    _SOLVERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "l2": ("lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga"),
        "l1": ("liblinear", "saga"),
    }

    def __init__(
        self, *, C: float = 1.0, penalty: str = "l2", solver: str | None = None, max_iter: int = 1000
    ):
        if penalty not in self._SOLVERS:
            raise ConfigError("method.penalty", f"expected one of l1, l2, got {penalty!r}")
        solver = solver or ("lbfgs" if penalty == "l2" else "liblinear")
        if solver not in self._SOLVERS[penalty]:
            raise ConfigError(
                "method.solver",
                f"penalty {penalty} supports {', '.join(self._SOLVERS[penalty])}, got {solver!r}",
            )
        if not (isinstance(C, int | float) and C > 0):
            raise ConfigError("method.C", f"expected a positive number, got {C!r}")
        self.C, self.penalty, self.solver, self.max_iter = float(C), penalty, solver, int(max_iter)

    def _extract(self, pos, neg, seed):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        x = torch.cat([pos, neg]).double()
        x = x / x.norm(dim=1, keepdim=True).clamp_min(_EPS)
        y = np.r_[np.ones(pos.shape[0]), np.zeros(neg.shape[0])]
        clf = LogisticRegression(
            C=self.C,
            l1_ratio=1.0 if self.penalty == "l1" else 0.0,
            solver=self.solver,
            max_iter=self.max_iter,
            random_state=seed,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(x.cpu().numpy(), y)
        coef = torch.from_numpy(clf.coef_[0].copy())
        if not bool(coef.abs().gt(0).any()):
            raise ExtractionError(
                f"probe with penalty={self.penalty} and C={self.C} set every coefficient to zero; raise C"
            )
        meta: dict[str, Any] = {
            "C": self.C,
            "penalty": self.penalty,
            "solver": self.solver,
            "n_iter": int(np.max(clf.n_iter_)),
            "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
            "probe_train_acc": float(clf.score(x.cpu().numpy(), y)),
        }
        if self.penalty == "l1":
            meta["l1_sparsity"] = float((coef == 0).double().mean())
        return _orient(coef, _mean_diff(pos, neg).cpu()), meta


class Gradient(ExtractionMethod):
    """Unit direction maximising a shrunk Fisher criterion with Adam, from a seeded random start.

    Objective: (mean proj_pos − mean proj_neg) / sqrt((1−λ)·pooled within-class var + λ·mean var).
    λ (shrinkage) keeps it finite when D exceeds the sample count, where plain Fisher/LDA can find
    directions with zero within-class spread and overfit; λ=1 reduces to mean_diff.
    """

    name = "gradient"
    stochastic = True

    def __init__(self, *, steps: int = 500, lr: float = 0.05, shrinkage: float = 0.5, tol: float = 1e-9):
        if not 0.0 <= shrinkage <= 1.0:
            raise ConfigError("method.shrinkage", f"expected a value in [0, 1], got {shrinkage!r}")
        if steps < 1 or lr <= 0:
            raise ConfigError("method.steps", f"expected steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
        self.steps, self.lr, self.shrinkage, self.tol = int(steps), float(lr), float(shrinkage), float(tol)

    def _extract(self, pos, neg, seed):
        n_pos, n_neg = pos.shape[0], neg.shape[0]
        if n_pos + n_neg < 3:
            raise ExtractionError(f"gradient needs at least 3 examples in total, got {n_pos + n_neg}")
        # Class-centred data gives the within-class spread; the class means give the gap.
        pc, nc = pos - pos.mean(0), neg - neg.mean(0)
        gap_dir = (pos.mean(0) - neg.mean(0)).float()
        dof = n_pos + n_neg - 2
        within = torch.cat([pc, nc])
        iso = float((within.double() ** 2).sum() / dof / pos.shape[1])
        # Scale so the objective is O(1) and Adam's step size means the same for any activation scale.
        scale = math.sqrt(iso) if iso > 0 else float(gap_dir.norm()) + _EPS
        within, gap_dir = within / scale, gap_dir / scale
        iso_s = iso / scale**2 if iso > 0 else 1.0

        g = torch.Generator().manual_seed(seed)
        w = torch.randn(pos.shape[1], generator=g, dtype=torch.float32).to(pos.device).requires_grad_(True)
        # Adam written out: constructing torch.optim.Adam imports torch._dynamo (~2 s per process).
        m1, m2, beta1, beta2 = torch.zeros_like(w), torch.zeros_like(w), 0.9, 0.999
        lam = self.shrinkage
        prev, still, n_iter, obj = None, 0, 0, float("nan")
        for n_iter in range(1, self.steps + 1):  # noqa: B007 - n_iter is reported in metadata
            v = w / w.norm()
            var = (within @ v).pow(2).sum() / dof
            objective = (gap_dir @ v) / torch.sqrt((1 - lam) * var + lam * iso_s + _EPS)
            (grad,) = torch.autograd.grad(-objective, w)
            with torch.no_grad():
                m1.mul_(beta1).add_(grad, alpha=1 - beta1)
                m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = (m1 / (1 - beta1**n_iter)) / ((m2 / (1 - beta2**n_iter)).sqrt() + 1e-8)
                w -= self.lr * step
            obj = float(objective.detach())
            if prev is not None and abs(obj - prev) < self.tol * max(1.0, abs(obj)):
                still += 1
                if still >= 20:
                    break
            else:
                still = 0
            prev = obj
        v = (w / w.norm()).detach()
        return _orient(v, _mean_diff(pos, neg)), {
            "n_iter": n_iter,
            "objective": obj,
            "shrinkage": lam,
            "lr": self.lr,
            "converged": n_iter < self.steps,
        }


class PcaDiff(ExtractionMethod):
    """First principal axis of the paired differences pos_i − neg_i (RepE-style), oriented by the mean difference.

    The SVD is uncentred by default: centring would subtract the mean difference, which is the signal
    when most pairs agree. The sign is taken from the mean difference, never a majority vote of the
    individual pairs: a few strong pairs can outweigh many weak opposite ones, and the mean is what
    steering and scoring act on. Unpaired classes (N != M) fall back to differences against the other
    class mean; single-polarity data uses differences against `reference` (or, without one, the
    centred positives, with a warning that the sign is only relative to the origin).
    """

    name = "pca_diff"
    needs_negatives = False

    def __init__(self, *, center: bool = False, reference: Tensor | None = None):
        self.center, self.reference = bool(center), reference

    def _extract(self, pos, neg, seed):
        meta: dict[str, Any] = {"centered": self.center}
        p = pos.double()
        if neg is not None:
            q = neg.double()
            if p.shape[0] == q.shape[0]:
                diffs, meta["paired"] = p - q, True
            else:
                diffs = torch.cat([p - q.mean(0), p.mean(0) - q])
                meta["paired"] = False
                meta["warning"] = (
                    f"unpaired classes (N={p.shape[0]}, M={q.shape[0]}): used differences against the other class mean"
                )
            orient_dir = p.mean(0) - q.mean(0)
        elif self.reference is not None:
            ref = _as_reference(self.reference, p.shape[1]).to(p.device).double()
            diffs, orient_dir, meta["paired"] = p - ref, p.mean(0) - ref, False
        else:
            diffs, orient_dir, meta["paired"] = p - p.mean(0), p.mean(0), False
            meta["warning"] = (
                "no negatives or reference: PC1 of the centred positives, sign relative to the origin"
            )
        if self.center:
            diffs = diffs - diffs.mean(0)
        if diffs.shape[0] < 2 and (self.center or neg is None):
            raise ExtractionError("pca_diff needs at least 2 differences")
        _, vh, s = _row_space(diffs)
        v = _orient(vh[0], orient_dir)
        proj = diffs @ v
        meta.update(
            n_diffs=int(diffs.shape[0]),
            explained_variance=float(s[0] ** 2 / (s**2).sum().clamp_min(_EPS)),
            # Diagnostic: how many single pairs agree with the chosen sign (a majority vote would use this).
            frac_diffs_positive=float((proj > 0).double().mean()),
        )
        return v, meta


class Ica(ExtractionMethod):
    """FastICA on the PCA-reduced, centred stack of both classes; keeps the most class-separating component.

    The vector is the component's unmixing (filter) direction mapped back to D-space, so projecting an
    activation on it reproduces that independent source. A trait direction that is not among the top
    `n_components` PCs of the pooled data is invisible to this method.
    """

    name = "ica"
    stochastic = True

    def __init__(self, *, n_components: int = 20, max_iter: int = 500, tol: float = 1e-4):
        if n_components < 1:
            raise ConfigError("method.n_components", f"expected a positive integer, got {n_components!r}")
        self.n_components, self.max_iter, self.tol = int(n_components), int(max_iter), float(tol)

    def _extract(self, pos, neg, seed):
        from sklearn.decomposition import FastICA
        from sklearn.exceptions import ConvergenceWarning

        x = torch.cat([pos, neg]).double().cpu()
        n = x.shape[0]
        k = min(self.n_components, n - 1, x.shape[1])
        if k < 1:
            raise ExtractionError(f"ica needs at least 2 examples in total, got {n}")
        us, vh, s = _row_space(x - x.mean(0))
        k = min(k, s.shape[0])
        z = us[:, :k].numpy()
        ica = FastICA(
            n_components=k, whiten="unit-variance", max_iter=self.max_iter, tol=self.tol, random_state=seed
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            sources = ica.fit_transform(z)
        n_pos = pos.shape[0]
        ds = [effect_size(sources[:n_pos, j], sources[n_pos:, j]) for j in range(k)]
        best = int(np.nanargmax(np.abs(ds))) if np.isfinite(ds).any() else 0  # undefined d is NaN
        # sources = (z - mean) @ components_.T and z = xc @ vh[:k].T, so the D-space filter is vh[:k].T @ row.
        v = vh[:k].T @ torch.from_numpy(ica.components_[best].copy())
        return _orient(v, _mean_diff(pos, neg).cpu()), {
            "n_components": k,
            "component": best,
            "component_abs_d": float(abs(ds[best])),
            "pca_explained_variance": float((s[:k] ** 2).sum() / (s**2).sum().clamp_min(_EPS)),
            "n_iter": int(ica.n_iter_),
            "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
        }


def _sq_dists(z: Tensor, m: Tensor) -> Tensor:
    """Pairwise squared Mahalanobis distances (x−y)ᵀM(x−y) of the rows of z."""
    zm = z @ m
    q = (zm * z).sum(1)
    return (q[:, None] + q[None, :] - 2 * zm @ z.T).clamp_min(0.0)


def _normalise_metric(z: Tensor, m: Tensor) -> Tensor:
    """Rescale M so the median pairwise distance is 1: the bandwidth then means the same every iteration."""
    d2 = _sq_dists(z, m)
    off = d2[~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)]
    med = float(off.median()) if off.numel() else 0.0
    if not med > _EPS:
        raise ExtractionError("rfm: all examples coincide under the learned metric; the data has no spread")
    return m / med


class Rfm(ExtractionMethod):
    """Recursive Feature Machine: kernel ridge with a Laplace-Mahalanobis kernel, M ← AGOP, repeated.

    The vector is the top eigenvector of the final M (the input direction the label predictor is
    most sensitive to), oriented by the mean difference. The bandwidth is picked from a small grid by
    the held-out AUC of that vector on a seeded internal split, then the model is refit on all data.
    Everything runs in the ≤ n-dim row space of the centred data (distances, gradients and the AGOP
    all live there), so the cost is one O(n²D) Gram decomposition plus O(n³) per iteration.
    """

    name = "rfm"

    def __init__(
        self,
        *,
        bandwidths: tuple[float, ...] | list[float] = (1.0, 3.0, 10.0),
        n_iter: int = 5,
        reg: float = 1e-3,
        val_fraction: float = 0.2,
        center_grads: bool = False,
    ):
        bws = tuple(float(b) for b in bandwidths)
        if not bws or any(b <= 0 for b in bws):
            raise ConfigError(
                "method.bandwidths", f"expected a non-empty list of positive numbers, got {bandwidths!r}"
            )
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError("method.val_fraction", f"expected a value in (0, 1), got {val_fraction!r}")
        if n_iter < 1 or reg <= 0:
            raise ConfigError(
                "method.n_iter", f"expected n_iter >= 1 and reg > 0, got n_iter={n_iter}, reg={reg}"
            )
        self.bandwidths, self.n_iter, self.reg = bws, int(n_iter), float(reg)
        self.val_fraction, self.center_grads = float(val_fraction), bool(center_grads)

    @staticmethod
    def _reduce(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Centred data in its own row-space coordinates: (z [n, r], basis [r, D], labels ±1 [n])."""
        x = torch.cat([pos, neg]).double()
        y = torch.cat([x.new_ones(pos.shape[0]), -x.new_ones(neg.shape[0])])
        z, basis, _ = _row_space(x - x.mean(0))
        return z, basis, y

    def _top_direction(self, z: Tensor, y: Tensor, bandwidth: float) -> Tensor:
        """Run RFM in the reduced coordinates and return the top eigenvector of the final AGOP."""
        n, r = z.shape
        eye_n = torch.eye(n, dtype=z.dtype, device=z.device)
        m = _normalise_metric(z, torch.eye(r, dtype=z.dtype, device=z.device))
        for _ in range(self.n_iter):
            d = _sq_dists(z, m).sqrt()
            k = torch.exp(-d / bandwidth)
            alpha = torch.linalg.solve(k + self.reg * eye_n, y)
            # ∇f(x_j) = (1/L)·M·Σ_i w_ji (x_i − x_j) with w_ji = α_i K_ji / d_ji; the i=j term is excluded.
            w = alpha[None, :] * k / d.clamp_min(_EPS)
            w.fill_diagonal_(0.0)
            grads = ((w @ z - w.sum(1, keepdim=True) * z) / bandwidth) @ m
            if self.center_grads:
                grads = grads - grads.mean(0)
            m = _normalise_metric(z, grads.T @ grads / n)
        return torch.linalg.eigh(m).eigenvectors[:, -1]

    def _extract(self, pos, neg, seed):
        n_pos, n_neg = pos.shape[0], neg.shape[0]
        if min(n_pos, n_neg) < 2:
            raise ExtractionError(
                f"rfm needs at least 2 examples per class, got {n_pos} positive and {n_neg} negative"
            )
        scores: dict[str, float] = {}
        if len(self.bandwidths) == 1 or min(n_pos, n_neg) < 5:
            # Too few examples for a meaningful held-out choice: use the middle of the grid.
            best = self.bandwidths[len(self.bandwidths) // 2]
        else:
            tr_p, va_p, tr_n, va_n = _stratified_split(n_pos, n_neg, self.val_fraction, seed)
            z, basis, y = self._reduce(pos[tr_p], neg[tr_n])
            direction = _mean_diff(pos[tr_p], neg[tr_n])
            for bw in self.bandwidths:
                v = _orient(basis.T @ self._top_direction(z, y, bw), direction).to(pos.dtype)
                scores[str(bw)] = auroc(pos[va_p] @ v, neg[va_n] @ v)
            best = max(self.bandwidths, key=lambda b: scores[str(b)])  # first wins ties: grid order
        z, basis, y = self._reduce(pos, neg)
        v = _orient(basis.T @ self._top_direction(z, y, best), _mean_diff(pos, neg))
        return v, {"bandwidth": best, "val_auc_by_bandwidth": scores, "n_iter": self.n_iter, "reg": self.reg}


class RandomBaseline(ExtractionMethod):
    """A seeded random unit direction that ignores the data: the chance level every method must beat."""

    name = "random_baseline"
    needs_negatives = False
    stochastic = True

    def _extract(self, pos, neg, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(pos.shape[1], generator=g, dtype=torch.float64), {}


METHODS: dict[str, type[ExtractionMethod]] = {
    cls.name: cls for cls in (MeanDiff, Probe, Gradient, PcaDiff, Ica, Rfm, RandomBaseline)
}


def method_options(name: str) -> list[str]:
    """Keyword options a method accepts (for config validation and error messages)."""
    params = inspect.signature(METHODS[name].__init__).parameters
    return [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]


def get_method(name: str, **kwargs: Any) -> ExtractionMethod:
    """Build a method by registry name; unknown names or options fail with the valid choices listed."""
    if name not in METHODS:
        raise ConfigError("method", f"unknown method {name!r}; expected one of: {', '.join(METHODS)}")
    valid = method_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(
            f"method.{unknown[0]}",
            f"{name} has no option {unknown[0]!r}; valid options: {', '.join(valid) if valid else '(none)'}",
        )
    return METHODS[name](**kwargs)
