"""Shared fixtures: a tiny random Llama built from a config (no download) and the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# One shared cache (converted model, activations, responses) for every test, even those that move
# outputs/ or the MLflow store into a temp dir.
os.environ.setdefault("TRAITLAB_CACHE", str(ROOT / "outputs" / "cache"))
os.environ.setdefault("TRAITLAB_ROOT", str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama():
    """A 4-layer Llama with hidden 32, GQA (4 heads, 2 kv heads), random weights, eval mode, float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    return model


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (from the safetensors cache after the first load)."""
    from traitlab.models.loading import load_model

    return load_model("smollm2_135m")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh real MLflow sqlite store (artifacts beside it) and outputs dir in tmp; returns the URI."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TRAITLAB_OUTPUTS", str(tmp_path / "outputs"))
    return uri


@pytest.fixture(scope="session")
def tiny_lm(tiny_llama):
    """`tiny_llama` as a LoadedModel with a real character-level tokenizer (ids < 128, left padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from traitlab.models.loading import LoadedModel, ModelSpec

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ?.,!'"
    vocab.update({c: 4 + i for i, c in enumerate(chars)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", padding_side="left")
    return LoadedModel(model=tiny_llama, tokenizer=tok, spec=ModelSpec(name="tiny_llama", id="tiny_llama"),
                       use_chat_template=False)
