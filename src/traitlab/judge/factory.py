"""Build a Scorer from the `judge` config group; unknown backends and keys fail with the valid choices."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.judge.base import Scorer
from traitlab.judge.cache import ScoreCache

BACKENDS = ("openai", "openai_compatible", "hf_local", "perplexity")
RUBRICS = ("trait", "axbench")  # trait: trait score + coherence; axbench: concept, instruction, fluency
DEFAULTS: dict[str, Any] = {
    "backend": "openai",
    "model": None,  # openai: gpt-4.1-mini; openai_compatible: the server's first model; hf_local: smollm2_135m
    "base_url": None,
    "api_key_env": None,  # openai: OPENAI_API_KEY; openai_compatible: none (no key sent)
    "max_retries": 4,
    "timeout_s": 30.0,
    "backoff_s": 1.0,
    "max_backoff_s": 30.0,
    "concurrency": 8,
    "min_weight": 0.25,
    "top_logprobs": 20,
    "scale_max": "auto",  # auto | 100 | 9 (digit-splitting judges, see judge/scoring.py)
    "cache_path": "default",  # "default" -> <cache_dir>/judge_cache.sqlite; null -> in-memory only
    "rubric": "trait",
    "relevance_check": False,
    "prompts_dir": None,  # null -> datasets/llm_judge
    "trait_prompt_path": None,  # trait-level trait_score prompt file (after inline eval_prompt)
    "batch_size": 16,  # hf_local / perplexity forward batch
    "perplexity_combine": None,  # null | min | mean | perplexity: also score coherence by perplexity and combine
    "ppl_min": None,
    "ppl_max": None,
}
_IGNORED = {"_target_", "name"}  # Hydra bookkeeping keys a config group may carry
# Judge settings that change a score (retries, timeouts, concurrency and cache location do not).
JUDGE_SEMANTIC = ("backend", "model", "base_url", "min_weight", "top_logprobs", "scale_max", "relevance_check",
                  "perplexity_combine", "ppl_min", "ppl_max")


def _cache(path: Any) -> ScoreCache:
    if path is None or str(path).lower() in ("", "none", "null"):
        return ScoreCache(None)
    if path == "default":
        from traitlab.paths import cache_dir

        path = cache_dir() / "judge_cache.sqlite"
    return ScoreCache(Path(path))


def resolve_judge_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULTS overlaid with cfg; rejects unknown keys and backends, naming the valid ones."""
    cfg = dict(cfg or {})
    unknown = sorted(k for k in cfg if k not in DEFAULTS and k not in _IGNORED)
    if unknown:
        raise ConfigError(f"judge.{unknown[0]}", f"unknown key; valid keys: {', '.join(DEFAULTS)}")
    out = dict(DEFAULTS)
    out.update({k: v for k, v in cfg.items() if k in DEFAULTS})
    if out["backend"] not in BACKENDS:
        raise ConfigError("judge.backend", f"'{out['backend']}' is not one of {', '.join(BACKENDS)}")
    if out["rubric"] not in RUBRICS:
        raise ConfigError("judge.rubric", f"'{out['rubric']}' is not one of {', '.join(RUBRICS)}")
    if out["rubric"] == "axbench" and out["backend"] == "perplexity":
        raise ConfigError("judge.rubric", "axbench needs an LLM judge (openai, openai_compatible or hf_local); "
                                          "the perplexity backend scores coherence only")
    if out["rubric"] == "axbench" and out["relevance_check"]:
        raise ConfigError("judge.relevance_check", "applies to rubric=trait only; rubric=axbench rates "
                                                   "instruction relevance itself (set relevance_check=false)")
    return out


def prompt_texts(cfg: Mapping[str, Any] | None, *, eval_prompt: str | None = None, trait: str = "") -> list[str]:
    """The text of every prompt template the configured judge renders, in a fixed order: what a score
    depends on besides the settings, so identity hashes change when a prompt file does."""
    from traitlab.judge.prompts import AXBENCH_KINDS, resolve_template

    c = resolve_judge_config(cfg)
    if c["rubric"] == "axbench":
        return [resolve_template(kind, prompts_dir=c["prompts_dir"]).text for kind in AXBENCH_KINDS]
    texts = [resolve_template("trait_score", eval_prompt=eval_prompt, trait_prompt_path=c["trait_prompt_path"],
                              prompts_dir=c["prompts_dir"], trait=trait).text,
             resolve_template("coherence", prompts_dir=c["prompts_dir"]).text]
    if c["relevance_check"]:
        texts.append(resolve_template("relevance", prompts_dir=c["prompts_dir"]).text)
    return texts


