"""`traitlab serve` registration: a steering configuration registered in a real MLflow model registry (tags,
no pickle, registered once), loaded back by MLflow's own pyfunc loader, answering chat requests with the
same text traitlab's own SteeringHook gives (and the unsteered text when a request sets the coefficient to
0). The HTTP server itself is exercised by tests/e2e/test_readme_export_serve.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.config.serve import ServeConfig
from traitlab.core.hooks import SteeringHook
from traitlab.errors import ConfigError
from traitlab.models.identity import model_tags
from traitlab.models.loading import ModelSpec
from traitlab.pipelines.common import source_vector
from traitlab.pipelines.extract import run_extract
from traitlab.pipelines.serve import run_serve, serve_coefficients
from traitlab.tracking.registry import fetch_vector, find_vectors

pytestmark = pytest.mark.slow
EXP = "serve"
TRAIT = "starter/optimism"
QUESTION = "How do you think my job interview tomorrow will go?"
TOKENS = 20


def local_reply(lm, coefficient: float, vector: torch.Tensor) -> str:
    """Greedy reply computed here, independently of traitlab.serving: the chat template and a hook."""
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                            add_generation_prompt=True)
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with SteeringHook(lm.model, 10, vector, coefficient), torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=TOKENS, do_sample=False,
                                pad_token_id=lm.tokenizer.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if lm.tokenizer.eos_token_id in new:
        new = new[: new.index(lm.tokenizer.eos_token_id)]
    return lm.tokenizer.decode(new, skip_special_tokens=True).strip()


def reply_text(response: dict) -> str:
    (message,) = response["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    return "".join(part["text"] for part in message["content"])


def test_registered_steering_model_answers_steered_chat_requests(smollm2, mlflow_store, tmp_path):
    tracking = TrackingConfig(experiment=EXP)
    run_extract(ExtractConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="9-11",
                              tracking=tracking), lm=smollm2)
    res = run_serve(ServeConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="10",
                                coefficient=8.0, max_new_tokens=TOKENS, register_only=True, tracking=tracking))
    assert (res.name, res.version, res.coefficients) == ("traitlab-optimism", "1", {10: 8.0})
    again = run_serve(ServeConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="10",
                                  coefficient=8.0, max_new_tokens=TOKENS, register_only=True, tracking=tracking))
    assert (again.skipped, again.version) == (True, "1")  # the same configuration is not registered twice

    client = MlflowClient(mlflow_store, registry_uri=mlflow_store)
    tags = client.get_model_version(res.name, res.version).tags
    assert tags["trait"] == TRAIT and tags["layers"] == "10" and tags["coefficients"] == "10:8"
    assert tags["model_id"] == "embedded:smollm2-135m-instruct" and tags["mode"] == "add"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{res.name}/{res.version}",
                                                     dst_path=str(tmp_path / "model"), tracking_uri=mlflow_store))
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle", ".joblib"))], files
    assert "artifacts/steering/steering.json" in files and "artifacts/steering/vectors/layer_010.safetensors" in files
    mlmodel = (local / "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "python_function" in mlmodel

    served = mlflow.pyfunc.load_model(str(local))  # MLflow's loader runs the logged code, unpickles nothing
    ask = {"input": [{"role": "user", "content": QUESTION}], "max_output_tokens": TOKENS}
    unsteered = served.predict({**ask, "custom_inputs": {"coefficient": 0}})
    steered = served.predict(ask)  # the registered coefficient, 8
    assert unsteered["custom_outputs"]["coefficients"] == {"10": 0.0}
    assert steered["custom_outputs"]["coefficients"] == {"10": 8.0}
    assert steered["custom_outputs"]["layers"] == [10] and steered["custom_outputs"]["mode"] == "add"

    vector = fetch_vector(find_vectors(TRAIT, "smollm2_135m", experiment=EXP, layer=10)[0], experiment=EXP)
    print(f"\nserved unsteered: {reply_text(unsteered)!r}\nserved c=8:       {reply_text(steered)!r}")
    assert reply_text(unsteered) == local_reply(smollm2, 0.0, vector)
    assert reply_text(steered) == local_reply(smollm2, 8.0, vector)
    assert reply_text(steered) != reply_text(unsteered)

    # coefficient=null (or best): the steering study's best coherent coefficient of this very vector, read as
    # generate and chat read it (SteeringVector.best_coefficients, from the registry's steering_results)
    cfg = ServeConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"), layers="9-10",
                      tracking=tracking)
    vector, _ = source_vector(cfg)
    assert torch.equal(vector[10], res_vector(res, local))  # serve registered what the shared lookup picks
    with pytest.raises(ConfigError, match=r"config coefficient: coefficient=best: .* no steering result at layers "
                                          r"\[9, 10\].*coefficient=<number>"):
        serve_coefficients(cfg, vector)
    steer_run = client.create_run(client.get_experiment_by_name(EXP).experiment_id, tags={
        "traitlab.stage": "steer", "trait": TRAIT, **model_tags(ModelSpec()), "method": "mean_diff",
        "component": "residual", "position": "response[:]",
        "traitlab.vector_run_id": f"other,{vector.source_run}",
        "traitlab.vector_runs": f"8:other,9:{vector.source_run},10:{vector.source_run}"})
    for layer, coef in ((9, 6.5), (10, 11.0)):
        for key, value in (("layer/objective_delta", 3.0), ("layer/coherence", 80.0), ("layer/coefficient", coef)):
            client.log_metric(steer_run.info.run_id, key, value, step=layer)
    client.set_terminated(steer_run.info.run_id)
    vector, _ = source_vector(cfg)
    assert serve_coefficients(cfg, vector) == {9: 6.5, 10: 11.0}
    assert serve_coefficients(replace(cfg, coefficient="best"), vector) == {9: 6.5, 10: 11.0}
    assert serve_coefficients(replace(cfg, coefficient=2), vector) == {9: 2.0, 10: 2.0}


def res_vector(res, local: Path) -> torch.Tensor:
    """The layer-10 vector inside the registered model's steering bundle."""
    from traitlab.serving.bundle import read_bundle

    return read_bundle(local / "artifacts" / "steering").vectors[10]
