"""Which vector to monitor for each (trait, layer): resolved through the MLflow registry (``best`` = the
registry's best vector), fetched, optionally cleaned of massive dims, stacked per layer for the hooks."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from traitlab.core.massive import zero_dims
from traitlab.errors import ConfigError
from traitlab.tracking.registry import (
    VectorRef,
    fetch_vector,
    find_vectors,
    no_vectors_error,
    refs_at_layers,
    traits_with_vectors,
)

if TYPE_CHECKING:
    from traitlab.config.infer import InferenceConfig

log = logging.getLogger(__name__)


def trait_list(traits: Any, key: str = "traits") -> list[str] | None:
    """`traits=` as a list: null -> None (all), "a,b" -> [a, b], [a, b] -> [a, b]; ``key`` names it in errors."""
    if traits is None or traits == "" or traits == []:
        return None
    if isinstance(traits, str):
        return [t.strip() for t in traits.split(",") if t.strip()]
    if isinstance(traits, Sequence) or hasattr(traits, "__iter__"):
        out = [str(t).strip() for t in traits]
        if all(out):
            return out
    raise ConfigError(
        key, f"{traits!r} is not a list; expected null, [cat/name, ...] or 'cat/a,cat/b'"
    )


@dataclass
class TraitVector:
    """A vector chosen for (trait, layer): where it came from, the direction projected, its baseline."""

    trait: str
    layer: int
    ref: VectorRef
    vector: Tensor  # float32 [D]; massive dims zeroed when cleaning
    baseline: float = 0.0  # training-centroid projection onto the unit vector (raw units); NaN: not logged
    selection: str = ""  # why this vector: steering_delta | ood_effect_size | val_effect_size | layer

    @property
    def label(self) -> str:
        return f"{self.trait} L{self.layer}"

    def describe(self) -> dict[str, Any]:
        r = self.ref
        return {
            "run_id": r.run_id,
            "method": r.method,
            "component": r.component,
            "position": r.position,
            "layer": self.layer,
            "selection": self.selection,
        }


def resolve_traits(traits: Any, model: str, experiment: str, uri: str | None) -> list[str]:
    names = trait_list(traits)
    if names is not None:
        return list(dict.fromkeys(names))
    found = traits_with_vectors(model, experiment=experiment, uri=uri)
    if not found:
        raise ConfigError(
            "traits",
            f"no trait has extracted vectors for model {model!r} in experiment "
            f"{experiment!r}; run launchers/extract.py first or name traits=[...]",
        )
    return found


def vector_filters(inf: InferenceConfig, trait: str) -> dict[str, str]:
    """The registry filters for one trait's vectors: the configured method / position / component, and where
    the config leaves one unset (null), the trait's own extraction setting (its extraction.yaml)."""
    from traitlab.config.trait_overrides import lookup_filters

    given = lookup_filters(trait, method=inf.method or None, position=inf.position or None,
                           component=inf.component or None)
    return {k: v for k, v in given.items() if v is not None}


def require_vectors(
    traits: Sequence[str], model: str, inf: InferenceConfig, *, experiment: str, uri: str | None, key: str = "traits"
) -> None:
    """Fail before the model loads when a trait has no vectors at all (the common first-run mistake)."""
    for trait in traits:
        filters = vector_filters(inf, trait)
        if not find_vectors(trait, model, experiment=experiment, uri=uri, **filters):
            raise no_vectors_error(trait, model, experiment, filters, key=key)


def select_vectors(
    traits: Sequence[str],
    model: str,
    layers: Any,
    n_layers: int,
    inf: InferenceConfig,
    *,
    experiment: str,
    uri: str | None,
    dim: int | None = None,
) -> list[TraitVector]:
    """Per trait: resolve ``layers`` (``best`` = the registry's best vector) and fetch one vector per layer
    (which vector at each layer: tracking.registry.refs_at_layers)."""
    chosen: list[TraitVector] = []
    for trait in traits:
        for ref, why in refs_at_layers(trait, model, layers, n_layers, experiment=experiment, uri=uri,
                                       **vector_filters(inf, trait)):
            v = fetch_vector(ref, uri=uri, experiment=experiment, expected_dim=dim).float()
            base = ref.metrics.get("baseline")
            baseline = (
                float(base) / float(v.norm()) if base is not None and math.isfinite(base) else float("nan")
            )
            chosen.append(TraitVector(trait, ref.layer, ref, v, baseline, why))
    return chosen


def warn_missing_baselines(vectors: Sequence[TraitVector]) -> None:
    missing = [tv.label for tv in vectors if not math.isfinite(tv.baseline)]
    if missing:
        log.warning(
            "centered: no baseline logged for %s (extracted before baselines were logged?): left uncentred",
            ", ".join(missing),
        )


def apply_cleaning(vectors: list[TraitVector], dims_by_layer: dict[int, list[int]], centered: bool) -> None:
    for tv in vectors:
        dims = dims_by_layer.get(tv.layer, [])
        if dims:
            tv.vector = zero_dims(tv.vector, dims)
    if centered and any(dims_by_layer.get(tv.layer) for tv in vectors):
        log.warning("centered with clean_massive: the baseline was measured on the uncleaned vector")


def vectors_by_layer(vectors: Sequence[TraitVector]) -> tuple[dict[int, Tensor], dict[int, int]]:
    """Stacked [T_l, D] matrices per layer for the hooks, and each vector's column in its layer's matrix."""
    rows: dict[int, list[Tensor]] = {}
    column = {}
    for i, tv in enumerate(vectors):
        column[i] = len(rows.setdefault(tv.layer, []))
        rows[tv.layer].append(tv.vector)
    return {layer: torch.stack(vs) for layer, vs in rows.items()}, column


def vector_keys(vectors: Sequence[TraitVector]) -> list[tuple]:
    return [
        (tv.trait, tv.layer, tv.ref.run_id, tv.ref.method, tv.ref.position, tv.ref.component)
        for tv in vectors
    ]


def layers_by_trait(vectors: Sequence[TraitVector]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for tv in vectors:
        out.setdefault(tv.trait, []).append(tv.layer)
    return out
