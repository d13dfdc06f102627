"""Where things live inside a model: decoder layers, per-layer components, the trunk and the unembedding.

Every hook in traitlab asks this module for its module or dotted path, so supporting a new architecture
means editing the name tables below and nothing else. Lookup is by module names and attributes (duck
typing), so this file never imports transformers or peft.

Components (``COMPONENTS``):

- ``residual``: the decoder block's output (the residual stream after layer N).
- ``attn_contribution``: what attention adds to the residual stream. On Llama-style blocks that is the
  output of ``self_attn.o_proj``; on Gemma2/Gemma3/OLMo2-style blocks with sandwich norms (detected by a
  ``post_feedforward_layernorm``) the attention output is normed again before the residual add, so it is
  the output of ``post_attention_layernorm`` (which on Llama is instead the *pre*-MLP norm).
- ``mlp_contribution``: ``mlp.down_proj`` (Llama-style) or ``post_feedforward_layernorm`` (sandwich norms);
  an MoE block without a single down projection contributes through the MLP module itself.
- ``k_proj`` / ``v_proj``: ``self_attn.k_proj`` / ``v_proj`` outputs, of width num_kv_heads * head_dim.

Dotted paths are relative to the model object passed in, so ``model.get_submodule(hook_path(...))`` is
``get_module(...)`` also for PEFT-wrapped models (``base_model.model.model.layers.3``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from traitlab.errors import ConfigError, ModelError

COMPONENTS = ("residual", "attn_contribution", "mlp_contribution", "k_proj", "v_proj")

_LAYER_LIST_NAMES = ("layers", "h", "blocks")
# ModuleLists under these path parts belong to vision/audio towers of multimodal models, not the LM.
_NON_TEXT_PARTS = ("vision", "visual", "audio", "image", "encoder")
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_ATTN_OUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_MLP_OUT_NAMES = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2")
_FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "norm_f", "final_norm")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The underlying model of a PEFT wrapper (PeftModel -> LoraModel -> CausalLM); others unchanged."""
    seen = 0
    while seen < 4:  # PeftModel wraps a tuner that wraps the model; never loop forever on odd objects
        seen += 1
        get_base = getattr(type(model), "get_base_model", None)
        if callable(get_base):
            model = model.get_base_model()
            continue
        if type(model).__name__.endswith(("LoraModel", "TunerModel")) and isinstance(
            getattr(model, "model", None), nn.Module
        ):
            model = model.model
            continue
        break
    return model


# Path of the decoder-layer list per model object: walking every module costs ~0.5 ms per lookup on a
# 30-layer model, and hooks look layers up dozens of times per forward. The path is re-checked on use.
_LAYER_PATHS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def _find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    path = _LAYER_PATHS.get(model)
    if path is not None:
        try:
            cached = model.get_submodule(path)
        except AttributeError:
            cached = None
        if isinstance(cached, nn.ModuleList) and len(cached) > 0:
            return path, cached
    path, layers = _search_layers(model)
    _LAYER_PATHS[model] = path
    return path, layers


def _search_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)]
    candidates = [
        (name, mod)
        for name, mod in lists
        if name.rsplit(".", 1)[-1] in _LAYER_LIST_NAMES
        and len(mod) > 0
        and not any(part in seg for seg in name.split(".") for part in _NON_TEXT_PARTS)
    ]
    if not candidates:
        found = ", ".join(f"{name or '<root>'} ({len(mod)})" for name, mod in lists) or "none"
        raise ModelError(
            f"cannot find the decoder layers of {type(model).__name__}: expected an nn.ModuleList named "
            f"{'|'.join(_LAYER_LIST_NAMES)}; ModuleLists found: {found}"
        )
    # Most blocks wins; on a tie the shallower path (the LM trunk rather than something nested in it).
    return max(candidates, key=lambda c: (len(c[1]), -c[0].count(".")))


