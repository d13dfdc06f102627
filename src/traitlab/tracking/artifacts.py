"""The artifact layout of a run (the one place that names artifact paths) and vector files.

A vector file is a portable safetensors file (`vector` tensor) with its metadata both in the header and
in a JSON beside it, so it loads without traitlab: `safetensors.torch.load_file(path)["vector"]`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from traitlab.errors import DataError
from traitlab.io import atomic_write_json, load_tensors, save_tensors

VECTORS = "vectors"
FIGURES = "figures"
TABLES = "tables"
VIEWS = "views"
# Scored runs (infer, generate): projections/<prompt>.json holds tokens + every score; views/ the HTML pages.
PROJECTIONS = "projections"
INDEX_PAGE = f"{VIEWS}/index.html"
MASSIVE_ARTIFACT = "massive/calibration.json"


def slug(text: str) -> str:
    """'response[:5]' -> 'response_5'; stable, filesystem- and URL-safe."""
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
    return s or "x"


def view_page(prompt_slug: str) -> str:
    return f"{VIEWS}/prompts/{prompt_slug}.html"


def vector_dir(component: str, position: str, method: str) -> str:
    return f"{VECTORS}/{component}/{slug(position)}/{method}"


def vector_path(component: str, position: str, method: str, layer: int) -> str:
    return f"{vector_dir(component, position, method)}/layer_{layer:03d}.safetensors"


def save_vector(path: Path, vector: torch.Tensor, meta: dict[str, Any]) -> None:
    header = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()}
    save_tensors(path, {"vector": vector.detach().float().cpu()}, header)
    atomic_write_json(path.with_suffix(".json"), meta)


def load_vector(path: str | Path, expected_dim: int | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """Load and check a vector file; a truncated file or a dimension mismatch is a one-line DataError."""
    tensors, meta = load_tensors(path)
    if "vector" not in tensors:
        raise DataError(path, f"no 'vector' tensor (found {sorted(tensors)})")
    v = tensors["vector"]
    if v.ndim != 1:
        raise DataError(path, f"vector must be 1-D, got shape {tuple(v.shape)}")
    if expected_dim is not None and v.shape[0] != expected_dim:
        raise DataError(path, f"vector has dimension {v.shape[0]} but the model's component has {expected_dim}")
    if not torch.isfinite(v).all():
        raise DataError(path, "vector contains NaN or inf")
    return v, meta
