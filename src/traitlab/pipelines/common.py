"""Pieces several stages share: model identity for cache keys, chat-formatting examples, cached
responses and cached pooled activations (content-addressed, atomic, locked per key)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock

from traitlab import faults
from traitlab.config.schema import GenerationConfig
from traitlab.data import Example
from traitlab.errors import DataError
from traitlab.io import atomic_write_json, content_hash, load_tensors, read_json, save_tensors
from traitlab.models.capture import TextPair, capture_pooled
from traitlab.models.chat import format_prompt
from traitlab.models.generation import generate_texts
from traitlab.models.loading import LoadedModel
from traitlab.paths import cache_dir

log = logging.getLogger(__name__)


def _adapter_digest(lora: str | None) -> str | None:
    """Hash of a local LoRA adapter's files, so retraining an adapter in place invalidates its caches."""
    if not lora:
        return None
    d = Path(lora).expanduser()
    if not d.is_dir():
        return lora
    import hashlib

    h = hashlib.sha256()
    for f in sorted(d.glob("adapter_*")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def model_key(lm: LoadedModel) -> str:
    s = lm.spec
    parts = [s.id, s.gguf_file, s.revision, s.quantization, s.lora, str(lm.dtype), lm.use_chat_template]
    if s.lora:
        parts.append(_adapter_digest(s.lora))
    return content_hash("model-v1", *parts)


def prompt_texts(lm: LoadedModel, examples: Sequence[Example]) -> list[str]:
    return [format_prompt(lm.tokenizer, e.prompt, e.system_prompt, lm.use_chat_template) for e in examples]


def _locked(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def responses_for(
    lm: LoadedModel, examples: Sequence[Example], gen: GenerationConfig, seed: int, use_provided: bool = True,
    desc: str = "generate",
) -> list[str]:
    """The dataset's responses where given, else greedy/seeded generations (cached on disk by content)."""
    texts = prompt_texts(lm, examples)
    missing = [i for i, e in enumerate(examples) if not (use_provided and e.response)]
    out = [e.response or "" for e in examples]
    if not missing:
        return out
    key = content_hash("responses-v1", model_key(lm), [texts[i] for i in missing], asdict(gen), seed)
    path = cache_dir() / "responses" / f"{key}.json"
    with _locked(path):
        cached = None
        if path.is_file():
            try:
                cached = read_json(path)
            except DataError:
                log.warning("%s is damaged: regenerating", path)
        if not (isinstance(cached, list) and len(cached) == len(missing)):
            gens = generate_texts(lm, [texts[i] for i in missing], max_new_tokens=gen.max_new_tokens,
                                  batch_size=gen.batch_size, seed=seed, do_sample=gen.do_sample,
                                  temperature=gen.temperature, top_p=gen.top_p, desc=desc,
                                  hooks=faults.batch_fault("generate"))
            cached = [g.text for g in gens]
            atomic_write_json(path, cached)
    for i, text in zip(missing, cached, strict=True):
        out[i] = text
    return out


def pooled_activations(
    lm: LoadedModel, examples: Sequence[Example], responses: Sequence[str], *, position: str, component: str,
    layers: Sequence[int], batch_size: int, max_length: int, desc: str = "capture",
) -> torch.Tensor:
    """[N, len(layers), D] float32, cached by (model, texts, position, component, layers, max_length)."""
    texts = prompt_texts(lm, examples)
    key = content_hash("acts-v2", model_key(lm), texts, list(responses), position, component, list(layers),
                       max_length)
    path = cache_dir() / "activations" / f"{key}.safetensors"
    with _locked(path):
        if path.is_file():
            try:
                tensors, _ = load_tensors(path)
                acts = tensors["acts"]
                if acts.shape[:2] == (len(examples), len(layers)):
                    return acts
            except (DataError, KeyError):
                pass
            log.warning("%s is damaged or stale: recapturing", path)
        pairs = [TextPair(t, r) for t, r in zip(texts, responses, strict=True)]
        acts = capture_pooled(lm, pairs, position=position, layers=layers, component=component,
                              batch_size=batch_size, max_length=max_length, desc=desc)
        faults.maybe_fail("capture")
        save_tensors(path, {"acts": acts}, {"position": position, "component": component})
    return acts
