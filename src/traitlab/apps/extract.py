"""Hydra task of stage 1 (extract), and the multirun step that normalises the sweep's vectors across traits."""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from traitlab.config.schema import ExtractConfig
from traitlab.config.trait_overrides import command_line_keys
from traitlab.pipelines.extract import run_extract
from traitlab.tracking.callbacks import PARENT_FILE, parent_run_id_from_hydra

log = logging.getLogger(__name__)


def task(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    typed: ExtractConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    explicit = command_line_keys(HydraConfig.get().overrides.task) if HydraConfig.initialized() else set()
    res = run_extract(typed, parent_run_id=parent_run_id_from_hydra(), command_line=explicit)
    print(f"MLflow run: {res.run_id}{' (already done: skipped)' if res.skipped else ''}")
    best = res.best_layer  # a sweeper maximises the held-out accuracy there (cross-validated when cv is on)
    if best is None:
        return float("nan")
    m = res.metrics[best]
    return float(m.get("cv_accuracy", m.get("val_accuracy", float("nan"))))


class NormalizeAfterSweep(Callback):
    """With normalize.center and/or normalize.denoise set, normalise the sweep's vectors across its traits,
    one group per (method, component, position), before the parent run closes.

    Hydra turns an exception in a callback into a warning and exits 0; a failed step must not look like a
    success, so it marks the parent run FAILED and exits 2 with a one-line error itself.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        norm = config.get("normalize")
        if not norm or not (norm.get("center") or norm.get("denoise")):
            return
        f = Path(config.hydra.sweep.dir) / PARENT_FILE
        if not f.is_file():
            return
        parent = f.read_text().strip()
        from traitlab import cli

        try:
            normalize_sweep(config, parent)
        except Exception as e:  # noqa: BLE001 - reported as one line, the run marked FAILED, exit 2
            from traitlab.tracking.store import ensure_store

            client, _ = ensure_store(config.tracking.get("uri"), config.tracking.get("experiment", "traitlab"))
            client.set_terminated(parent, status="FAILED")
            cli.open_parent_runs[:] = [(c, r) for c, r in cli.open_parent_runs if r != parent]
            print(f"error ({type(e).__name__}) in the normalisation step: {cli.one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from e


def normalize_sweep(config: DictConfig, parent_run_id: str) -> list[Any]:
    """Run the normalisation step over the traits of a sweep's extraction jobs (finished or reused)."""
    from dataclasses import replace

    from traitlab.config.schema import ComponentConfig, MethodConfig, NormalizeConfig, PositionConfig
    from traitlab.pipelines.normalize import run_normalize
    from traitlab.pipelines.trait_data import run_extract_config
    from traitlab.tracking.names import NORMALIZATION_TAG
    from traitlab.tracking.store import ensure_store

    tracking = config.get("tracking", {})
    client, exp_id = ensure_store(tracking.get("uri"), tracking.get("experiment", "traitlab"))
    runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)
    runs += client.search_runs([exp_id], filter_string=f"tags.`traitlab.sweep.{parent_run_id}` = '1'", max_results=1000)
    if not any(r.data.tags.get("traitlab.stage") == "extract" for r in runs):
        # Hydra calls on_multirun_end only when every job returned, and every extraction job that returns has
        # a run (new or reused): none means the launcher ran no job (one that only composes configs).
        log.warning("normalize.* is set but the sweep ran no extraction job: nothing to normalise")
        return []
    groups: dict[tuple[str, str, str, str], dict[str, str]] = defaultdict(dict)
    for r in runs:
        t = r.data.tags
        if t.get("traitlab.stage") == "extract" and NORMALIZATION_TAG not in t and r.info.status == "FINISHED":
            groups[(t["model"], t["method"], t["component"], t["position"])][t["trait"]] = r.info.run_id
    normalize = NormalizeConfig(**OmegaConf.to_container(config.normalize, resolve=True))  # type: ignore[arg-type]
    results = []
    for (_, method, component, position), by_trait in sorted(groups.items()):
        base = run_extract_config(next(iter(by_trait.values())), experiment=tracking.get("experiment", "traitlab"),
                                  uri=tracking.get("uri"))
        cfg = replace(base, normalize=normalize, method=MethodConfig(name=method, kwargs=base.method.kwargs),
                      component=ComponentConfig(name=component), position=PositionConfig(name=position, spec=position),
                      layers=str(config.get("layers", "all")), force=bool(config.get("force", False)))
        if len(by_trait) < 2 and normalize.center:
            log.warning("normalisation skipped for %s/%s/%s: centring needs 2+ traits, the sweep has %s", method,
                        component, position, list(by_trait))
            continue
        results.append(run_normalize(cfg, sorted(by_trait), source_runs=by_trait, parent_run_id=parent_run_id))
    if not results:
        raise RuntimeError("normalize.* is set but the sweep has no group of finished extraction runs to normalise")
    return results
