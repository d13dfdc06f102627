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
from traitlab.models.identity import model_tags
from traitlab.models.loading import ModelSpec
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
    assert (v.trait, v.model, v.model_name, v.method, v.component, v.position) == (
        TRAIT, model_tags(ModelSpec())["model"], "smollm2_135m", "mean_diff", "residual", "response[:]")
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
    want = max(rows, key=lambda r: r["delta"])["coefficient"]
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


# ------------------------------------------------------------------------------------------------ generate


def _gen_cfg(**kw):
    from traitlab.config.generate import GenerateConfig
    from traitlab.config.schema import GenerationConfig

    base = dict(vectors=TRAIT, layers="10", coefficient=8.0, prompt_set="smoke", max_prompts=2,
                generation=GenerationConfig(max_new_tokens=8), tracking=TrackingConfig(experiment=EXP))
    return GenerateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def generated(store, smollm2):
    from traitlab.pipelines.generate import run_generate

    return run_generate(_gen_cfg(monitor_layers="10,12"), lm=smollm2)


def _raw(rec, layer):
    return [None if x is None else float(x) for x in rec["traits"][TRAIT]["layers"][str(layer)]["raw"]]


def test_generation_scores_equal_a_teacher_forced_pass(store, smollm2, generated):
    """The projections taken inside generate equal a prefill of prompt + reply under the same steering."""
    from traitlab.models.encoding import Encoded, pad_id_of
    from traitlab.monitor.scoring import project_encoded

    v = SteeringVector.from_registry(TRAIT, "smollm2_135m", "10,12", experiment=EXP)
    stacked = {10: v[10].unsqueeze(0), 12: v[12].unsqueeze(0)}
    steer10 = SteeringVector.from_registry(TRAIT, "smollm2_135m", "10", experiment=EXP)
    checked = 0
    for cond in ("unsteered", "steered"):
        recs = generated.records[cond]
        enc = [Encoded(r["token_ids"], r["n_prompt_tokens"]) for r in recs]
        ctx = steer10.apply(smollm2, 8.0) if cond == "steered" else torch.no_grad()
        with ctx:
            forced = project_encoded(smollm2.model, enc, stacked, batch_size=2, pad_id=pad_id_of(smollm2.tokenizer))
        for rec, f in zip(recs, forced, strict=True):
            n_resp = len(rec["token_ids"]) - rec["n_prompt_tokens"]
            for layer in (10, 12):
                got, want = _raw(rec, layer), f.scores[layer][:, 0].tolist()
                for g, w in zip(got, want, strict=True):
                    if g is not None:
                        assert g == pytest.approx(w, rel=2e-3, abs=2e-2)
                        checked += 1
                if n_resp == 8:  # cut by max_new_tokens: its last token was never fed back
                    assert got[-1] is None and all(g is not None for g in got[:-1])
    assert checked > 40


