"""llama.cpp control vectors: write and read the GGUF file, and hand one to a llama-cpp-python model.

The file (what llama.cpp's loader reads, ``common_control_vector_load_one`` in common/common.cpp, and what
repeng's ``export_gguf`` writes): ``general.architecture = "controlvector"``, ``controlvector.model_hint``
(a string) and ``controlvector.layer_count`` (u32), then one 1-D F32 tensor per layer named
``direction.<k>``. llama.cpp reads only the tensors; the keys are informative (traitlab adds its
provenance as ``traitlab.*`` strings, which llama.cpp ignores).

Layer numbering. llama.cpp adds ``direction.<k>`` to ``l_out`` of decoder block ``k`` (0-based): the graph
of every Llama-style model ends block ``k`` with ``cur = build_cvec(cur, k)`` right after the second
residual add, at every position, prompt included. traitlab's layer ``k`` (component ``residual``) is the
same point, the output of decoder block ``k`` (``hidden_states[k + 1]`` in transformers). So
``direction.<k>`` holds traitlab's layer-``k`` vector with no shift. llama.cpp rejects ``direction.0``
("invalid (zero) direction tensor layer index": block 0's output can never be steered there) and ignores
``k >= n_layer``, so both are refused here.

Scale. llama.cpp adds ``strength * direction.<k>`` (``--control-vector-scaled FILE:STRENGTH``; plain
``--control-vector FILE`` is strength 1). traitlab's steering hook adds ``coefficient * vector``. The file
holds ``scale * vector``, so with ``scale=1`` (the default) a strength of C is traitlab's coefficient C; or
bake the coefficient in with ``scale=C`` and load with ``--control-vector``. Vectors at the same layer (in
one file or across files) are summed by llama.cpp, as traitlab's MultiLayerSteering sums them.

Only residual-stream vectors mean the same thing in both runtimes: a vector of another component
(attention or MLP output) is added by traitlab inside the block, by llama.cpp after it.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlab.errors import DataError
from traitlab.io import atomic_path

ARCH = "controlvector"
TENSOR_PREFIX = "direction."
META_PREFIX = "traitlab."
_NAME_RE = re.compile(r"^direction\.(\d+)$")


def directions_of(vectors: Any) -> dict[int, torch.Tensor]:
    """``{layer: vector}`` from a mapping, or from a vector object carrying ``.directions`` (the notebook
    API's per-layer vector), so every function here takes either."""
    got = getattr(vectors, "directions", vectors)
    if not isinstance(got, Mapping):
        raise DataError("control vector", f"expected {{layer: Tensor}} or an object with .directions, got "
                                          f"{type(vectors).__name__}")
    return dict(got)


def _check_directions(directions: Mapping[int, torch.Tensor], where: str, n_layers: int | None) -> int:
    """The common width of the vectors; raises a one-line DataError naming `where` otherwise."""
    if not directions:
        raise DataError(where, "no vectors to export; expected {layer: vector} with at least one layer")
    dims = set()
    for layer, v in directions.items():
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise DataError(where, f"layer {layer!r} is not an int")
        if layer < 1:
            raise DataError(where, f"layer {layer}: llama.cpp adds direction.<k> to the output of decoder block "
                                   "k and cannot steer block 0 (it rejects direction.0); export layers >= 1")
        if n_layers is not None and layer >= n_layers:
            raise DataError(where, f"layer {layer}: the model has {n_layers} layers (0..{n_layers - 1}); "
                                   "llama.cpp would silently ignore this direction")
        if not isinstance(v, torch.Tensor) or v.dim() != 1:
            raise DataError(where, f"layer {layer}: expected a 1-D tensor, got "
                                   f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        if not bool(torch.isfinite(v).all()):
            raise DataError(where, f"layer {layer}: vector contains NaN or inf")
        dims.add(int(v.shape[0]))
    if len(dims) != 1:
        raise DataError(where, f"vectors have different widths {sorted(dims)}; llama.cpp needs one n_embd")
    return dims.pop()


def write_control_vector(
    path: str | Path,
    directions: Mapping[int, torch.Tensor] | Any,
    *,
    scale: float = 1.0,
    model_hint: str = "",
    metadata: Mapping[str, Any] | None = None,
    n_layers: int | None = None,
) -> Path:
    """Write ``{layer: vector}`` (traitlab layer numbering, residual stream) as a llama.cpp control vector.

    Each tensor is ``scale * vector`` in float32. ``metadata`` values are stored as ``traitlab.<key>``
    strings (JSON for non-strings); a vector object's ``provenance()`` is stored the same way. With
    ``n_layers`` (the model's depth), layers llama.cpp would ignore are refused. The write is atomic.
    """
    import gguf

    path = Path(path)
    provenance = getattr(directions, "provenance", None)
    metadata = {**(provenance() if callable(provenance) else {}), **(metadata or {})}
    directions = directions_of(directions)
    if not math.isfinite(float(scale)):
        raise DataError(path, f"scale must be finite, got {scale}")
    _check_directions(directions, str(path), n_layers)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(directions))
        writer.add_float32(f"{META_PREFIX}scale", float(scale))
        for key, value in sorted(metadata.items()):
            writer.add_string(f"{META_PREFIX}{key}", value if isinstance(value, str) else json.dumps(value))
        for layer in sorted(directions):
            data = (float(scale) * directions[layer].detach().double()).float().cpu().numpy()
            writer.add_tensor(f"{TENSOR_PREFIX}{layer}", np.ascontiguousarray(data, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _field_value(field: Any) -> Any:
    """A scalar GGUF key's value (string or number)."""
    import gguf

    part = field.parts[field.data[0]]
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    return part.tolist()[0]


def read_control_vector(path: str | Path) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """``({layer: tensor as stored}, {key: value})``, checked by the rules llama.cpp's loader applies."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as e:
        raise DataError(path, f"not a readable GGUF file ({e})") from None
    meta = {name: _field_value(f) for name, f in reader.fields.items()
            if not name.startswith("GGUF.") and f.data}
    directions: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        m = _NAME_RE.match(t.name)
        if m is None:
            raise DataError(path, f"tensor {t.name!r} is not named direction.<layer>")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise DataError(path, f"tensor {t.name}: expected 1-D F32, got {t.tensor_type.name} shape "
                                  f"{list(t.shape)}")
        layer = int(m.group(1))
        v = torch.from_numpy(np.array(t.data, dtype=np.float32))
        directions[layer] = directions[layer] + v if layer in directions else v
    _check_directions(directions, str(path), None)
    return directions, meta


def llama_cpp_buffer(directions: Mapping[int, torch.Tensor] | Any, n_embd: int, n_layers: int,
                     strength: float = 1.0) -> np.ndarray:
    """The flat float32 buffer ``llama_set_adapter_cvec`` takes: layer k at [(k-1)*n_embd, k*n_embd).

    It always covers layers 1..n_layers-1, zeros where no vector is given: llama.cpp overwrites only the
    layers the buffer reaches, so a shorter buffer would leave an earlier vector active at the others.
    """
    directions = directions_of(directions)
    _check_directions(directions, "control vector", n_layers)
    buf = np.zeros((n_layers - 1) * n_embd, dtype=np.float32)
    for layer, v in directions.items():
        if v.shape[0] != n_embd:
            raise DataError("control vector", f"layer {layer}: width {v.shape[0]} but the model's n_embd is "
                                              f"{n_embd}")
        buf[(layer - 1) * n_embd: layer * n_embd] += float(strength) * v.detach().float().cpu().numpy()
    return buf


def set_llama_cpp_control_vector(llm: Any, directions: Mapping[int, torch.Tensor] | Any | None,
                                 strength: float = 1.0, layer_range: tuple[int, int] | None = None) -> None:
    """Steer a ``llama_cpp.Llama`` with ``strength * directions`` (None clears), as ``--control-vector``.

    ``layer_range`` (inclusive) limits the layers applied, as ``--control-vector-layer-range``. The KV
    cache is cleared too: entries computed under the previous vector would otherwise be reused.
    """
    import llama_cpp

    model = llm.model
    n_embd, n_layers = llama_cpp.llama_model_n_embd(model), llama_cpp.llama_model_n_layer(model)
    if directions is None:
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, n_embd, -1, -1)
    else:
        buf = llama_cpp_buffer(directions, n_embd, n_layers, strength)
        lo, hi = layer_range or (1, n_layers - 1)
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, buf.size, n_embd, lo, hi)
    if rc != 0:
        raise DataError("control vector", f"llama_set_adapter_cvec returned {rc} (n_embd {n_embd}, "
                                          f"{n_layers} layers)")
    llm.reset()
