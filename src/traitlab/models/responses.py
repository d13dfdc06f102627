"""Prompts and responses of a loaded model: the cache key of the model as loaded, formatted prompts (with where
their parts sit), and the dataset's responses or cached generations. Shared by every stage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock

from traitlab import faults
from traitlab.config.schema import GenerationConfig
from traitlab.data import Example
from traitlab.errors import DataError
from traitlab.io import atomic_write_json, content_hash, read_json
from traitlab.models.chat import PromptLayout, format_conversation, format_prompt
from traitlab.models.generation import generate_texts
from traitlab.models.loading import LoadedModel
from traitlab.models.segments import thinking_chars
from traitlab.paths import cache_dir

log = logging.getLogger(__name__)


def model_key(lm: LoadedModel) -> str:
    """Cache key of a loaded model: its identity (weights, quantization, adapter; models/identity.py) plus what
    changes its activations without changing the identity (dtype, chat template on or off)."""
    return content_hash("model-v2", lm.identity.key, str(lm.dtype), lm.use_chat_template)


def prompt_texts(lm: LoadedModel, examples: Sequence[Example]) -> list[str]:
    return [format_prompt(lm.tokenizer, e.prompt, e.system_prompt, lm.use_chat_template, e.history)
            for e in examples]


def prompt_layouts(lm: LoadedModel, examples: Sequence[Example], responses: Sequence[str]) -> list[PromptLayout]:
    """Formatted prompts with where their parts sit. A response that holds a thinking block is read in thinking
    mode (the template then leaves the reasoning open for it instead of closing an empty block)."""
    return [format_conversation(lm.tokenizer, e.prompt, e.system_prompt, lm.use_chat_template, e.history,
                                thinking=thinking_chars(r or "") is not None)
            for e, r in zip(examples, responses, strict=True)]


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
