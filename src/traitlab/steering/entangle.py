"""Entanglement of a steering vector: at the chosen layer and coefficient, how far it moves the propensity of
every other trait (steering.entanglement), measured on that trait's held-out pairs exactly as the steered
trait's own propensity is (log-prob margin per token, positive minus negative response; forward passes only).

All traits' rows share one set of forward batches (models/row_forward.py).

A row of the trait x trait matrix: (steered, measured) -> the paired shift (steered minus unsteered, on the
measured trait's positive side, not oriented by any direction) with its bootstrap 95% interval. The matrix
of a model is assembled from the newest steer run of each trait (tracking/steer_report.py)."""

from __future__ import annotations

import logging
from typing import Any

from traitlab.config.schema import ExtractionConfig
from traitlab.config.steer import SteerConfig
from traitlab.core.stats import bootstrap_mean
from traitlab.data import Example, load_trait, resolve_trait_dir
from traitlab.errors import ConfigError
from traitlab.models.loading import LoadedModel
from traitlab.models.propensity import propensity_groups
from traitlab.steering.measures import heldout_examples, heldout_pairs
from traitlab.tracking.registry import traits_with_vectors

log = logging.getLogger(__name__)


def entanglement_examples(cfg: SteerConfig, steered: str) -> dict[str, list[tuple[Example, Example, str]]]:
    """Before the model loads: {measured trait: held-out (pos, neg, source) examples}, the steered trait first."""
    want = cfg.steering.entanglement
    if not want:
        return {}
    if want == "registry":
        names = traits_with_vectors(cfg.model, experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)
    elif isinstance(want, list | tuple):
        names = [str(t) for t in want]
    else:
        raise ConfigError("steering.entanglement", f"{want!r} is not null, 'registry' or a list of trait names")
    p = cfg.steering.propensity
    out = {}
    for name in dict.fromkeys([steered, *names]):
        trait = load_trait(resolve_trait_dir(name, None))
        ex = heldout_examples(trait, ExtractionConfig().val_split, cfg.seed, ood=p.ood, max_pairs=p.max_pairs)
        if ex:
            out[trait.qualified_name] = ex
        else:
            log.warning("entanglement: %s has no held-out pairs sharing a prompt; left out", name)
    return out


def measure_entanglement(lm: LoadedModel, cfg: SteerConfig, examples: dict[str, list], steered: str, layer: int,
                         vector: Any, coefficient: float) -> list[dict[str, Any]]:
    """One row per measured trait: its propensity shift under (layer, coefficient * vector) with the interval."""
    p, s = cfg.steering.propensity, cfg.steering
    pairs = {measured: heldout_pairs(lm, ex, cfg.seed) for measured, ex in examples.items()}
    # every trait's unsteered and steered rows in one set of forward batches, the trunk below `layer` shared
    margins = propensity_groups(lm, [(prs, [None, [(layer, vector, coefficient)]]) for prs in pairs.values()],
                                component=cfg.component.name, batch_size=p.batch_size,
                                max_response_tokens=p.max_response_tokens)
    rows = []
    for measured, m in zip(pairs, margins, strict=True):
        iv = bootstrap_mean((m[1] - m[0]).tolist(), seed=cfg.seed, n_boot=s.bootstrap)
        rows.append({"steered": steered, "measured": measured, "layer": layer, "coefficient": coefficient,
                     "delta": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n,
                     "unsteered": float(m[0].mean()), "steered_value": float(m[1].mean())})
        log.info("entanglement: steering %s moves %s propensity by %s", steered, measured, iv)
    return rows
