"""Response vetting with REAL judges: llama.cpp's OpenAI-compatible server and the in-process SmolLM2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import (
    ExtractConfig,
    ExtractionConfig,
    GenerationConfig,
    JudgeConfig,
    MethodConfig,
    TrackingConfig,
    TraitConfig,
    VettingConfig,
)
from traitlab.data import load_trait
from traitlab.judge import ScoreRequest, make_judge
from traitlab.judge.vetting import _WARNED
from traitlab.pipelines.common import responses_for
from traitlab.pipelines.extract import fit_trait, run_extract
from traitlab.pipelines.trait_data import vetting_on

pytestmark = pytest.mark.slow
SOURCE = Path(__file__).resolve().parents[2] / "datasets" / "traits" / "starter" / "optimism"
GEN = GenerationConfig(max_new_tokens=16)
N_PAIRS = 8


@pytest.fixture(scope="module")
def prompt_only_trait(tmp_path_factory) -> Path:
    """The first pairs of starter/optimism without their responses: the model writes them, under each side's
    system prompt, so some come out not showing their side."""
    d = tmp_path_factory.mktemp("vet") / "optimism_generated"
    d.mkdir()
    for side in ("positive", "negative"):
        rows = [json.loads(x) for x in (SOURCE / f"{side}.jsonl").read_text().splitlines()[:N_PAIRS]]
        (d / f"{side}.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "system_prompt": r["system_prompt"]})
                                                 + "\n" for r in rows))
    for f in ("definition.txt", "steering.json"):
        shutil.copy(SOURCE / f, d / f)
    return d


def _server_judge(base_url: str, tmp: Path) -> JudgeConfig:
    # SmolLM2 puts ~0.2 of its next-token mass on digits: min_weight 0.1, as conf/judge/hf_local.yaml
    return JudgeConfig(backend="openai_compatible", base_url=base_url, min_weight=0.1, concurrency=2,
                       cache_path=str(tmp / "judge.sqlite"))


def _cfg(trait_dir: Path, judge: JudgeConfig, **vet) -> ExtractConfig:
    return ExtractConfig(trait=TraitConfig(path=str(trait_dir)), method=MethodConfig(name="mean_diff"), layers="10",
                         extraction=ExtractionConfig(cv_folds=0, n_bootstrap=200, generation=GEN,
                                                     vetting=VettingConfig(**vet)),
                         judge=judge, tracking=TrackingConfig(experiment="vetting"))


def test_real_judge_vets_by_default_and_drops_exactly_the_pairs_its_scores_fail(
        smollm2, llama_server, prompt_only_trait, mlflow_store, tmp_path):
    jcfg = _server_judge(llama_server, tmp_path)
    trait = load_trait(prompt_only_trait)
    # The expected drops, from the judge's scores of the same generated responses (the rule applied by hand).
    judge = make_judge(vars(jcfg))
    scores = {}
    for side in ("positive", "negative"):
        examples = getattr(trait, side)
        texts = responses_for(smollm2, examples, GEN, 42)
        scores[side] = [s.trait for s in judge.score([ScoreRequest(e.prompt, t, trait.name, trait.definition)
                                                      for e, t in zip(examples, texts, strict=True)])]
    assert all(s is not None for side in scores.values() for s in side)
    pos_min = sorted(scores["positive"])[1]   # the lowest positive fails ...
    neg_max = sorted(scores["negative"])[-2]  # ... and the highest negative
    fail = {i for i, s in enumerate(scores["positive"]) if s < pos_min} | \
           {i for i, s in enumerate(scores["negative"]) if s > neg_max}
    assert 1 <= len(fail) <= 4

    res = run_extract(_cfg(prompt_only_trait, jcfg, positive_min=pos_min, negative_max=neg_max), lm=smollm2)
    run = MlflowClient(mlflow_store).get_run(res.run_id)
    m = run.data.metrics
    assert m["n_vetted_pos"] == m["n_vetted_neg"] == N_PAIRS  # enabled=auto: on, with a real judge
    assert m["n_vetted_dropped_pos"] == m["n_vetted_dropped_neg"] == len(fail)
    assert m["n_train_pos"] + m["n_val_pos"] == N_PAIRS - len(fail)
    table = json.loads(Path(MlflowClient(mlflow_store).download_artifacts(
        res.run_id, "tables/vetting_dropped.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    assert {r["row"] for r in rows} == fail and len(rows) == 2 * len(fail)
    for r in rows:
        assert r["score"] == pytest.approx(scores[r["polarity"]][r["row"]])
    assert "vetting: dropped" in run.data.tags["mlflow.note.content"]


def test_embedded_judge_vets_only_when_asked_and_says_it_cannot_see_traits(smollm2, prompt_only_trait, caplog):
    hf_local = JudgeConfig(backend="hf_local", min_weight=0.1)
    _WARNED.discard("hf_local")  # warned once per process: make this test see it whatever ran before
    assert not vetting_on(_cfg(prompt_only_trait, hf_local))  # enabled=auto: off with the embedded judge
    on = fit_trait(_cfg(prompt_only_trait, hf_local, enabled=True, positive_min=0.0, negative_max=100.0), smollm2)
    assert "cannot tell whether a response shows a trait" in caplog.text
    assert on.vetting is not None and on.vetting.counts["n_vetted_pos"] == N_PAIRS
    assert sum(r["score"] is not None for r in on.vetting.rows) >= N_PAIRS  # the in-process judge really scored


def test_provided_responses_are_not_vetted(smollm2, llama_server, tmp_path):
    cfg = _cfg(SOURCE, _server_judge(llama_server, tmp_path), positive_min=100.0, negative_max=0.0)
    ex = fit_trait(ExtractConfig(**{**vars(cfg), "layers": "10"}), smollm2)
    assert ex.vetting.counts["n_vetted_pos"] == ex.vetting.counts["n_vetted_neg"] == 0
    assert ex.vetting.counts["n_vetted_dropped_pos"] == 0 and ex.counts["n_train_pos"] + ex.counts["n_val_pos"] == 70
    assert any("nothing was judged" in w for w in ex.warnings)
