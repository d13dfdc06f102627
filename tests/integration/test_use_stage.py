"""The "use" half on the real SmolLM2 with a real temp MLflow store: SteeringVector from the registry (best
vector, layer lists, run ids, the steering study's best coefficient) and applied to the real model."""

from __future__ import annotations

import pytest
import torch

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.steer import JudgeConfig, SteerConfig, SteeringConfig
from traitlab.errors import ConfigError
from traitlab.judge import JudgeScore
from traitlab.models.chat import format_prompt
from traitlab.models.generation import generate_texts
from traitlab.pipelines import steer
from traitlab.pipelines.extract import run_extract
from traitlab.steering_vector import SteeringVector
from traitlab.tracking.registry import best_vector, fetch_vector, find_vectors, steering_results

pytestmark = pytest.mark.slow
EXP = "use-it"
TRAIT = "starter/optimism"


class LengthScorer:
    """A stand-in judge (the registry plumbing is under test, not a judge): trait = words of the response x 10,
    coherence = 100 minus 10 per repeated word."""

    def score(self, requests):
        out = []
        for r in requests:
            words = r.response.lower().split()
            out.append(JudgeScore(trait=min(100.0, 10.0 * len(words)),
                                  coherence=max(0.0, 100.0 - 10.0 * (len(words) - len(set(words))))))
        return out


@pytest.fixture(scope="module")
def store(tmp_path_factory, smollm2):
    """mean_diff vectors of optimism at layers 10 and 12, and a short steering study of layer 10."""
    tmp = tmp_path_factory.mktemp("use_store")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("TRAITLAB_OUTPUTS", str(tmp / "outputs"))
        ext = run_extract(ExtractConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"),
                                        layers="10,12", tracking=TrackingConfig(experiment=EXP)), lm=smollm2)
        st = steer.run_steer(SteerConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"),
                                         layers="10", judge=JudgeConfig(backend="hf_local"),
                                         steering=SteeringConfig(n_questions=2, max_new_tokens=8, steps=2),
                                         tracking=TrackingConfig(experiment=EXP)), lm=smollm2, judge=LengthScorer())
        yield {"uri": uri, "extract_run": ext.run_id, "steer_run": st.run_id}


def test_from_registry_best_layer_and_provenance(store):
    v = SteeringVector.from_registry(TRAIT, "smollm2_135m", experiment=EXP)
    best = best_vector(TRAIT, "smollm2_135m", experiment=EXP)
    assert v.layers == [best.layer] and best.layer in (10, 12)
    assert torch.equal(v[best.layer], fetch_vector(best, experiment=EXP).float())
    assert (v.trait, v.model, v.method, v.component, v.position) == (
        TRAIT, "smollm2_135m", "mean_diff", "residual", "response[:]")
    assert v.model_id == "embedded:smollm2-135m-instruct" and v.source_run == store["extract_run"]
    assert "val_effect_size" in v.metrics[best.layer]


def test_from_registry_layer_lists_run_ids_and_errors(store):
    both = SteeringVector.from_registry(TRAIT, "smollm2_135m", "10,12", experiment=EXP)
    assert both.layers == [10, 12]
    refs = {r.layer: r for r in find_vectors(TRAIT, "smollm2_135m", experiment=EXP)}
    assert torch.equal(both[12], fetch_vector(refs[12], experiment=EXP).float())
    by_run = SteeringVector.from_spec(f"run:{store['extract_run']}", layers="10,12", experiment=EXP)
    by_steer_run = SteeringVector.from_spec(store["steer_run"], layers="10,12", experiment=EXP)
    for v in (by_run, by_steer_run):
        assert v.layers == [10, 12] and torch.equal(v[10], both[10]) and v.source_run == store["extract_run"]
    with pytest.raises(ConfigError, match=r"has vectors at layers \[10, 12\]"):
        SteeringVector.from_registry(TRAIT, "smollm2_135m", "20", experiment=EXP)
    with pytest.raises(ConfigError, match="extract first"):
        SteeringVector.from_registry("starter/refusal", "smollm2_135m", experiment=EXP)
    with pytest.raises(ConfigError, match="no MLflow run"):
        SteeringVector.from_spec("run:" + "0" * 32, experiment=EXP)


def test_best_coefficient_is_the_steering_studys(store):
    rows = [r for r in steering_results(TRAIT, "smollm2_135m", experiment=EXP) if r["layer"] == 10]
    v = SteeringVector.from_registry(TRAIT, "smollm2_135m", "10,12", experiment=EXP)
    if not rows:  # no coherent trial in the short study: nothing to report, and nothing invented
        assert v.best_coefficients == {}
        pytest.skip("the short study found no coherent coefficient")
    want = max(rows, key=lambda r: r["best_delta"])["best_coefficient"]
    assert v.best_coefficients == {10: pytest.approx(want)}  # layer 12 was not studied: no entry


def test_saved_vector_steers_the_real_model_and_is_removed(store, smollm2, tmp_path):
    v = SteeringVector.from_registry(TRAIT, "smollm2_135m", "10", experiment=EXP)
    back = SteeringVector.load(v.save(tmp_path / "optimism.safetensors"))
    text = [format_prompt(smollm2.tokenizer, "Describe your Monday.", None, smollm2.use_chat_template)]
    plain = generate_texts(smollm2, text, max_new_tokens=12, desc=None)[0].text
    with back.apply(smollm2, coefficient=60.0):
        steered = generate_texts(smollm2, text, max_new_tokens=12, desc=None)[0].text
    again = generate_texts(smollm2, text, max_new_tokens=12, desc=None)[0].text
    assert steered != plain and again == plain
