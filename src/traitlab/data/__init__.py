"""Trait datasets and inference prompt sets, validated before any model loads."""

from traitlab.data.prompt_sets import (
    PromptItem,
    PromptSet,
    list_prompt_sets,
    load_prompt_set,
    resolve_prompt_set,
)
from traitlab.data.readers import MAX_LINE_BYTES
from traitlab.data.traits import (
    Example,
    SteeringSpec,
    TraitDataset,
    default_traits_root,
    list_traits,
    load_examples,
    load_overrides,
    load_steering,
    load_trait,
    resolve_trait_dir,
)

__all__ = [
    "MAX_LINE_BYTES",
    "Example",
    "PromptItem",
    "PromptSet",
    "SteeringSpec",
    "TraitDataset",
    "default_traits_root",
    "list_prompt_sets",
    "list_traits",
    "load_examples",
    "load_overrides",
    "load_prompt_set",
    "load_steering",
    "load_trait",
    "resolve_prompt_set",
    "resolve_trait_dir",
]
