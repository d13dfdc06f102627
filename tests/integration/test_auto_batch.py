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
