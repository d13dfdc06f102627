"""Where components live, checked functionally: the block's output minus its input must equal the sum of
what the attn_contribution and mlp_contribution modules output, on Llama, Qwen2, Gemma2 and PEFT models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import traitlab.core.components as components_mod
from traitlab.core.components import (
    COMPONENTS,
    base_model,
    component_dim,
    get_decoder_layers,
    get_module,
    hidden_size,
    hook_path,
    num_layers,
    unembedding,
    unwrap_peft,
)
from traitlab.errors import ConfigError, ModelError


def _out(output):
    return output[0] if isinstance(output, tuple) else output


def _residual_deltas_match(model: nn.Module, layer: int, vocab: int) -> None:
    """block_out - block_in == attn_contribution + mlp_contribution for this block."""
    seen: dict[str, torch.Tensor] = {}
    block = get_module(model, layer, "residual")

    def pre(_m, args, kwargs):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handles = [block.register_forward_pre_hook(pre, with_kwargs=True)]
    for comp in ("residual", "attn_contribution", "mlp_contribution"):
        mod = get_module(model, layer, comp)
        handles.append(
            mod.register_forward_hook(lambda _m, _i, o, c=comp: seen.__setitem__(c, _out(o).detach()))
        )
    try:
        with torch.no_grad():
            model(input_ids=torch.randint(3, vocab, (2, 5)))
    finally:
        for h in handles:
            h.remove()
    delta = seen["residual"] - seen["in"]
    torch.testing.assert_close(
        delta, seen["attn_contribution"] + seen["mlp_contribution"], atol=1e-5, rtol=1e-4
    )
    # Guard against a vacuous pass: both contributions are non-trivial.
    assert seen["attn_contribution"].abs().max() > 1e-4 and seen["mlp_contribution"].abs().max() > 1e-4


def test_tiny_llama_paths_and_objects(tiny_llama):
    m = tiny_llama
    assert get_decoder_layers(m) is m.model.layers
    assert num_layers(m) == 4 and hidden_size(m) == 32
    assert get_module(m, 2, "residual") is m.model.layers[2]
    assert get_module(m, 2, "attn_contribution") is m.model.layers[2].self_attn.o_proj
    assert get_module(m, 2, "mlp_contribution") is m.model.layers[2].mlp.down_proj
    assert get_module(m, 3, "k_proj") is m.model.layers[3].self_attn.k_proj
    assert get_module(m, 0, "v_proj") is m.model.layers[0].self_attn.v_proj
    assert hook_path(m, 1, "attn_contribution") == "model.layers.1.self_attn.o_proj"
    assert hook_path(m, 1) == "model.layers.1"
    for comp in COMPONENTS:
        assert m.get_submodule(hook_path(m, 3, comp)) is get_module(m, 3, comp)
    assert [component_dim(m, c) for c in COMPONENTS] == [32, 32, 32, 16, 16]  # 2 kv heads * head_dim 8
    assert base_model(m) is m.model
    norm, weight = unembedding(m)
    assert norm is m.model.norm and weight is m.lm_head.weight and weight.shape == (128, 32)
    _residual_deltas_match(m, 1, 128)


def test_bare_base_model(tiny_llama):
    trunk = tiny_llama.model
    assert get_decoder_layers(trunk) is trunk.layers
    assert hook_path(trunk, 0, "mlp_contribution") == "layers.0.mlp.down_proj"
    assert base_model(trunk) is trunk
    with pytest.raises(ModelError, match="no LM head"):
        unembedding(trunk)


def test_errors_on_tiny_llama(tiny_llama):
    with pytest.raises(ConfigError) as info:
        get_module(tiny_llama, 0, "attention")
    assert str(info.value) == (
        "config component: unknown component 'attention'; expected one of "
        "residual|attn_contribution|mlp_contribution|k_proj|v_proj"
    )
    with pytest.raises(ConfigError, match="expected one of"):
        component_dim(tiny_llama, "resid")
    for bad in (4, -1, True, "1"):
        with pytest.raises(ModelError, match=r"valid layers are 0\.\.3 \(n_layers 4\)"):
            hook_path(tiny_llama, bad, "residual")


def test_gemma2_uses_post_norms():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        pad_token_id=0,
    )
    m = Gemma2ForCausalLM(cfg).eval()
    layer = m.model.layers[1]
    assert get_module(m, 1, "attn_contribution") is layer.post_attention_layernorm
    assert get_module(m, 1, "mlp_contribution") is layer.post_feedforward_layernorm
    assert get_module(m, 1, "k_proj") is layer.self_attn.k_proj
    assert component_dim(m, "v_proj") == 8 and component_dim(m, "residual") == 16
    assert unembedding(m)[0] is m.model.norm
    _residual_deltas_match(m, 1, 64)


def test_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    m = Qwen2ForCausalLM(cfg).eval()
    assert num_layers(m) == 3 and hidden_size(m) == 24
    assert get_module(m, 2, "attn_contribution") is m.model.layers[2].self_attn.o_proj
    assert component_dim(m, "k_proj", layer=2) == 12  # 2 kv heads * head_dim 6
    assert base_model(m) is m.model
    _residual_deltas_match(m, 0, 64)


def test_peft_wrapped_llama(tiny_llama):
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    inner = copy.deepcopy(tiny_llama)
    peft_model = get_peft_model(
        inner, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    assert unwrap_peft(peft_model) is inner
    assert get_decoder_layers(peft_model) is inner.model.layers
    assert hook_path(peft_model, 2, "v_proj") == "base_model.model.model.layers.2.self_attn.v_proj"
    v = get_module(peft_model, 2, "v_proj")
    # The LoRA wrapper (whose output includes the adapter), not its base_layer.
    assert v is inner.model.layers[2].self_attn.v_proj and hasattr(v, "lora_A")
    assert component_dim(peft_model, "v_proj") == 16 and component_dim(peft_model, "k_proj") == 16
    assert hidden_size(peft_model) == 32 and num_layers(peft_model) == 4
    assert base_model(peft_model) is inner.model
    norm, weight = unembedding(peft_model)
    assert norm is inner.model.norm and weight is inner.lm_head.weight
    _residual_deltas_match(peft_model, 3, 128)


def test_model_without_layers_lists_module_lists():
    with pytest.raises(ModelError) as info:
        get_decoder_layers(nn.Linear(4, 4))
    assert "cannot find the decoder layers of Linear" in str(info.value)
    assert "ModuleLists found: none" in str(info.value)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ModelError, match=r"ModuleLists found: stack \(1\)"):
        num_layers(Odd())


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mixer = nn.Linear(4, 4)


class _Toy(nn.Module):
    """A decoder with an unknown block layout, plus a longer vision tower that must be ignored."""

    def __init__(self):
        super().__init__()
        self.vision_tower = nn.Module()
        self.vision_tower.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(5)])
        self.lm = nn.Module()
        self.lm.layers = nn.ModuleList([_Block() for _ in range(2)])


def test_unknown_block_layout_lists_children():
    toy = _Toy()
    assert get_decoder_layers(toy) is toy.lm.layers  # vision tower skipped although longer
    assert get_module(toy, 1, "residual") is toy.lm.layers[1]
    assert hidden_size_from_embeddings_fails(toy)
    with pytest.raises(ModelError) as info:
        get_module(toy, 1, "attn_contribution")
    assert "_Block at lm.layers.1: no attention module" in str(info.value)
    assert "block children: mixer" in str(info.value)
    with pytest.raises(ModelError, match="no MLP module.*block children: mixer"):
        get_module(toy, 0, "mlp_contribution")


def hidden_size_from_embeddings_fails(model: nn.Module) -> bool:
    with pytest.raises(ModelError, match="cannot tell the hidden size of _Toy"):
        hidden_size(model)
    return True


def test_fused_qkv_has_no_k_proj():
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    m = Phi3ForCausalLM(cfg).eval()
    assert get_module(m, 0, "attn_contribution") is m.model.layers[0].self_attn.o_proj
    assert get_module(m, 0, "mlp_contribution") is m.model.layers[0].mlp.down_proj
    with pytest.raises(
        ModelError, match=r"k_proj needs self_attn\.k_proj; self_attn children: o_proj, qkv_proj"
    ):
        get_module(m, 0, "k_proj")


def test_core_modules_do_not_import_heavy_libraries_at_module_level():
    core = Path(components_mod.__file__).parent
    banned = {"transformers", "peft", "hydra", "mlflow", "optuna"}
    for name in ("positions.py", "layers.py", "components.py"):
        tree = ast.parse((core / name).read_text())
        for node in tree.body:  # module level only; imports inside functions are allowed
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & banned, (name, roots)
