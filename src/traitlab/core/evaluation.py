"""Fit a method on one layer's training activations and score the vector on examples it never saw.

Scores are cosines of each activation with the vector. The decision threshold is fit on the TRAIN scores
(midpoint of the class means) and applied unchanged to held-out and OOD scores: a threshold fit on the
scored set itself would make held-out accuracy a training accuracy. With cross-validation folds, each
fold's vector scores its own held-out pairs, each score is taken relative to that fold's train
threshold, and the pooled scores give one cross-validated accuracy / effect size / AUROC in which every
training pair counts once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from traitlab.core.diagnostics import preflight
from traitlab.core.methods import ExtractionMethod, derive_seed
from traitlab.core.metrics import accuracy, heldout_metrics, midpoint_threshold
from traitlab.core.vecmath import batch_cosine_similarity

Split = Mapping[str, Tensor]


@dataclass
class LayerFit:
    """The vector fit on the training part, its metrics (flat floats, NaN when undefined), the method's metadata."""

    vector: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    method_metadata: dict[str, Any] = field(default_factory=dict)


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def numeric_metadata(meta: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a method's metadata as floats (booleans 0/1); text and nested values are left out."""
    return {k: float(v) for k, v in meta.items()
            if isinstance(v, bool | int | float) and k != "method" and math.isfinite(float(v))}


def _fit(method: ExtractionMethod, pos: Tensor, neg: Tensor, seed: int) -> tuple[Tensor, float, dict[str, Any]]:
    """(unit vector, train threshold, metadata) of one fit."""
    res = method.extract(pos, neg, seed=seed)
    v = res.vector.float()
    return v, midpoint_threshold(batch_cosine_similarity(pos, v), batch_cosine_similarity(neg, v)), res.metadata


def _cross_validated(method: ExtractionMethod, pos: Tensor, neg: Tensor, folds: Sequence[Split], *, seed: int,
                     paired: bool, n_boot: int) -> dict[str, float]:
    held_p, held_n = [], []
    for f, fold in enumerate(folds):
        v, thr, _ = _fit(method, pos[fold["train_pos"]], neg[fold["train_neg"]], derive_seed(seed, 100 + f))
        held_p.append(batch_cosine_similarity(pos[fold["val_pos"]], v) - thr)
        held_n.append(batch_cosine_similarity(neg[fold["val_neg"]], v) - thr)
    return heldout_metrics(torch.cat(held_p), torch.cat(held_n), 0.0, paired=paired, seed=derive_seed(seed, 3),
                           n_boot=n_boot)


def score_vector(v: Tensor, pos: Tensor, neg: Tensor, split: Split, *, seed: int, paired: bool,
                 n_boot: int = 1000) -> dict[str, float]:
    """A given vector's train_accuracy and val_ metrics, the threshold fit on the split's train scores.

    What `fit_and_score` reports for the vector it fits; used alone to re-score a vector changed after fitting
    (e.g. normalised across traits) on the same held-out rows.
    """
    tr_p, tr_n = batch_cosine_similarity(pos[split["train_pos"]], v), batch_cosine_similarity(neg[split["train_neg"]], v)
    thr = midpoint_threshold(tr_p, tr_n)
    m = {"train_accuracy": accuracy(tr_p, tr_n, thr)}
    m.update(_prefixed("val_", heldout_metrics(
        batch_cosine_similarity(pos[split["val_pos"]], v), batch_cosine_similarity(neg[split["val_neg"]], v), thr,
        paired=paired, seed=derive_seed(seed, 1), n_boot=n_boot)))
    return m


def fit_and_score(method: ExtractionMethod, pos: Tensor, neg: Tensor, split: Split, *, seed: int, paired: bool,
                  folds: Sequence[Split] | None = None, ood: tuple[Tensor, Tensor] | None = None,
                  lengths: tuple[Tensor, Tensor] | None = None, n_boot: int = 1000) -> LayerFit:
    """One layer: fit on split's train rows of pos/neg [N, D], score val (and OOD, and CV folds), diagnose.

    Keys: train_accuracy; val_/ood_/cv_ + accuracy, effect_size, auroc (each with _lo, _hi) and
    polarity_correct; activation_norm, baseline (mean train activation on the vector); diag_* (see
    core.diagnostics.preflight, on the training rows); method_* (the method's scalar metadata).
    `seed` is this layer's seed; the method, each fold and each bootstrap get their own stream from it.
    """
    tr_p, tr_n = pos[split["train_pos"]], neg[split["train_neg"]]
    v, thr, meta = _fit(method, tr_p, tr_n, derive_seed(seed, 0))
    m = score_vector(v, pos, neg, split, seed=seed, paired=paired, n_boot=n_boot)
    if ood is not None:
        # OOD sets are compared as groups (their counts may differ): resample each side on its own.
        m.update(_prefixed("ood_", heldout_metrics(
            batch_cosine_similarity(ood[0], v), batch_cosine_similarity(ood[1], v), thr,
            paired=False, seed=derive_seed(seed, 2), n_boot=n_boot)))
    if folds:
        m.update(_prefixed("cv_", _cross_validated(method, pos, neg, folds, seed=seed, paired=paired, n_boot=n_boot)))
    train_all = torch.cat([tr_p, tr_n]).float()
    m["activation_norm"] = float(train_all.norm(dim=-1).mean())
    m["baseline"] = float(train_all.mean(0) @ v)
    lens = (lengths[0][split["train_pos"]], lengths[1][split["train_neg"]]) if lengths is not None else (None, None)
    m.update(_prefixed("diag_", preflight(tr_p, tr_n, v, *lens, paired=paired)))
    m.update(_prefixed("method_", numeric_metadata(meta)))
    return LayerFit(v, m, meta)


def projections(v: Tensor, pos: Tensor, neg: Tensor, split: Split,
                ood: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
    """Cosine of each example's activation with `v`, by part: train_pos, train_neg, val_pos, val_neg and,
    with `ood`, ood_pos, ood_neg (the scores every accuracy and effect size above is computed from)."""
    out = {f"{part}_{side}": batch_cosine_similarity(acts[split[f"{part}_{side}"]], v)
           for part in ("train", "val") for side, acts in (("pos", pos), ("neg", neg))}
    if ood is not None:
        out.update(ood_pos=batch_cosine_similarity(ood[0], v), ood_neg=batch_cosine_similarity(ood[1], v))
    return out
