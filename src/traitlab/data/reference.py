"""Reference sets: what a trait's examples are contrasted with when the trait has no negatives.

A positive-only trait (stories that express one emotion, say) has nothing to contrast with. Two references
are common (Emotion Concepts, 2025): a *neutral* set of everyday prompts with plain responses, or the
*category*: the other traits of the same category, so a vector is "this emotion minus the average emotion".
A reference set takes the place of the negatives as an unpaired class, so every method and every held-out
metric works unchanged: the trait's held-out examples are scored against held-out reference examples.

`extraction.reference` (and `normalize.denoise`, which needs a neutral set too) accept:

- `neutral`: datasets/neutral/default.jsonl; any other name under datasets/neutral/ (`<name>.jsonl|json|txt`);
- `category`: the positives of every other trait in the trait's category (each trait weighs the same: the
  larger ones are subsampled, seeded, to the smallest one's size, so the pooled mean is the mean over traits);
- a path: a `.jsonl` / `.json` / `.txt` file in the trait formats, or a trait directory (its positives).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from traitlab.data.traits import (
    FORMATS,
    Example,
    TraitDataset,
    default_traits_root,
    list_traits,
    load_examples,
    load_trait,
    polarity_file,
)
from traitlab.errors import ConfigError
from traitlab.io import content_hash
from traitlab.paths import datasets_dir

log = logging.getLogger(__name__)

NEUTRAL = "neutral"
CATEGORY = "category"
DEFAULT_NEUTRAL = "default"


@dataclass(frozen=True)
class ReferenceSet:
    """Examples to contrast a trait with, and where they came from (for tags, notes and cache keys)."""

    name: str  # neutral:default, category:emotions, or the path given
    examples: list[Example]
    traits: tuple[str, ...] = ()  # category references: the traits pooled

    def fingerprint(self) -> str:
        return content_hash("reference-v1", self.name, [(e.prompt, e.system_prompt, e.response) for e in self.examples])


def neutral_dir() -> Path:
    return datasets_dir() / "neutral"


def list_neutral_sets() -> list[str]:
    d = neutral_dir()
    return sorted({f.stem for f in d.iterdir() if f.suffix in FORMATS}) if d.is_dir() else []


def _neutral_file(name: str) -> Path | None:
    for ext in FORMATS:
        f = neutral_dir() / f"{name}{ext}"
        if f.is_file():
            return f
    return None


def load_neutral_set(spec: str, key: str = "extraction.reference") -> ReferenceSet:
    """`neutral`, a set name under datasets/neutral/, or a path to a file in the trait formats / a trait dir."""
    name = DEFAULT_NEUTRAL if spec == NEUTRAL else spec
    found = _neutral_file(name) if "/" not in name and not name.startswith(("~", ".")) else None
    if found is not None:
        return ReferenceSet(f"{NEUTRAL}:{name}", load_examples(found))
    path = Path(spec).expanduser()
    if path.is_file():
        return ReferenceSet(str(path), load_examples(path))
    if path.is_dir():
        f = polarity_file(path, "positive")
        if f is None:
            raise ConfigError(key, f"{path} holds no positive.jsonl/.json/.txt to use as a reference set")
        return ReferenceSet(str(path), load_examples(f))
    sets = ", ".join(list_neutral_sets()) or "none"
    raise ConfigError(key, f"{spec!r} is not neutral, category, a set under {neutral_dir()} (available: {sets}) "
                           "or an existing file or trait directory")


def category_reference(trait: TraitDataset, seed: int, root: Path | None = None) -> ReferenceSet:
    """The positives of every other trait of `trait`'s category, each subsampled to the smallest one's size."""
    root = Path(root) if root is not None else default_traits_root()
    if not trait.category or not trait.path.is_relative_to(root.resolve()):
        raise ConfigError("extraction.reference", f"category: {trait.path} is not inside a category under {root}; "
                                                  "use neutral or a path instead")
    prefix = trait.category + "/"
    others = [t for t in list_traits(root) if t.startswith(prefix) and "/" not in t[len(prefix):]
              and t != trait.qualified_name]
    if not others:
        raise ConfigError("extraction.reference", f"category: {trait.category} holds no trait but {trait.name}; "
                                                  "a category reference needs at least one other trait")
    sets = {t: load_trait(root / t, root=root).positive for t in others}
    n = min(len(v) for v in sets.values())
    rng = random.Random(seed)
    examples: list[Example] = []
    for t, rows in sets.items():
        if len(rows) > n:
            log.info("category reference: %s subsampled from %d to %d rows so every trait weighs the same",
                     t, len(rows), n)
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]
        examples += rows
    return ReferenceSet(f"{CATEGORY}:{trait.category}", examples, tuple(others))


def load_reference(spec: str, trait: TraitDataset, seed: int, root: Path | None = None) -> ReferenceSet:
    if spec == CATEGORY:
        return category_reference(trait, seed, root)
    return load_neutral_set(spec)


def with_reference(trait: TraitDataset, ref: ReferenceSet) -> TraitDataset:
    """The trait with the reference set as its (unpaired) negatives; OOD sets and everything else unchanged."""
    if not ref.examples:
        raise ConfigError("extraction.reference", f"{ref.name} holds no examples")
    if trait.negative:
        log.warning("%s has its own negatives; extraction.reference=%s replaces them", trait.qualified_name, ref.name)
    return dataclasses.replace(trait, negative=list(ref.examples), paired=False)


def reference_note(ref: ReferenceSet, trait: TraitDataset) -> str:
    """What the metrics of a vector extracted against a reference set mean (and which are undefined)."""
    what = (f"the other traits of {trait.category} ({', '.join(t.split('/')[-1] for t in ref.traits)})"
            if ref.traits else f"the reference set {ref.name}")
    note = (f"no negatives: {trait.qualified_name} is contrasted with {what} ({len(ref.examples)} examples). "
            "Accuracy, effect size and AUROC measure how well held-out trait examples separate from held-out "
            "reference examples, which includes any topic, style or length difference between the sets, not "
            "the trait against its opposite; pair agreement is undefined (NaN, no pairs)")
    if trait.ood_positive and not trait.ood_negative:
        note += "; OOD metrics are undefined (ood_positive without ood_negative)"
    return note
