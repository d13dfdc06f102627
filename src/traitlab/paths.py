"""Where traitlab keeps things on disk: one place decides, everything else asks."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The traitlab project directory: $TRAITLAB_ROOT, else the nearest parent of cwd with conf/ and datasets/."""
    env = os.environ.get("TRAITLAB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "conf").is_dir() and (p / "datasets").is_dir():
            return p
    # Installed package used from elsewhere: fall back to the source checkout it came from, if any.
    src = Path(__file__).resolve().parents[2]
    if (src / "conf").is_dir():
        return src
    return here


def outputs_dir() -> Path:
    return Path(os.environ.get("TRAITLAB_OUTPUTS", project_root() / "outputs"))


def cache_dir() -> Path:
    """Caches (converted models, pooled activations, judge scores); safe to delete, rebuilt on demand."""
    return Path(os.environ.get("TRAITLAB_CACHE", outputs_dir() / "cache"))


def datasets_dir() -> Path:
    return Path(os.environ.get("TRAITLAB_DATASETS", project_root() / "datasets"))


def conf_dir() -> Path:
    return project_root() / "conf"
