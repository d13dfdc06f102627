"""Model identity: a LoRA or quantized variant is another model even under the same display name.

The registry, run tags and judge caches key on the identity (id, weights digest, quantization, adapter);
using a base model's vectors on a variant is explicit (`model.vectors_from=base`) and tagged. Real SmolLM2,
a random LoRA adapter that keeps the display name `smollm2_135m`, a real MLflow store.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from pair_trait import write_pair_trait
from test_lora import write_random_lora

from traitlab.config.infer import InferConfig, InferenceConfig
from traitlab.config.schema import (
    ExtractConfig,
    GenerationConfig,
    MethodConfig,
    TrackingConfig,
    TraitConfig,
)
from traitlab.errors import ConfigError
from traitlab.judge.base import ScoreRequest
from traitlab.judge.cache import ScoreCache
from traitlab.judge.cheap import PerplexityCoherence
from traitlab.judge.hf_local import HFLocalSource
from traitlab.judge.scoring import LogprobJudge
from traitlab.models.loading import ModelSpec, load_model
from traitlab.pipelines.extract import run_extract
from traitlab.pipelines.infer import run_infer
from traitlab.tracking.registry import find_vectors

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    return write_random_lora(tmp_path_factory.mktemp("identity_lora") / "adapter")


@pytest.fixture(scope="module")
def variant(lora_dir):
    """The base model plus an adapter, under the base model's display name (what `model.lora=...` gives)."""
    return load_model(ModelSpec(lora=str(lora_dir)))


@pytest.fixture
def trait_dir(tmp_path):
    return write_pair_trait(tmp_path / "mine" / "cheer")


def test_variants_have_their_own_identity(lora_dir):
    from traitlab.models.identity import identity_of

    base, renamed = identity_of(ModelSpec()), identity_of(ModelSpec(name="my-label"))
    lora, nf4 = identity_of(ModelSpec(lora=str(lora_dir))), identity_of(ModelSpec(quantization="nf4"))
    assert base.key == renamed.key  # the display name is a label
    assert len({base.key, lora.key, nf4.key}) == 3
    assert base.key.startswith("embedded:smollm2-135m-instruct@sha256:") and lora.key.startswith(base.key + "+lora:")
    assert nf4.key == base.key + "+nf4"


def test_registry_and_tags_keep_base_and_variant_apart(mlflow_store, smollm2, variant, lora_dir, trait_dir):
    from traitlab.models.identity import identity_of

    def extract(spec, lm):
        return run_extract(ExtractConfig(model=spec, trait=TraitConfig(path=str(trait_dir)), layers="3",
                                         method=MethodConfig(name="mean_diff"),
                                         tracking=TrackingConfig(experiment="identity")), lm=lm)

    base_run = extract(ModelSpec(), smollm2)
    var_spec = ModelSpec(lora=str(lora_dir))
    var_run = extract(var_spec, variant)
    trait = base_run.trait
    assert {r.run_id for r in find_vectors(trait, ModelSpec(), experiment="identity")} == {base_run.run_id}
    assert {r.run_id for r in find_vectors(trait, var_spec, experiment="identity")} == {var_run.run_id}
    tags = MlflowClient(mlflow_store).get_run(var_run.run_id).data.tags
    assert tags["model"] == identity_of(var_spec).key and tags["model_name"] == "smollm2_135m"
    # the base model's vectors on the variant, asked for explicitly
    on_variant = ModelSpec(lora=str(lora_dir), vectors_from="base")
    assert {r.run_id for r in find_vectors(trait, on_variant, experiment="identity")} == {base_run.run_id}


def test_variant_uses_base_vectors_only_when_asked(mlflow_store, smollm2, variant, lora_dir, trait_dir):
    from traitlab.models.identity import identity_of

    base_run = run_extract(ExtractConfig(trait=TraitConfig(path=str(trait_dir)), layers="3",
                                         method=MethodConfig(name="mean_diff"),
                                         tracking=TrackingConfig(experiment="identity-infer")), lm=smollm2)

    def infer(spec):
        return run_infer(InferConfig(model=spec, traits=[base_run.trait], layers="3", prompt_set="smoke",
                                     inference=InferenceConfig(max_prompts=1,
                                                               generation=GenerationConfig(max_new_tokens=4)),
                                     tracking=TrackingConfig(experiment="identity-infer")), lm=variant)

    with pytest.raises(ConfigError, match="vectors_from=base"):
        infer(ModelSpec(lora=str(lora_dir)))  # the variant has no vectors of its own: never the base's silently
    res = infer(ModelSpec(lora=str(lora_dir), vectors_from="base"))
    tags = MlflowClient(mlflow_store).get_run(res.run_id).data.tags
    assert tags["model"] == identity_of(ModelSpec(lora=str(lora_dir))).key
    assert tags["vectors_model"] == identity_of(ModelSpec()).key
    assert res.records[0]["traits"][base_run.trait]["layers"]["3"]["vector"]["run_id"] == base_run.run_id


def test_judge_caches_do_not_serve_one_models_answers_to_another(smollm2, variant):
    req = [ScoreRequest(question="How are you today?", response="I am fine, thank you for asking.",
                        trait="optimism", definition="Expecting good outcomes.")]
    shared = ScoreCache(None)
    base_ppl = PerplexityCoherence(smollm2, cache=shared).perplexities(req)[0]
    variant_ppl = PerplexityCoherence(variant, cache=shared).perplexities(req)[0]
    alone = PerplexityCoherence(variant, cache=ScoreCache(None)).perplexities(req)[0]
    assert variant_ppl == pytest.approx(alone) and abs(variant_ppl - base_ppl) > 1e-3 * base_ppl

    def coherence_logprobs(lm, cache):
        return LogprobJudge(HFLocalSource(lm, scale_max=9), cache=cache).score(req)[0].raw["coherence"]["top_logprobs"]

    base_lp = coherence_logprobs(smollm2, shared)
    variant_lp = coherence_logprobs(variant, shared)
    assert variant_lp == coherence_logprobs(variant, ScoreCache(None)) and variant_lp != base_lp