def test_generate_logs_pairs_shifts_and_views(store, generated):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store["uri"])
    run = client.get_run(generated.run_id)
    assert run.data.tags["traitlab.stage"] == "generate" and run.data.tags["mode"] == "add"
    assert "shift" in run.data.tags["mlflow.note.content"] and run.data.params["coefficient"] == "8.0"
    assert [p["prompt_id"] for p in generated.pairs] == ["s01", "s02"]
    assert any(p["steered"] != p["unsteered"] for p in generated.pairs)
    # each shift is the mean over prompts of (steered - unsteered) mean response scores, recomputed from the JSONs
    local = client.download_artifacts(generated.run_id, "projections")
    import json
    from pathlib import Path

    recs = {p.stem: json.loads(p.read_text()) for p in Path(local).glob("*.json")}
    assert sorted(recs) == ["s01_steered", "s01_unsteered", "s02_steered", "s02_unsteered"]
    for s in generated.shifts:
        def mean(rec, s=s):
            xs = [x for x in rec["traits"][s["trait"]]["layers"][str(s["layer"])]["scores"][rec["n_prompt_tokens"]:]
                  if x is not None]
            return sum(xs) / len(xs)
        diffs = [mean(recs[f"{p}_steered"]) - mean(recs[f"{p}_unsteered"]) for p in ("s01", "s02")]
        assert s["shift"] == pytest.approx(sum(diffs) / 2, abs=1e-9) and s["n"] == 2
        assert s["low"] <= s["shift"] <= s["high"]
        hist = client.get_metric_history(generated.run_id, f"layer/shift/{s['trait']}")
        assert (s["layer"], pytest.approx(s["shift"], abs=1e-4)) in [(m.step, m.value) for m in hist]
        assert [m.value for m in client.get_metric_history(generated.run_id, f"layer/n/{s['trait']}")] == [2, 2]
    arts = {f.path for f in client.list_artifacts(generated.run_id, "views/prompts")}
    assert {"views/prompts/s01_steered.html", "views/prompts/s01_unsteered.html"} <= arts
    assert {f.path for f in client.list_artifacts(generated.run_id, "tables")} >= {"tables/side_by_side.json",
                                                                                   "tables/shift.json"}
    applied = SteeringVector.load(client.download_artifacts(generated.run_id, "steering/vector_0.safetensors"))
    assert applied.layers == [10] and applied.source_run == store["extract_run"]


def test_generate_cleans_monitored_vectors_with_a_neutral_calibration(store, smollm2, generated):
    """calibration=neutral clean_massive=true: the monitored vectors lose the calibration's massive dims (SmolLM2:
    dim 507 at layer 12, none at layer 10), so layer 10 scores are unchanged and layer 12's first token differs."""
    from mlflow.tracking import MlflowClient

    from traitlab.config.infer import MassiveConfig
    from traitlab.pipelines.generate import run_generate

    res = run_generate(_gen_cfg(monitor_layers="10,12", clean_massive=True, calibration="neutral",
                                massive=MassiveConfig(set="smoke", max_new_tokens=8)), lm=smollm2)
    tags = MlflowClient(store["uri"]).get_run(res.run_id).data.tags
    assert tags["massive_calibration"] == "neutral:smoke"
    for before, after in zip(generated.records["unsteered"], res.records["unsteered"], strict=True):
        assert after["clean_massive"] and after["token_ids"] == before["token_ids"]
        assert _raw(after, 10)[:5] == pytest.approx(_raw(before, 10)[:5], rel=1e-4, abs=1e-4)
        assert abs(_raw(after, 12)[0] - _raw(before, 12)[0]) > 1.0


def test_ablation_leaves_nothing_along_the_vector(store, smollm2):
    from traitlab.pipelines.generate import run_generate

    res = run_generate(_gen_cfg(mode="ablate", monitor_layers="10"), lm=smollm2)
    for rec in res.records["steered"]:
        raw = [x for x in _raw(rec, 10) if x is not None]
        assert max(abs(x) for x in raw) < 1e-2  # raw projections are O(1-100) unsteered
    assert max(abs(x) for r in res.records["unsteered"] for x in _raw(r, 10) if x is not None) > 1.0


def test_cap_thresholds_come_from_the_training_projections(store, smollm2):
    from traitlab.config.generate import CapConfig
    from traitlab.pipelines.common import training_projections
    from traitlab.pipelines.generate import run_generate

    v = SteeringVector.from_registry(TRAIT, "smollm2_135m", "10", experiment=EXP)
    proj = training_projections(smollm2, v, experiment=EXP, uri=None)[10]
    # the extraction logged the training centroid's projection ("baseline"): the same examples, the same split
    assert float(proj.mean()) == pytest.approx(v.metrics[10]["baseline"], rel=1e-4, abs=1e-4)
    res = run_generate(_gen_cfg(mode="cap", monitor_layers="10", cap=CapConfig(quantile=0.5)), lm=smollm2)
    tau = float(torch.quantile(proj, 0.5))
    steered = [x for r in res.records["steered"] for x in _raw(r, 10) if x is not None]
    plain = [x for r in res.records["unsteered"] for x in _raw(r, 10) if x is not None]
    assert max(steered) <= tau + 1e-3 < max(plain)