def get_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder block list (``model.model.layers`` on Llama-style CausalLMs, also through PEFT)."""
    return _find_layers(model)[1]


def num_layers(model: nn.Module) -> int:
    return len(get_decoder_layers(model))


@contextmanager
def running_only_layers(model: nn.Module, start: int, stop: int) -> Iterator[None]:
    """Inside the block, a forward of the trunk runs decoder layers [start, stop) only, then its final norm.

    The blocks are the same modules (same weights, hooks and ``layer_idx``, so a KV cache fills at the right
    layer indices); only the list the trunk iterates is swapped, and restored on exit. Models whose forward
    picks a mask or rotary table by the loop index (mixed sliding/full attention layers) would misread a
    slice: callers check ``uniform_attention(model)`` first. Enter layer hooks BEFORE this block: inside it,
    layer lookups see the slice.
    """
    path, layers = _find_layers(model)
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= len(layers)):
        raise ModelError(f"running_only_layers: need 0 <= start < stop <= {len(layers)}, got [{start}, {stop})")
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, nn.ModuleList(list(layers)[start:stop]))
    try:
        yield
    finally:
        setattr(parent, name, layers)


def uniform_attention(model: nn.Module) -> bool:
    """True when every decoder layer is a full-attention layer (no per-layer mask or rotary variants)."""
    kinds = getattr(_text_config(model), "layer_types", None)
    return kinds is None or all(kind == "full_attention" for kind in kinds)


def _text_config(model: nn.Module):
    cfg = getattr(unwrap_peft(model), "config", None)
    get_text = getattr(cfg, "get_text_config", None)
    return get_text() if callable(get_text) else cfg


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream, from the (text) config, else from the input embeddings."""
    cfg = _text_config(model)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    get_emb = getattr(unwrap_peft(model), "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if emb is not None and hasattr(emb, "embedding_dim"):
        return int(emb.embedding_dim)
    raise ModelError(
        f"cannot tell the hidden size of {type(model).__name__}: no config.hidden_size and no embeddings"
    )


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ConfigError(
            "component", f"unknown component {component!r}; expected one of {'|'.join(COMPONENTS)}"
        )


def _first_child(parent: nn.Module, names: tuple[str, ...]) -> str | None:
    children = dict(parent.named_children())
    return next((n for n in names if n in children), None)


def _children(module: nn.Module) -> str:
    return ", ".join(n for n, _ in module.named_children()) or "none"


def _component_suffix(block: nn.Module, component: str, where: str) -> str:
    """Dotted path of ``component`` inside one decoder block ('' for the block itself)."""
    if component == "residual":
        return ""
    sandwich = hasattr(block, "post_feedforward_layernorm")
    if component == "attn_contribution" and sandwich and hasattr(block, "post_attention_layernorm"):
        return "post_attention_layernorm"
    if component == "mlp_contribution" and sandwich:
        return "post_feedforward_layernorm"
    if component == "mlp_contribution":
        mlp = _first_child(block, _MLP_NAMES)
        if mlp is None:
            raise ModelError(
                f"{where}: no MLP module (looked for {'|'.join(_MLP_NAMES)}); block children: {_children(block)}"
            )
        down = _first_child(getattr(block, mlp), _MLP_OUT_NAMES)
        return f"{mlp}.{down}" if down is not None else mlp
    attn = _first_child(block, _ATTN_NAMES)
    if attn is None:
        raise ModelError(
            f"{where}: no attention module (looked for {'|'.join(_ATTN_NAMES)}); block children: {_children(block)}"
        )
    wanted = _ATTN_OUT_NAMES if component == "attn_contribution" else (component,)
    child = _first_child(getattr(block, attn), wanted)
    if child is None:
        raise ModelError(
            f"{where}: {component} needs {attn}.{'|'.join(wanted)}; {attn} children: "
            f"{_children(getattr(block, attn))}"
        )
    return f"{attn}.{child}"


def hook_path(model: nn.Module, layer: int, component: str = "residual") -> str:
    """Dotted module name (relative to ``model``) whose forward output is ``component`` at ``layer``."""
    _check_component(component)
    path, layers = _find_layers(model)
    n = len(layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ModelError(f"layer {layer!r} is out of range; valid layers are 0..{n - 1} (n_layers {n})")
    block_path = f"{path}.{layer}" if path else str(layer)
    suffix = _component_suffix(layers[layer], component, f"{type(layers[layer]).__name__} at {block_path}")
    return f"{block_path}.{suffix}" if suffix else block_path


def get_module(model: nn.Module, layer: int, component: str = "residual") -> nn.Module:
    """The module to hook for ``component`` at ``layer``."""
    return model.get_submodule(hook_path(model, layer, component))


def component_dim(model: nn.Module, component: str, layer: int = 0) -> int:
    """Width of the component's output: hidden size, or num_kv_heads * head_dim for k_proj/v_proj."""
    _check_component(component)
    if component not in ("k_proj", "v_proj"):
        return hidden_size(model)
    module = get_module(model, layer, component)
    for m in (module, getattr(module, "base_layer", None)):  # PEFT LoRA wraps the Linear in base_layer
        out = getattr(m, "out_features", None)
        if isinstance(out, int):
            return out
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    raise ModelError(
        f"cannot tell the output width of {component} ({type(module).__name__}) at layer {layer}"
    )


def base_model(model: nn.Module) -> nn.Module:
    """The transformer trunk without the LM head (the module that owns the decoder layers).

    Running it instead of the CausalLM skips the vocab-sized logits, the largest tensor of a prefill.
    """
    path, _ = _find_layers(model)
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return model.get_submodule(parent) if parent else model


def unembedding(model: nn.Module) -> tuple[nn.Module | None, nn.Parameter]:
    """(final norm module or None, LM-head weight [vocab, hidden]) for the logit lens."""
    inner = unwrap_peft(model)
    get_out = getattr(inner, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is None:
        head = getattr(inner, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is None:
        raise ModelError(
            f"{type(inner).__name__} has no LM head (a bare base model?); load the CausalLM for the logit lens"
        )
    trunk = base_model(model)
    name = _first_child(trunk, _FINAL_NORM_NAMES)
    return (getattr(trunk, name) if name is not None else None), weight
