"""`batch_size=auto` in a real extraction job on SmolLM2: measured once per setting, used, and logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import (
    ExtractConfig,
    ExtractionConfig,
    GenerationConfig,
    MethodConfig,
    TrackingConfig,
    TraitConfig,
)
from traitlab.pipelines.extract import run_extract

pytestmark = pytest.mark.slow
SOURCE = Path(__file__).resolve().parents[2] / "datasets" / "traits" / "starter" / "optimism"


def test_extraction_measures_auto_batch_sizes_once_and_logs_them(smollm2, mlflow_store, tmp_path):
    d = tmp_path / "optimism_prompts"
    d.mkdir()
    for side in ("positive", "negative"):
        rows = [json.loads(x) for x in (SOURCE / f"{side}.jsonl").read_text().splitlines()[:6]]
        (d / f"{side}.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "system_prompt": r["system_prompt"]})
                                                 + "\n" for r in rows))
    cfg = ExtractConfig(trait=TraitConfig(path=str(d)), method=MethodConfig(name="mean_diff"), layers="3",
                        extraction=ExtractionConfig(batch_size="auto", cv_folds=0, n_bootstrap=200,
                                                    generation=GenerationConfig(max_new_tokens=8, batch_size="auto")),
                        tracking=TrackingConfig(experiment="auto_batch"))
    seen: list[tuple[int, int]] = []
    handle = smollm2.model.register_forward_pre_hook(
        lambda _m, args, kw: seen.append(tuple((kw.get("input_ids") if kw.get("input_ids") is not None
                                                else args[0]).shape)), with_kwargs=True)
    try:
        res = run_extract(cfg, lm=smollm2)
    finally:
        handle.remove()
    sizes = res.extraction.batch_sizes
    assert set(sizes) == {"extraction.batch_size", "extraction.generation.batch_size"}
    assert all(1 <= v <= 12 for v in sizes.values())  # never more rows than the job has
    metrics = MlflowClient(mlflow_store).get_run(res.run_id).data.metrics
    assert metrics["auto_batch/extraction.batch_size"] == sizes["extraction.batch_size"]
    assert metrics["auto_batch/extraction.generation.batch_size"] == sizes["extraction.generation.batch_size"]
    # the measurements were real forwards that doubled to the chosen size: 1, 2, 4, ... on one row length
    probes = [s for s in seen if s[0] in (1, 2, 4, 8, 12)]
    assert [b for b, _ in probes[:2]] == [1, 2]
    gen_probe_len = probes[0][1]
    assert any(b == sizes["extraction.generation.batch_size"] and n == gen_probe_len for b, n in seen)


class _LengthScorer:
    """Stands in for a judge: the plumbing of batch sizes is under test, not the scores."""

    def score(self, requests):
        from traitlab.judge import JudgeScore

        return [JudgeScore(trait=float(len(r.response) % 100), coherence=90.0) for r in requests]


def test_steering_measures_auto_once_logs_it_and_keeps_auto_in_the_job_key(smollm2, mlflow_store, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path / "cache"))  # the baselines are generated, not read back
    from traitlab.config.steer import JudgeConfig, PropensityConfig, SteerConfig, SteeringConfig
    from traitlab.pipelines import steer

    cfg = SteerConfig(trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name="mean_diff"), layers="10",
                      mode="baseline", judge=JudgeConfig(backend="hf_local"),
                      steering=SteeringConfig(n_questions=2, max_new_tokens=4, batch_size="auto", objective="judge",
                                              propensity=PropensityConfig(max_pairs=0)),
                      tracking=TrackingConfig(experiment="auto_batch_steer"))
    rows: list[int] = []
    handle = smollm2.model.register_forward_pre_hook(
        lambda _m, args, kw: rows.append(int((kw.get("input_ids") if kw.get("input_ids") is not None
                                              else args[0]).shape[0])), with_kwargs=True)
    try:
        res = steer.run_steer(cfg, lm=smollm2, judge=_LengthScorer())
    finally:
        handle.remove()
    size = MlflowClient(mlflow_store).get_run(res.run_id).data.metrics["auto_batch/steering.batch_size"]
    # 2 questions x (unsteered, prompted) = 4 rows at most in one generate; the probes doubled 1, 2, 4
    assert size == 4 and rows[:3] == [1, 2, 4]
    assert 4 in rows[3:]  # the baselines' generate ran its 4 rows as one batch of the measured size
    again = steer.run_steer(cfg, lm=smollm2, judge=_LengthScorer())
    assert again.skipped and again.run_id == res.run_id  # `auto` in the key: found again, not re-measured


def test_neutral_calibration_measures_auto(smollm2, mlflow_store, tmp_path, monkeypatch):
    """analysis=calibration scores no prompt set, so its batch size is measured on the neutral set itself."""
    from traitlab.config.analyze import AnalysisConfig, AnalyzeConfig
    from traitlab.config.infer import InferenceConfig, MassiveConfig
    from traitlab.pipelines.analyze import run_analyze

    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path / "cache"))  # a fresh calibration, not a stored one
    cfg = AnalyzeConfig(analysis=AnalysisConfig(name="calibration"), layers="10,12",
                        inference=InferenceConfig(batch_size="auto", massive=MassiveConfig(set="neutral", max_tokens=300)),
                        tracking=TrackingConfig(experiment="auto_batch_calibration"))
    res = run_analyze(cfg, lm=smollm2)
    record = res.values["record"]
    assert record["set"] == "neutral:default" and record["n_tokens"] >= 300 and 507 in res.values["dims"][12]
