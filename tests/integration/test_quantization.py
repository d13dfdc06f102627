"""bitsandbytes int8 / nf4 variants of the real SmolLM2 on CPU: they load quantized, answer, and hooks work.

bitsandbytes 0.50 ships a CPU library (libbitsandbytes_cpu.so) and registers CPU kernels for LLM.int8 and
nf4. These tests skip only when that native library cannot be loaded on this machine; a missing
bitsandbytes install is a setup error (pip install 'traitlab[quant]') and fails.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from traitlab.core.hooks import MultiLayerProjection
from traitlab.models.chat import format_prompt
from traitlab.models.generation import generate_texts
from traitlab.models.loading import ModelSpec, bnb_backend_error, load_model

pytestmark = pytest.mark.slow

LINEAR = {"int8": "Linear8bitLt", "nf4": "Linear4bit"}


@pytest.fixture(scope="module", autouse=True)
def _bitsandbytes_cpu():
    assert importlib.util.find_spec("bitsandbytes") is not None, (
        "bitsandbytes is not installed: pip install 'traitlab[quant]' (bitsandbytes==0.50.2)")
    why = bnb_backend_error()
    if why is not None:
        pytest.skip(f"bitsandbytes' CPU backend is missing here: {why}")


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantized_model_loads_and_answers(smollm2, quantization):
    lm = load_model(ModelSpec(name=f"smollm2_135m-{quantization}", quantization=quantization, device="cpu"),
                    reuse=False)
    kinds = {type(m).__name__ for m in lm.model.modules()}
    assert LINEAR[quantization] in kinds and "Linear" in kinds  # quantized projections; lm_head stays dense
    q_proj = lm.model.model.layers[3].self_attn.q_proj
    assert type(q_proj).__name__ == LINEAR[quantization]
    assert q_proj.weight.dtype == (torch.int8 if quantization == "int8" else torch.uint8)
    prompt = format_prompt(lm.tokenizer, "What is the capital of France?", None, lm.use_chat_template)
    assert "Paris" in generate_texts(lm, [prompt], max_new_tokens=8, desc=None)[0].text

    # hooks read the quantized model like any other: per-token scores track the float model's closely
    ids = lm.tokenizer([prompt + " The capital of France is Paris."], return_tensors="pt")
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    scores = {}
    for name, m in (("float", smollm2), ("quant", lm)):
        with torch.inference_mode(), MultiLayerProjection(m.model, {10: v}) as proj:
            m.model(**ids)
        scores[name] = proj.scores(10)[0]
    assert not torch.equal(scores["float"], scores["quant"])  # really a different model
    assert torch.corrcoef(torch.stack([scores["float"], scores["quant"]]))[0, 1] > 0.9