def make_judge(cfg: Mapping[str, Any] | None = None, *, model: Any = None) -> Scorer:
    """A ready Scorer. `model`: a LoadedModel to reuse for hf_local/perplexity (else loaded lazily by name).

    Call `validate()` on the result (or `validate_scorer`) before loading the steered model.
    """
    from traitlab.judge.axbench import AxBenchJudge
    from traitlab.judge.cheap import CombinedScorer, PerplexityCoherence
    from traitlab.judge.scoring import LogprobJudge

    c = resolve_judge_config(cfg)
    cache = _cache(c["cache_path"])
    backend = c["backend"]
    ppl_kwargs = {k: float(c[k]) for k in ("ppl_min", "ppl_max") if c[k] is not None}
    local_model = model if model is not None else (c["model"] or "smollm2_135m")

    if backend == "perplexity":
        return PerplexityCoherence(local_model, batch_size=int(c["batch_size"]), cache=cache, **ppl_kwargs)

    if backend == "hf_local":
        from traitlab.judge.hf_local import HFLocalSource

        scale = c["scale_max"] if c["scale_max"] == "auto" else int(c["scale_max"])
        source: Any = HFLocalSource(local_model, batch_size=int(c["batch_size"]), scale_max=scale)
    else:
        from traitlab.judge.llm import OpenAICompatibleSource

        scale = c["scale_max"] if c["scale_max"] == "auto" else int(c["scale_max"])
        source = OpenAICompatibleSource(
            backend=backend, model=c["model"], base_url=c["base_url"], api_key_env=c["api_key_env"],
            max_retries=int(c["max_retries"]), timeout_s=float(c["timeout_s"]), backoff_s=float(c["backoff_s"]),
            max_backoff_s=float(c["max_backoff_s"]), concurrency=int(c["concurrency"]), scale_max=scale,
        )
    judge: Any
    if c["rubric"] == "axbench":
        judge = AxBenchJudge(source, min_weight=float(c["min_weight"]), top_logprobs=int(c["top_logprobs"]),
                             cache=cache, prompts_dir=c["prompts_dir"])
    else:
        judge = LogprobJudge(
            source, min_weight=float(c["min_weight"]), top_logprobs=int(c["top_logprobs"]),
            relevance_check=bool(c["relevance_check"]), cache=cache, prompts_dir=c["prompts_dir"],
            trait_prompt_path=c["trait_prompt_path"],
        )
    if c["perplexity_combine"]:
        ppl_model = model if model is not None else "smollm2_135m"
        ppl = PerplexityCoherence(ppl_model, batch_size=int(c["batch_size"]), cache=cache, **ppl_kwargs)
        return CombinedScorer(judge, ppl, mode=str(c["perplexity_combine"]))
    return judge


def build_judge(jcfg: Mapping[str, Any], lm: Any = None) -> Scorer:
    """The judge; an in-process judge (or perplexity scorer) reuses the loaded model when it is the same one."""
    from traitlab.models.identity import identity_of

    backend, name = jcfg["backend"], jcfg.get("model")
    if backend == "perplexity":   # null model: the steered model judges its own steered answers, unsteered
        same = lm is not None and (name is None or identity_of(name).key == lm.identity.key)
    elif backend == "hf_local":
        same = lm is not None and identity_of(name or "smollm2_135m").key == lm.identity.key
    else:                         # only a perplexity coherence combined with a remote judge runs in process
        same = lm is not None
    return make_judge(jcfg, model=lm if same else None)


def judge_identity(jcfg: Mapping[str, Any], trait: Any) -> str:
    """Hash of everything that changes a judge score of `trait` (a TraitDataset): semantic settings and the
    prompt texts used (none for the perplexity backend, which reads no prompt)."""
    semantic = {k: jcfg.get(k) for k in JUDGE_SEMANTIC}
    if jcfg["backend"] == "perplexity":
        return content_hash("judge-id-v1", semantic)
    spec = trait.steering
    texts = prompt_texts(jcfg, eval_prompt=spec.eval_prompt if spec else None, trait=trait.qualified_name)
    if jcfg.get("rubric", "trait") != "trait":  # only then: studies judged by the default rubric keep their names
        semantic["rubric"] = jcfg["rubric"]
    return content_hash("judge-id-v1", semantic, texts, trait.definition or "")
