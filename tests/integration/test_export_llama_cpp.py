"""`traitlab export` end to end in llama.cpp: vectors extracted from the real SmolLM2 into a real MLflow
store, exported as a control-vector GGUF, read back by llama.cpp's own GGUF parser (libggml-base's
gguf_init_from_file, the reader llama.cpp's common_control_vector_load_one uses), laid out as that loader
does (direction.<k> -> row k-1) and applied with libllama's llama_set_adapter_cvec on the embedded
SmolLM2 GGUF. The steered log-prob margin of held-out optimistic vs pessimistic answers must move as it
does under traitlab's own SteeringHook at the same layers and coefficient.

When llama.cpp's CLI is built (scripts/install_llama_cli.sh, same llama.cpp source as the bindings), the
file also goes through llama.cpp's own command-line loader (`--control-vector-scaled FILE:C`): every token
of its greedy answer must be the hook-steered model's greedy choice or within Q4_1 rounding of it (the CLI
runs the Q4_1 GGUF, traitlab its de-quantised copy, so exact greedy agreement holds only where the top two
logits are further apart than that rounding), while the same answer must not fit the unsteered model.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import subprocess
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from traitlab.config.export import ExportConfig
from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.core.hooks import MultiLayerSteering
from traitlab.data import load_trait, resolve_trait_dir
from traitlab.models.chat import format_prompt
from traitlab.models.control_vector import read_control_vector, set_llama_cpp_control_vector
from traitlab.models.encoding import encode
from traitlab.models.identity import model_tags
from traitlab.models.loading import ModelSpec, embedded_gguf_path
from traitlab.pipelines.export import run_export
from traitlab.pipelines.extract import run_extract
from traitlab.tracking.registry import fetch_vector, find_vectors

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python is not installed: run scripts/install_llama_server.sh"),
]
EXP = "export-llama"
TRAIT = "starter/optimism"
LAYERS = [9, 10, 11]
COEF = 8.0  # ~8% of the residual norm at these layers (about 100)
N_PAIRS = 8
# Logits: the Q4_1 GGUF (llama.cpp) and its de-quantised f32 copy (traitlab) differ by up to this much. Measured
# on the CLI test's prompt, relative logits (minus the best) of each step's five best candidates: median 0.08,
# 95th percentile 0.37, max 0.77. A greedy step whose top two are closer than this may go either way.
TIE = 1.0


# ------------------------------------------------------------------ llama.cpp's own GGUF reader (C API)

class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def _ggml_base() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    sig = {
        "gguf_init_from_file": (ctypes.c_void_p, [ctypes.c_char_p, _InitParams]),
        "gguf_get_n_tensors": (ctypes.c_int64, [ctypes.c_void_p]),
        "gguf_get_tensor_name": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_tensor_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_find_key": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
        "gguf_get_val_str": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
        "ggml_get_tensor": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        "ggml_nelements": (ctypes.c_int64, [ctypes.c_void_p]),
        "ggml_n_dims": (ctypes.c_int, [ctypes.c_void_p]),
        "ggml_get_data_f32": (ctypes.POINTER(ctypes.c_float), [ctypes.c_void_p]),
        "gguf_free": (None, [ctypes.c_void_p]),
        "ggml_free": (None, [ctypes.c_void_p]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def read_with_llama_cpp(path: Path) -> tuple[dict[str, tuple[int, int]], dict[int, np.ndarray], str]:
    """({tensor name: (ggml type, n_dims)}, {layer: data}, general.architecture) as llama.cpp parses them."""
    lib = _ggml_base()
    ctx = ctypes.c_void_p()
    g = lib.gguf_init_from_file(str(path).encode(), _InitParams(False, ctypes.pointer(ctx)))
    assert g, f"llama.cpp's gguf_init_from_file could not read {path}"
    try:
        kinds, data = {}, {}
        for i in range(lib.gguf_get_n_tensors(g)):
            name = lib.gguf_get_tensor_name(g, i)
            t = lib.ggml_get_tensor(ctx, name)
            kinds[name.decode()] = (lib.gguf_get_tensor_type(g, i), lib.ggml_n_dims(t))
            n = lib.ggml_nelements(t)
            data[int(name.decode().split(".")[1])] = np.ctypeslib.as_array(lib.ggml_get_data_f32(t), (n,)).copy()
        arch = lib.gguf_get_val_str(g, lib.gguf_find_key(g, b"general.architecture")).decode()
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ctx)
    return kinds, data, arch


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def exported(tmp_path_factory, smollm2):
    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
        mp.setenv("TRAITLAB_OUTPUTS", str(tmp / "outputs"))
        tracking = TrackingConfig(experiment=EXP)
        run_extract(ExtractConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"),
                                  layers="9-11", tracking=tracking), lm=smollm2)
        res = run_export(ExportConfig(trait=TraitConfig(name=TRAIT), method=MethodConfig(name="mean_diff"),
                                      layers="9-11", out=str(tmp / "optimism.gguf"), tracking=tracking))
        registry = {r.layer: fetch_vector(r, experiment=EXP) for r in find_vectors(TRAIT, "smollm2_135m",
                                                                                     experiment=EXP)}
    return res, registry


@pytest.fixture(scope="module")
def llama():
    import llama_cpp

    # One thread: llama.cpp's worker threads spin while they wait, which on a busy 2-core machine made
    # evaluation 5-10x slower than a single thread (measured 8-18 s vs 1.9 s for 100 tokens).
    llm = llama_cpp.Llama(str(embedded_gguf_path()), n_ctx=1024, logits_all=True, verbose=False, n_threads=1,
                          n_threads_batch=1, seed=0)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def probes(smollm2):
    """Held-out (OOD) optimistic vs pessimistic answers to the same prompt, asked without a system prompt."""
    trait = load_trait(resolve_trait_dir(TRAIT))
    out = []
    for pos, neg in list(zip(trait.ood_positive, trait.ood_negative, strict=True))[:N_PAIRS]:
        text = format_prompt(smollm2.tokenizer, pos.prompt, None, smollm2.use_chat_template)
        out.append((encode(smollm2.tokenizer, text, pos.response), encode(smollm2.tokenizer, text, neg.response)))
    return out


def _mean_logprob(logits: torch.Tensor, ids: list[int], start: int) -> float:
    lp = torch.log_softmax(logits.float(), -1)
    return float(torch.stack([lp[t - 1, ids[t]] for t in range(start, len(ids))]).mean())


def hf_logits(lm, ids: list[int], coefficient: float, vectors: dict[int, torch.Tensor]) -> torch.Tensor:
    hook = (MultiLayerSteering(lm.model, [(lyr, v, coefficient) for lyr, v in vectors.items()])
            if coefficient else nullcontext())
    with hook, torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0]


def llama_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))


def llama_margin(llm, pos, neg) -> float:
    """Mean log-prob of the optimistic minus the pessimistic answer; the shared prompt is evaluated once
    (its KV state reused for both answers: the same logits bit for bit, a third less evaluation)."""
    assert pos.ids[: pos.prompt_len] == neg.ids[: neg.prompt_len]
    llm.reset()
    llm.eval(pos.ids[: pos.prompt_len])
    prompt = llm.save_state()
    out = []
    for enc in (pos, neg):
        llm.load_state(prompt)
        llm.eval(enc.ids[enc.prompt_len:])
        out.append(_mean_logprob(torch.from_numpy(np.array(llm.scores[: len(enc.ids)], dtype=np.float32)),
                                 enc.ids, enc.prompt_len))
    return out[0] - out[1]


def apply_file_as_llama_cpp_does(llm, data: dict[int, np.ndarray], strength: float,
                                 layer_range: tuple[int, int] | None = None) -> None:
    """common_control_vector_load_one + common_init's apply: layer k's data at [(k-1)*n_embd, k*n_embd)."""
    import llama_cpp

    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    buf = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
    for k, row in data.items():
        buf[(k - 1) * n_embd: k * n_embd] += strength * row
    lo, hi = layer_range or (1, n_layer)
    rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size,
                                          n_embd, lo, hi)
    assert rc == 0


def _bootstrap_ci(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# ----------------------------------------------------------------------------------------------- tests

def test_llama_cpp_parses_the_exported_file(exported):
    res, registry = exported
    kinds, data, arch = read_with_llama_cpp(res.path)
    assert arch == "controlvector"
    assert kinds == {f"direction.{k}": (0, 1) for k in LAYERS}  # GGML_TYPE_F32 == 0, 1-D
    for k in LAYERS:  # scale 1: the registry's vector, bit for bit
        assert np.array_equal(data[k], registry[k].numpy())
    assert res.layers == LAYERS and res.run_id
    _, meta = read_control_vector(res.path)  # the model by identity key and by display name, as run tags name it
    assert meta["traitlab.model"] == model_tags(ModelSpec())["model"] and meta["traitlab.model_name"] == "smollm2_135m"


def test_control_vector_moves_the_margin_like_the_traitlab_hook(exported, llama, probes, smollm2):
    """Towards the trait (c = +8) only: the opposite sign goes through the same file, loader layout and scale,
    which the CLI test below also checks at c = -8 (measured here once: shift -0.169 [-0.213, -0.129] vs the
    hook's -0.168, per-pair r 0.98, n = 8), so a second sign doubled the time without new evidence."""
    res, registry = exported
    _, data, _ = read_with_llama_cpp(res.path)
    vectors = {k: registry[k] for k in LAYERS}
    rows = {}
    for c in (0.0, COEF):
        if c:
            apply_file_as_llama_cpp_does(llama, data, c)
        else:
            set_llama_cpp_control_vector(llama, None)
        hf, lc = [], []
        for pos, neg in probes:
            hf.append(_mean_logprob(hf_logits(smollm2, pos.ids, c, vectors), pos.ids, pos.prompt_len)
                      - _mean_logprob(hf_logits(smollm2, neg.ids, c, vectors), neg.ids, neg.prompt_len))
            lc.append(llama_margin(llama, pos, neg))
        rows[c] = (np.array(hf), np.array(lc))
    set_llama_cpp_control_vector(llama, None)
    report = []
    for c in (COEF,):
        shift_hf, shift_lc = rows[c][0] - rows[0.0][0], rows[c][1] - rows[0.0][1]
        lo, hi = _bootstrap_ci(shift_lc)
        report.append(f"c={c:+g}: llama.cpp shift {shift_lc.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] vs traitlab hook "
                      f"{shift_hf.mean():+.3f} (n={len(shift_lc)} pairs; per-pair r="
                      f"{np.corrcoef(shift_hf, shift_lc)[0, 1]:.3f})")
        # the trait's direction, with a 95% interval that excludes zero
        assert (lo > 0) if c > 0 else (hi < 0), report[-1]
        # the same size of effect as traitlab's own hook, pair by pair
        assert 0.75 < shift_lc.mean() / shift_hf.mean() < 1.33, report[-1]
        assert np.corrcoef(shift_hf, shift_lc)[0, 1] > 0.9, report[-1]
    print("\n".join(["", f"unsteered margin: llama.cpp {rows[0.0][1].mean():+.3f}, traitlab "
                         f"{rows[0.0][0].mean():+.3f}", *report]))


def test_direction_k_steers_traitlab_layer_k(exported, llama, probes, smollm2):
    """Steering one layer in llama.cpp changes the logits like traitlab's hook at that layer, not at k±1."""
    res, registry = exported
    _, data, _ = read_with_llama_cpp(res.path)
    ids = probes[0][0].ids
    set_llama_cpp_control_vector(llama, None)
    base_lc, base_hf = llama_logits(llama, ids), hf_logits(smollm2, ids, 0.0, {})
    c = 2 * COEF  # a larger shift keeps Q4_1 rounding noise small next to the effect
    apply_file_as_llama_cpp_does(llama, data, c, layer_range=(10, 10))
    delta_lc = (llama_logits(llama, ids) - base_lc).flatten()
    corr = {}
    for k in LAYERS:
        delta_hf = (hf_logits(smollm2, ids, c, {k: registry[10]}) - base_hf).flatten()
        corr[k] = float(torch.corrcoef(torch.stack([delta_lc, delta_hf]))[0, 1])
    # the production helper gives the same llama.cpp state as the loader's layout above
    set_llama_cpp_control_vector(llama, {10: torch.from_numpy(data[10])}, strength=c)
    assert torch.equal((llama_logits(llama, ids) - base_lc).flatten(), delta_lc)
    set_llama_cpp_control_vector(llama, None)
    print(f"\ncorr(llama.cpp direction.10, traitlab hook at layer k): {corr}")
    assert corr[10] > 0.9 and corr[10] > max(corr[9], corr[11]) + 0.05, corr


def llama_completion() -> str | None:
    """$TRAITLAB_LLAMA_COMPLETION, else the binary scripts/install_llama_cli.sh caches, if it was built."""
    if os.environ.get("TRAITLAB_LLAMA_COMPLETION"):
        return os.environ["TRAITLAB_LLAMA_COMPLETION"]
    root = Path(__file__).resolve().parents[2]
    version = re.search(r'^VERSION="(.*)"$', (root / "scripts" / "install_llama_server.sh").read_text(), re.M)
    cache = Path(os.environ.get("TRAITLAB_WHEEL_CACHE", Path.home() / ".cache" / "traitlab" / "wheels"))
    path = cache / "llama-tools" / f"llama-completion-{version.group(1) if version else ''}"
    return str(path) if path.is_file() else None


def forced_deficits(lm, ids: list[int], answer: str, layers: dict[int, torch.Tensor], c: float) -> list[float]:
    """``answer`` teacher-forced through traitlab's hook-steered model: per token, its logit minus the step's
    best logit (0: the model's own greedy choice)."""
    answer_ids = lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(answer_ids) == answer, "the CLI's text must re-encode to the same tokens"
    logits = hf_logits(lm, ids + answer_ids, c, layers)[len(ids) - 1: -1]
    return (logits.gather(1, torch.tensor(answer_ids)[:, None])[:, 0] - logits.max(-1).values).tolist()


@pytest.mark.skipif(llama_completion() is None, reason="llama.cpp's CLI is not built: scripts/install_llama_cli.sh")
def test_llama_cli_with_the_file_answers_like_the_traitlab_hook(exported, smollm2):
    """llama.cpp's own loader (--control-vector-scaled FILE:C, common_control_vector_load) on the embedded
    GGUF: each token of its greedy answer is the hook-steered model's greedy choice up to Q4_1 rounding (TIE),
    and at c = +-8 that answer does not fit the unsteered model; direction.10 alone steers traitlab's layer 10,
    not 9 or 11."""
    res, registry = exported
    text = format_prompt(smollm2.tokenizer, "How do you think my job interview tomorrow will go?", None, True)
    ids = encode(smollm2.tokenizer, text).ids

    def cli(*extra: str) -> str:
        proc = subprocess.run([llama_completion(), "-m", str(embedded_gguf_path()), "-p", text,
                               "-n", "16", "--temp", "0", "-no-cnv", "-t", "1", "--no-warmup", "--seed", "0",
                               "--no-display-prompt", *extra], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    vectors = {k: registry[k] for k in LAYERS}
    answers = {c: cli(*(["--control-vector-scaled", f"{res.path}:{c:g}"] if c else [])) for c in (0.0, COEF, -COEF)}
    report = []
    for c, answer in answers.items():
        steered = forced_deficits(smollm2, ids, answer, vectors, c)
        plain = forced_deficits(smollm2, ids, answer, {}, 0.0)
        report.append(f"c={c:+g}: {answer!r}: greedy choice of the hook model at {sum(d == 0 for d in steered)}/"
                      f"{len(steered)} tokens, worst {min(steered):+.2f} (unsteered model: worst {min(plain):+.2f})")
        assert min(steered) > -TIE, report[-1]
        if c:
            assert min(plain) < -TIE, report[-1]  # the control vector, not chance, made this answer
    assert len(set(answers.values())) == 3, report  # the coefficient changed llama.cpp's answer
    # Layer numbering: direction.10 alone, strong enough that steering block 9, 10 or 11 differ clearly.
    c = 8 * COEF
    single = cli("--control-vector-scaled", f"{res.path}:{c:g}", "--control-vector-layer-range", "10", "10")
    worst = {k: min(forced_deficits(smollm2, ids, single, {k: registry[10]}, c)) for k in LAYERS}
    report.append(f"direction.10 x{c:g}: {single!r}; worst token vs the hook at layer 9/10/11: {worst}")
    print("\n" + "\n".join(report))
    assert worst[10] > -TIE and worst[9] < -TIE and worst[11] < -TIE, report[-1]
