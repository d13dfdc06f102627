"""Which model is this, exactly: the identity that keys the vector registry, run tags and every cache.

A model's display name (`model.name`, e.g. `smollm2_135m`) is a label: `model.lora=...` or
`model.quantization=nf4` keep it, yet they are other models. The identity is what determines the weights:

- source: `embedded:smollm2-135m-instruct`, a Hugging Face id, or a local directory's name;
- weights: `sha256:<16 hex>` of the weight files (local directory, GGUF, the embedded model), or, for a Hub
  id, `rev:<commit>` of the snapshot in the local Hub cache (a commit names its content), else
  `rev:<model.revision or main>`;
- quantization (none | int8 | nf4) and the LoRA adapter (`sha256:<16 hex>` of its adapter files, or its Hub
  id and revision).

`ModelIdentity.key` writes these as one string, e.g. `embedded:smollm2-135m-instruct@sha256:1f2e...` or
`embedded:smollm2-135m-instruct@sha256:1f2e...+nf4+lora:sha256:9a8b...`: the MLflow tag `model`. The
display name is the tag `model_name`. Using another model's vectors (a base model's on its LoRA or instruct
variant) is explicit: `model.vectors_from=base` (this model without adapter and quantization) or
`model.vectors_from=<identity key>`; runs then tag `vectors_model` too.

Digests of large files are computed once and kept in `<cache>/digests.json`, keyed by path, size and
modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from traitlab.paths import cache_dir

log = logging.getLogger(__name__)

# Appended to "no vectors for this model" errors: a variant never falls back to its base's vectors silently.
VARIANT_HINT = ("; a LoRA or quantized variant has no vectors of its own until extracted on it: to use the base "
                "model's vectors, say so with model.vectors_from=base")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_DIGEST_CACHE = "digests.json"


@dataclass(frozen=True)
class ModelIdentity:
    source: str
    weights: str
    quantization: str = "none"
    adapter: str | None = None

    @property
    def key(self) -> str:
        out = f"{self.source}@{self.weights}"
        if self.quantization != "none":
            out += f"+{self.quantization}"
        if self.adapter:
            out += f"+lora:{self.adapter}"
        return out

    def __str__(self) -> str:
        return self.key


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) so a large file is read once."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / _DIGEST_CACHE
    known = _read_digests(store)
    if stamp in known:
        return known[stamp]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    store.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(store) + ".lock"):
        known = _read_digests(store)
        known[stamp] = digest
        from traitlab.io import atomic_write_json

        atomic_write_json(store, known)
    return digest


def _read_digests(store: Path) -> dict[str, str]:
    try:
        value = json.loads(store.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def files_digest(files: list[Path], root: Path) -> str:
    """`sha256:<16 hex>` over the names and contents of `files` (relative to `root`)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + _file_digest(f).encode() + b"\0")
    return f"sha256:{h.hexdigest()[:16]}"


def _dir_weights(d: Path, gguf_file: str | None) -> str:
    if gguf_file:
        files = [d / gguf_file]
    else:
        files = [f for f in d.rglob("*") if f.is_file() and f.suffix in _WEIGHT_SUFFIXES]
    files += [f for f in (d / "config.json",) if f.is_file()]
    return files_digest([f for f in files if f.is_file()], d)


def _hub_revision(repo_id: str, revision: str | None) -> str:
    """The commit of the locally cached snapshot of a Hub repo, else the revision asked for (or main)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an odd id is not for us to reject here; loading will say why
        hit = None
    if isinstance(hit, str):
        parts = Path(hit).parts
        if "snapshots" in parts:
            return parts[parts.index("snapshots") + 1]
    return revision or "main"


def _adapter_identity(lora: str | None) -> str | None:
    if not lora:
        return None
    from traitlab.models.loading import resolve_lora

    target = resolve_lora(lora)
    d = Path(target).expanduser()
    if d.is_dir():
        files = [f for f in d.iterdir() if f.is_file() and f.name.startswith("adapter_")]
        return files_digest(files, d)
    return f"{target}@{_hub_revision(target, None)}"


_IDENTITIES: dict[tuple[Any, ...], ModelIdentity] = {}


def identity_of(spec: Any) -> ModelIdentity:
    """The identity of a ModelSpec (no weights are loaded; file digests are cached on disk)."""
    from traitlab.models.loading import EMBEDDED_PREFIX, embedded_gguf_path, model_spec

    spec = model_spec(spec)
    memo = (spec.id, spec.gguf_file, spec.revision, spec.quantization, spec.lora)
    if memo in _IDENTITIES:
        return _IDENTITIES[memo]
    local = Path(spec.id).expanduser()
    if spec.id.startswith(EMBEDDED_PREFIX):
        gguf = embedded_gguf_path()
        source, weights = spec.id, files_digest([gguf], gguf.parent)
    elif local.is_dir():
        source, weights = local.resolve().name, _dir_weights(local, spec.gguf_file)
    else:
        rev = _hub_revision(spec.id, spec.revision)
        source, weights = spec.id, f"rev:{rev}" + (f"/{spec.gguf_file}" if spec.gguf_file else "")
    identity = ModelIdentity(source, weights, spec.quantization, _adapter_identity(spec.lora))
    _IDENTITIES[memo] = identity
    return identity


def vectors_key(spec: Any) -> str:
    """The identity key whose vectors a run on `spec` uses: its own, or `model.vectors_from`'s.

    `vectors_from=base` is the same model without adapter and quantization; any other value is taken as the
    identity key of the model that extracted the vectors (the `model` tag of its extraction runs).
    """
    from traitlab.models.loading import model_spec

    spec = model_spec(spec)
    source = getattr(spec, "vectors_from", None)
    if not source:
        return identity_of(spec).key
    if source == "base":
        return identity_of(replace(spec, lora=None, quantization="none")).key
    return str(source)


def registry_key(model: Any) -> str:
    """What the registry matches `tags.model` against, from an identity key, a ModelSpec, a LoadedModel, or a
    model name / Hub id / directory (read as that model with no adapter)."""
    if isinstance(model, str) and "@" in model:
        return model
    spec = getattr(model, "spec", model)
    return vectors_key(spec)


def model_tags(spec: Any) -> dict[str, str]:
    """Run tags naming the model: `model` (identity key), `model_name` (display name) and, when the run uses
    another model's vectors, `vectors_model` (that model's identity key)."""
    from traitlab.models.loading import model_spec

    spec = model_spec(spec)
    tags = {"model": identity_of(spec).key, "model_name": spec.name}
    if getattr(spec, "vectors_from", None):
        tags["vectors_model"] = vectors_key(spec)
    return tags
