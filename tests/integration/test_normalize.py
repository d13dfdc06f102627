"""Cross-trait normalisation of the registry's vectors of two starter traits on the real SmolLM2."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from mlflow.tracking import MlflowClient

from traitlab.config.schema import (
    ExtractConfig,
    ExtractionConfig,
    MethodConfig,
    NormalizeConfig,
    TrackingConfig,
    TraitConfig,
)
from traitlab.pipelines.extract import run_extract
from traitlab.pipelines.normalize import run_normalize
from traitlab.tracking.registry import fetch_vector, find_vectors

pytestmark = pytest.mark.slow
TRAITS = ["starter/formality", "starter/optimism"]
EXP = "normalize"


def _history(client, run_id, name):
    return {m.step: m.value for m in client.get_metric_history(run_id, f"layer/{name}")}


def test_center_and_denoise_two_starter_traits(smollm2, mlflow_store):
    base = ExtractConfig(method=MethodConfig(name="mean_diff"), layers="10,12", tracking=TrackingConfig(experiment=EXP),
                         extraction=ExtractionConfig(cv_folds=0, n_bootstrap=200))
    sources = {t: run_extract(replace(base, trait=TraitConfig(name=t)), lm=smollm2).run_id for t in TRAITS}
    cfg = replace(base, normalize=NormalizeConfig(center=True, denoise="neutral"))
    res = run_normalize(cfg, TRAITS, lm=smollm2)
    client = MlflowClient(mlflow_store)
    assert res.layers == [10, 12] and set(res.run_ids) == set(TRAITS)
    for t in TRAITS:
        run = client.get_run(res.run_ids[t])
        tags = run.data.tags
        assert tags["normalization"] == "center+denoise" and tags["traitlab.source_run"] == sources[t]
        assert set(tags["traitlab.source_runs"].split(",")) == set(sources.values())
        assert tags["traitlab.neutral_set"] == "neutral:default"
        # re-scored on the source run's own held-out rows: the raw vector scores exactly what it scored there
        for name in ("val_accuracy", "val_effect_size", "val_auroc_lo"):
            assert _history(client, res.run_ids[t], f"raw_{name}") == pytest.approx(
                _history(client, sources[t], name), abs=1e-4)
        for step, n in _history(client, res.run_ids[t], "n_denoise_pcs").items():
            assert n >= 1 and _history(client, res.run_ids[t], "removed_denoise")[step] > 0.01
        assert run.data.metrics["n_val_pos"] == client.get_run(sources[t]).data.metrics["n_val_pos"]
    for lyr in res.layers:
        a, b = (res.vectors[t][lyr] for t in TRAITS)
        assert float(a.norm()) == pytest.approx(1.0, abs=1e-5)
        assert float(a @ b) == pytest.approx(-1.0, abs=1e-5)  # two traits centred: exact opposites
        assert res.overlap[lyr][1] == pytest.approx(1.0, abs=1e-5)
    # the registry keeps normalised vectors apart from the vectors as extracted
    raw = find_vectors("starter/optimism", "smollm2_135m", experiment=EXP)
    assert {r.run_id for r in raw} == {sources["starter/optimism"]}
    normed = find_vectors("starter/optimism", "smollm2_135m", experiment=EXP, normalization="center+denoise")
    assert {r.run_id for r in normed} == {res.run_ids["starter/optimism"]}
    v = fetch_vector(next(r for r in normed if r.layer == 12), experiment=EXP)
    assert torch.allclose(v, res.vectors["starter/optimism"][12], atol=1e-6)
    again = run_normalize(cfg, TRAITS, lm=smollm2)
    assert again.skipped and again.run_ids == res.run_ids
