"""llama.cpp control-vector GGUF files: what is written (checked with gguf-py's reader at the byte-level
layout llama.cpp reads), what is refused, and the buffer layout llama_set_adapter_cvec takes."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from traitlab.errors import DataError
from traitlab.models.control_vector import llama_cpp_buffer, read_control_vector, write_control_vector


def _vec(seed: int, dim: int = 6) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def test_file_has_one_f32_direction_tensor_per_layer_holding_scale_times_vector(tmp_path):
    vectors = {3: _vec(0), 1: _vec(1)}
    path = write_control_vector(tmp_path / "v.gguf", vectors, scale=2.5, model_hint="llama",
                                metadata={"trait": "starter/optimism", "layers": [1, 3]})
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3"]
    for layer, v in vectors.items():
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [6]
        assert np.array_equal(np.asarray(t.data), (v.double() * 2.5).float().numpy())
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "controlvector"
    directions, meta = read_control_vector(path)
    assert meta["controlvector.model_hint"] == "llama" and meta["controlvector.layer_count"] == 2
    assert meta["traitlab.trait"] == "starter/optimism" and meta["traitlab.layers"] == "[1, 3]"
    assert meta["traitlab.scale"] == 2.5
    assert torch.equal(directions[3], (vectors[3].double() * 2.5).float())


def test_a_vector_object_with_directions_and_provenance_is_accepted(tmp_path):
    class PerLayer:  # the shape of the notebook API's vector object: .directions and .provenance()
        directions = {2: _vec(2)}

        def provenance(self):
            return {"trait": "starter/refusal", "method": "probe"}

    path = write_control_vector(tmp_path / "v.gguf", PerLayer(), metadata={"method": "mean_diff"})
    directions, meta = read_control_vector(path)
    assert torch.equal(directions[2], _vec(2)) and meta["traitlab.trait"] == "starter/refusal"
    assert meta["traitlab.method"] == "mean_diff"  # explicit metadata wins over the object's provenance
    assert np.array_equal(llama_cpp_buffer(PerLayer(), n_embd=6, n_layers=3)[6:], _vec(2).numpy())
    with pytest.raises(DataError, match="expected {layer: Tensor}"):
        write_control_vector(tmp_path / "w.gguf", [_vec(0)])


@pytest.mark.parametrize(("vectors", "n_layers", "message"), [
    ({0: _vec(0)}, None, "cannot steer block 0"),
    ({4: _vec(0)}, 4, "the model has 4 layers"),
    ({1: _vec(0), 2: _vec(1, dim=7)}, None, "different widths"),
    ({1: torch.full((6,), float("nan"))}, None, "NaN"),
    ({1: torch.zeros(2, 3)}, None, "1-D"),
    ({}, None, "no vectors"),
])
def test_vectors_llama_cpp_would_reject_or_ignore_are_refused(tmp_path, vectors, n_layers, message):
    path = tmp_path / "v.gguf"
    with pytest.raises(DataError, match=message):
        write_control_vector(path, vectors, n_layers=n_layers)
    assert not path.exists()  # nothing half-written


def _raw_gguf(path, name: str, data: np.ndarray):
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_reader_applies_llama_cpp_loader_rules(tmp_path):
    with pytest.raises(DataError, match="not named direction"):
        read_control_vector(_raw_gguf(tmp_path / "name.gguf", "steer.3", np.ones(4, dtype=np.float32)))
    with pytest.raises(DataError, match="expected 1-D F32"):
        read_control_vector(_raw_gguf(tmp_path / "f16.gguf", "direction.3", np.ones(4, dtype=np.float16)))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(DataError, match="junk.gguf"):
        read_control_vector(tmp_path / "junk.gguf")


def test_llama_cpp_buffer_puts_layer_k_at_row_k_minus_1_and_zeros_elsewhere():
    v2, v4 = _vec(2, dim=3), _vec(4, dim=3)
    buf = llama_cpp_buffer({2: v2, 4: v4}, n_embd=3, n_layers=6, strength=-2.0)
    # rows are layers 1..5 of a 6-layer model, written out by hand
    expected = [0.0] * 3 + (-2 * v2).tolist() + [0.0] * 3 + (-2 * v4).tolist() + [0.0] * 3
    assert buf.dtype == np.float32 and buf.shape == (15,)
    assert np.allclose(buf, expected, atol=1e-7)
    with pytest.raises(DataError, match="n_embd is 4"):
        llama_cpp_buffer({2: v2}, n_embd=4, n_layers=6)
