"""Find and fill judge prompts: inline eval_prompt -> trait-level file -> datasets/llm_judge default.

Prompts use `str.format` placeholders. A template is checked when it is loaded, not when the first
response is judged, so a typo ({anwser}) fails before any model loads, naming the file.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from traitlab.errors import ConfigError, DataError
from traitlab.paths import datasets_dir

KINDS = ("trait_score", "coherence", "relevance")
# The AxBench-style rubric (judge.rubric=axbench) rates three things separately: whether the concept (the
# trait) is present, whether the answer follows the instruction (the question), and fluency.
AXBENCH_KINDS = ("concept", "instruction", "fluency")
ALL_KINDS = KINDS + AXBENCH_KINDS
PLACEHOLDERS = ("trait", "definition", "question", "answer", "max_score")
# Without the answer there is nothing to judge; without the question relevance means nothing; a concept
# prompt that does not name the concept cannot be about this trait.
REQUIRED = {"trait_score": ("answer",), "coherence": ("answer",), "relevance": ("question", "answer"),
            "concept": ("trait", "answer"), "instruction": ("question", "answer"), "fluency": ("answer",)}
DEFAULT_FILE = "default.txt"
# The checkout's own prompts, used when $TRAITLAB_DATASETS points at a data dir without llm_judge/.
_PACKAGED_DIR = Path(__file__).resolve().parents[3] / "datasets" / "llm_judge"


@dataclass(frozen=True)
class PromptTemplate:
    kind: str
    text: str
    source: str  # file path or "<inline ...>", used in every error about this template
    fields: frozenset[str]

    def render(self, *, trait: str = "", definition: str = "", question: str = "", answer: str = "",
               max_score: int = 100) -> str:
        if max_score != 100 and "max_score" not in self.fields:
            raise ConfigError(
                "judge.scale_max",
                f"{self.source} asks for a fixed scale but this judge needs 0-{max_score} "
                f"(its tokenizer splits numbers into digits); write the scale as {{max_score}} in the prompt",
            )
        return self.text.format(
            trait=trait, definition=definition, question=question, answer=answer, max_score=max_score
        )


def parse_template(kind: str, text: str, source: str) -> PromptTemplate:
    """Check placeholders against PLACEHOLDERS and REQUIRED[kind]; errors name `source`."""
    if kind not in ALL_KINDS:
        raise ConfigError("judge.prompt kind", f"'{kind}' is not one of {', '.join(ALL_KINDS)}")
    if not text.strip():
        raise DataError(source, f"{kind} judge prompt is empty")
    fields: set[str] = set()
    try:
        for _, name, spec, conversion in string.Formatter().parse(text):
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                raise DataError(
                    source,
                    f"unknown placeholder {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}; expected one of "
                    + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                    + " (write {{ and }} for literal braces)",
                )
            fields.add(name)
    except ValueError as e:  # unbalanced braces
        raise DataError(source, f"malformed placeholder ({e}); write {{{{ and }}}} for literal braces") from None
    missing = [p for p in REQUIRED[kind] if p not in fields]
    if missing:
        raise DataError(
            source, f"{kind} judge prompt lacks the placeholder(s) " + ", ".join(f"{{{m}}}" for m in missing)
        )
    return PromptTemplate(kind=kind, text=text, source=source, fields=frozenset(fields))


def default_prompts_dir(kind: str = "trait_score") -> Path:
    """$TRAITLAB_DATASETS/llm_judge when it has this kind's default prompt, else the checkout's own."""
    here = datasets_dir() / "llm_judge"
    return here if (here / kind / DEFAULT_FILE).is_file() else _PACKAGED_DIR


_FILE_CACHE: dict[tuple[str, str, int], PromptTemplate] = {}


def load_template_file(kind: str, path: str | Path) -> PromptTemplate:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(path, f"{kind} judge prompt file not found")
    key = (kind, str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _FILE_CACHE:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(path, "judge prompt is not UTF-8 text") from None
        _FILE_CACHE[key] = parse_template(kind, text, str(path))
    return _FILE_CACHE[key]


def resolve_template(
    kind: str,
    *,
    eval_prompt: str | None = None,
    trait_prompt_path: str | Path | None = None,
    prompts_dir: str | Path | None = None,
    trait: str = "",
) -> PromptTemplate:
    """The template for `kind`. Inline and trait-level overrides apply to the trait score only."""
    if kind not in ALL_KINDS:
        raise ConfigError("judge.prompt kind", f"'{kind}' is not one of {', '.join(ALL_KINDS)}")
    if kind == "trait_score":
        if eval_prompt is not None and eval_prompt.strip():
            return parse_template(kind, eval_prompt, f"<inline eval_prompt of trait '{trait}' (steering.json)>")
        if trait_prompt_path:
            return load_template_file(kind, trait_prompt_path)
    base = Path(prompts_dir).expanduser() if prompts_dir else default_prompts_dir(kind)
    return load_template_file(kind, base / kind / DEFAULT_FILE)