def test_weighted_composition_and_conversations(store, smollm2, tmp_path):
    """v - v composes to nothing: the steered replies equal the unsteered ones, the shift is exactly 0."""
    import json

    from traitlab.pipelines.generate import run_generate

    f = SteeringVector.from_registry(TRAIT, "smollm2_135m", "10", experiment=EXP).save(tmp_path / "opt.safetensors")
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"id": "c1", "messages": [
        {"role": "user", "content": "I lost my keys."}, {"role": "assistant", "content": "Oh no! Where were you?"},
        {"role": "user", "content": "At the park. What now?"}]}) + "\n")
    res = run_generate(_gen_cfg(vectors=[TRAIT, str(f)], weights="1,-1", conversations=str(chats),
                                prompt_set="smoke"), lm=smollm2)
    assert res.pairs[0]["steered"] == res.pairs[0]["unsteered"] and res.pairs[0]["prompt"] == "At the park. What now?"
    assert all(s["shift"] == 0.0 for s in res.shifts)
    rec = res.records["steered"][0]
    assert rec["conversation"][1]["content"] == "Oh no! Where were you?"


def test_generate_errors_before_the_model_loads(store, monkeypatch):
    from traitlab.pipelines import generate

    def no_model(*a, **k):
        raise AssertionError("must fail before loading the model")

    monkeypatch.setattr(generate, "load_model", no_model)
    with pytest.raises(ConfigError, match="coefficient=best: starter/optimism L12 has no steering result"):
        generate.run_generate(_gen_cfg(layers="12", coefficient="best"))
    with pytest.raises(ConfigError, match="extract first"):
        generate.run_generate(_gen_cfg(vectors="starter/refusal"))
    with pytest.raises(ConfigError, match="2 weights for 1 vectors"):
        generate.run_generate(_gen_cfg(weights=[1, 2]))
    with pytest.raises(ConfigError, match="no such vector file"):
        generate.run_generate(_gen_cfg(vectors="missing.safetensors"))
    with pytest.raises(ConfigError, match="config monitor: no vectors of trait 'starter/refusal'"):
        generate.run_generate(_gen_cfg(monitor=["starter/refusal"]))


def test_add_response_starts_at_the_last_prompt_token(store, smollm2):
    from traitlab.pipelines.generate import run_generate

    res = run_generate(_gen_cfg(mode="add_response", monitor_layers="12", max_prompts=1), lm=smollm2)
    plain, steered = res.records["unsteered"][0], res.records["steered"][0]
    n = plain["n_prompt_tokens"]
    a, b = _raw(plain, 12)[:n], _raw(steered, 12)[:n]
    assert a[:-1] == pytest.approx(b[:-1], abs=1e-4)  # the prompt before its last token is not steered
    assert abs(a[-1] - b[-1]) > 0.1  # the last prompt token, which produces the first answer token, is


def test_conversation_text_with_the_real_template(smollm2):
    from traitlab.data.texts import Conversation
    from traitlab.models.chat import format_messages
    from traitlab.pipelines.common import conversation_text

    tok = smollm2.tokenizer
    conv = Conversation("c", ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "How are you?"}))
    text = conversation_text(smollm2, conv.messages)
    assert text.index("Hi") < text.index("Hello!") < text.index("How are you?")
    assert text.endswith("<|im_start|>assistant\n") and text == format_messages(tok, list(conv.messages))
    single = Conversation.single("s", "Hi", "Be brief")  # one turn: formatted as every stage formats a prompt
    assert conversation_text(smollm2, single.messages) == format_prompt(tok, "Hi", "Be brief")
