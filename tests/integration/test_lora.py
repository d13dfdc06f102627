"""LoRA model variants (peft) on the real SmolLM2: a RANDOM adapter loads as its own model, extraction runs
on it, and per-token projection scores differ from the base model's while base vs base is exactly zero."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TraitConfig
from traitlab.core.hooks import MultiLayerProjection
from traitlab.errors import ConfigError, ModelError
from traitlab.models.capture import TextPair, encode_pairs
from traitlab.models.chat import format_prompt
from traitlab.models.encoding import pad_id_of, padded_inputs
from traitlab.models.generation import generate_texts
from traitlab.models.loading import ModelSpec, load_model, resolve_lora
from traitlab.paths import conf_dir, datasets_dir
from traitlab.pipelines.extract import run_extract

VARIANT = "smollm2_135m+lora"


def write_random_lora(out_dir: str | Path, seed: int = 0, r: int = 8) -> Path:
    """Save a non-trained LoRA for SmolLM2 on q_proj/v_proj; init_lora_weights=False makes B non-zero."""
    from peft import LoraConfig, get_peft_model

    lm = load_model("smollm2_135m", reuse=False)  # a private copy: get_peft_model edits its model in place
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                     task_type="CAUSAL_LM")
    get_peft_model(lm.model, cfg).save_pretrained(str(out_dir))
    return Path(out_dir)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    return write_random_lora(tmp_path_factory.mktemp("lora") / "smollm2-random-qv")


@pytest.fixture(scope="module")
def variant(lora_dir):
    return load_model(ModelSpec(name=VARIANT, lora=str(lora_dir)))


def _projection(lm, pairs, vectors):
    enc = encode_pairs(lm, pairs)
    inputs = padded_inputs(enc, pad_id_of(lm.tokenizer), lm.device)
    with torch.inference_mode(), MultiLayerProjection(lm.model, vectors) as proj:
        lm.model(**inputs, use_cache=False)
    return proj.all_scores(), inputs["attention_mask"]


@pytest.mark.slow
def test_lora_variant_is_a_separate_model(smollm2, variant, lora_dir):
    from peft import PeftModel

    assert isinstance(variant.model, PeftModel) and variant is not smollm2
    assert (variant.n_layers, variant.hidden_size, variant.name) == (30, 576, VARIANT)
    assert load_model(ModelSpec(name=VARIANT, lora=str(lora_dir))) is variant  # in-process reuse
    lora_modules = [n for n, _ in variant.model.named_modules() if n.endswith("lora_A")]
    assert len(lora_modules) == 2 * 30  # q_proj and v_proj of every layer
    assert not any("lora_" in n for n, _ in smollm2.model.named_modules())  # the base was not wrapped
    prompt = format_prompt(variant.tokenizer, "What is the capital of France?", None, variant.use_chat_template)
    assert len(generate_texts(variant, [prompt], max_new_tokens=8, desc=None)[0].token_ids) > 0


@pytest.mark.slow
def test_per_token_projection_differs_from_base(smollm2, variant):
    pairs = [TextPair(format_prompt(smollm2.tokenizer, "How will tomorrow go?", None, True),
                      "Tomorrow will be a bright and productive day."),
             TextPair(format_prompt(smollm2.tokenizer, "Describe rain.", None, True), "Rain is wet.")]
    g = torch.Generator().manual_seed(0)
    vectors = {layer: torch.randn(3, 576, generator=g) for layer in (0, 14, 29)}
    base1, mask = _projection(smollm2, pairs, vectors)
    base2, _ = _projection(smollm2, pairs, vectors)
    lora, _ = _projection(variant, pairs, vectors)
    real = mask.bool()
    for layer in vectors:
        assert torch.equal(base1[layer], base2[layer])  # same model, same tokens: exactly zero difference
        delta = (lora[layer] - base1[layer]).abs()
        assert delta[real].min() > 0 and delta[real].mean() > 0.05, layer  # every real token moved
        assert delta[~real].abs().max() == 0  # pad positions score 0 on both


@pytest.mark.slow
def test_extraction_runs_on_the_variant(mlflow_store, smollm2, variant, lora_dir):
    cfg = ExtractConfig(model=ModelSpec(name=VARIANT, lora=str(lora_dir)), trait=TraitConfig(name="starter/optimism"),
                        method=MethodConfig(name="mean_diff"), layers="1,3")
    res = run_extract(cfg)
    assert not res.skipped and res.layers == [1, 3]
    for v in res.vectors.values():
        assert abs(float(v.norm()) - 1.0) < 1e-4
    run = MlflowClient(mlflow_store).get_run(res.run_id)
    assert run.data.tags["model_name"] == VARIANT and run.data.params["model.lora"] == str(lora_dir)
    assert run.data.tags["model"] == variant.identity.key != smollm2.identity.key
    assert run.info.status == "FINISHED" and "layer/val_accuracy" in run.data.metrics
    base = run_extract(replace(cfg, model=ModelSpec()))
    assert base.run_id != res.run_id
    # the variant's activations were used (not the base's cached ones): the vectors differ
    cos = float(base.vectors[3] @ res.vectors[3])
    assert cos < 1 - 1e-3


@pytest.fixture
def tmp_registry(tmp_path, monkeypatch) -> Path:
    adapters = tmp_path / "datasets" / "adapters" / "mine"
    adapters.mkdir(parents=True)
    (tmp_path / "datasets" / "loras.yaml").write_text(yaml.safe_dump({
        "mine": {"path": "adapters/mine", "base": "smollm2_135m"},
        "short": "adapters/mine",
        "hub": {"path": "someone/some-adapter"},
        "gone": {"path": "./adapters/missing"},
    }))
    monkeypatch.setenv("TRAITLAB_DATASETS", str(tmp_path / "datasets"))
    return adapters


def test_registry_names_resolve(tmp_registry):
    adapters = tmp_registry
    assert resolve_lora("mine") == str(adapters) == resolve_lora("short")
    assert resolve_lora(str(adapters)) == str(adapters)  # a directory needs no entry
    assert resolve_lora("hub") == "someone/some-adapter"
    with pytest.raises(ConfigError, match="not a directory"):
        resolve_lora("gone")
    with pytest.raises(ConfigError, match=r"known: gone, hub, mine, short"):
        resolve_lora("nope")


@pytest.mark.slow
def test_unloadable_adapter_is_one_model_error(tmp_registry):
    with pytest.raises(ModelError, match=r"^model.lora 'hub': cannot load adapter someone/some-adapter \(") as e:
        load_model(ModelSpec(name="smollm2_135m+hub", lora="hub"), reuse=False)  # offline: not on the Hub
    assert "\n" not in str(e.value)


def test_shipped_registry_and_lora_diff_preset():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from traitlab.cli import bootstrap

    registry = yaml.safe_load((datasets_dir() / "loras.yaml").read_text())
    assert registry and all({"path", "base"} <= set(e) for e in registry.values())
    preset = conf_dir() / "experiment" / "lora_diff.yaml"
    assert preset.read_text().splitlines()[0] == "# @package _global_"
    bootstrap()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("analyze", overrides=["+experiment=lora_diff"]))
    assert cfg.analysis.name == "model_diff"
    assert cfg.variant_a.lora is None and cfg.variant_b.lora in registry
    assert replace(cfg.variant_b, lora=None, name=cfg.variant_a.name) == cfg.variant_a  # only the adapter differs
