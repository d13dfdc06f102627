"""Positive-only traits on the real SmolLM2: extraction against the category or a neutral reference set."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, ExtractionConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.errors import ConfigError
from traitlab.pipelines.extract import fit_trait, run_extract
from traitlab.tracking.registry import find_vectors

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
LAYERS = "8,12"  # the capture stops after layer 12


def _cfg(reference: str | None, **kw) -> ExtractConfig:
    return ExtractConfig(trait=TraitConfig(name="emotions/joy"), method=MethodConfig(name="mean_diff"),
                         extraction=ExtractionConfig(reference=reference, n_bootstrap=200), layers=LAYERS, **kw)


def test_joy_against_its_category_is_logged_with_held_out_separation_and_the_note(smollm2, mlflow_store):
    res = run_extract(_cfg("category", tracking=TrackingConfig(experiment="positive_only")), lm=smollm2)
    run = MlflowClient(mlflow_store).get_run(res.run_id)
    m, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and tags["traitlab.reference"] == "category:emotions"
    assert m["n_train_pos"] + m["n_val_pos"] == 42 and m["n_train_neg"] + m["n_val_neg"] == 3 * 42
    assert m["n_val_neg"] >= 12 and m["n_cv_neg"] == m["n_train_neg"]
    # real separation of held-out joy stories from held-out anger/fear/sadness stories at the best layer
    assert m["best/cv_accuracy_lo"] > 0.75 and m["best/cv_effect_size_lo"] > 1.0
    assert m["best/val_accuracy_lo"] <= m["best/val_accuracy"] <= m["best/val_accuracy_hi"]
    assert math.isnan(res.metrics[res.best_layer]["diag_agreement"])  # no pairs: undefined, not 0
    note = tags["mlflow.note.content"]
    assert "no negatives" in note and "anger, fear, sadness" in note
    assert {r.layer for r in find_vectors("emotions/joy", "smollm2_135m", experiment="positive_only")} == {8, 12}


def test_joy_against_the_neutral_set(smollm2):
    ex = fit_trait(_cfg("neutral"), smollm2)
    assert ex.reference == "neutral:default"
    assert ex.counts["n_train_neg"] + ex.counts["n_val_neg"] == 64
    best = ex.best_layer
    assert best in (8, 12) and ex.metrics[best]["cv_accuracy_lo"] > 0.7
    assert any("neutral:default" in w for w in ex.warnings)


def _positive_only_dir(tmp_path: Path, n: int, extraction_yaml: str | None = None) -> Path:
    """The first `n` joy stories as a trait of its own outside datasets/traits (no category, no extraction.yaml
    unless given)."""
    d = tmp_path / "joy_small"
    d.mkdir()
    rows = (ROOT / "datasets" / "traits" / "emotions" / "joy" / "positive.jsonl").read_text().splitlines()[:n]
    (d / "positive.jsonl").write_text("\n".join(rows) + "\n")
    if extraction_yaml is not None:
        (d / "extraction.yaml").write_text(extraction_yaml)
    return d


def test_without_a_reference_it_fails_before_the_model_loads(tmp_path):
    cfg = _cfg(None)
    cfg = replace(cfg, trait=TraitConfig(path=str(_positive_only_dir(tmp_path, 12))))
    with pytest.raises(ConfigError, match="extraction.reference"):
        fit_trait(cfg, lm=None)  # lm=None: reaching the model load would load SmolLM2 and not raise


def test_cap_thresholds_of_a_positive_only_vector_extracted_with_auto_batches(smollm2, mlflow_store, tmp_path):
    """The use stage re-reads the training rows of an extraction: the reference set (set by the trait's
    extraction.yaml) and the `auto` batch size come back as the extraction used them (same rows, same split),
    from the extraction's caches: no forward pass, no second batch-size measurement."""
    from traitlab.pipelines.common import training_projections
    from traitlab.steering_vector import SteeringVector

    ref = tmp_path / "reference.jsonl"
    ref.write_text("\n".join((ROOT / "datasets" / "neutral" / "default.jsonl").read_text().splitlines()[:12]) + "\n")
    trait = _positive_only_dir(tmp_path, 12, f"reference: {ref}\n")
    cfg = ExtractConfig(trait=TraitConfig(path=str(trait)), method=MethodConfig(name="mean_diff"), layers="8",
                        extraction=ExtractionConfig(batch_size="auto", n_bootstrap=200, cv_folds=0),
                        tracking=TrackingConfig(experiment="positive_only_cap"))
    res = run_extract(cfg, lm=smollm2)
    assert res.extraction.reference == str(ref) and "extraction.batch_size" in res.extraction.batch_sizes
    v = SteeringVector.from_registry(res.trait, "smollm2_135m", "8", experiment="positive_only_cap")
    forwards = []
    handle = smollm2.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        proj = training_projections(smollm2, v, experiment="positive_only_cap", uri=None)[8]
    finally:
        handle.remove()
    assert forwards == []
    assert proj.numel() == res.extraction.counts["n_train_pos"] + res.extraction.counts["n_train_neg"] == 22
    assert float(proj.mean()) == pytest.approx(res.metrics[8]["baseline"], rel=1e-4, abs=1e-4)
