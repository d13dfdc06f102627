"""Bad inputs: every case is rejected with ONE readable line naming the file:line or config key, with no
traceback, before the model loads where the input is known before it, leaving no RUNNING run and no
artifact behind.

The table (CASES) is the whole suite: each row builds its bad input in its own sandbox dir and names the
launcher overrides and the substrings its error line must hold. Rows that need nothing but the config
and data run together in one process (case_runner.py; the first few are also run as real separate
processes to show the shared process reports the same); rows that can only fail after the model loads
run together in a second process (slow). Rows for stages whose launcher does not exist yet are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import (
    CONVERTING_LOG,
    LOADED_LOG,
    PY,
    ROOT,
    Sandbox,
    last_line,
    launch,
    nonempty_lines,
    run_files,
    runs,
    tiny_trait,
    with_fast,
    write_jsonl,
)

from traitlab.errors import DataError

Build = Callable[[Path], list[str]]  # makes the bad input under a case dir, returns the overrides


@dataclass
class Case:
    id: str
    build: Build
    expect: tuple[str, ...]  # substrings of the error line (file name, line, key, valid choices)
    stage: str = "extract"
    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    model: bool = False  # only detectable once the model is loaded (e.g. its depth)
    absent: tuple[str, ...] = ()  # substrings the error must NOT hold
    xfail: str | None = None  # a known bug, reported; strict, so a fix makes this row fail until unmarked


# ---- builders -------------------------------------------------------------------------------------------

def trait(mutate: Callable[[Path], None], *extra: str, n: int = 6) -> Build:
    """A valid tiny trait in <case>/trait, then `mutate(trait_dir)`; passed with trait.path=."""

    def build(d: Path) -> list[str]:
        t = tiny_trait(d / "trait", n=n)
        mutate(t)
        return [f"trait.path={t}", *extra]

    return build


def args(*overrides: str, trait_ok: bool = True) -> Build:
    """Plain overrides over a valid tiny trait."""

    def build(d: Path) -> list[str]:
        return ([f"trait.path={tiny_trait(d / 'trait')}"] if trait_ok else []) + list(overrides)

    return build


def write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def mutate(t: Path) -> None:
        (t / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))

    return mutate


def replace_line(name: str, lineno: int, text: str) -> Callable[[Path], None]:
    def mutate(t: Path) -> None:
        lines = (t / name).read_text(encoding="utf-8").splitlines()
        lines[lineno - 1] = text
        (t / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    return mutate


def drop_last_line(name: str) -> Callable[[Path], None]:
    def mutate(t: Path) -> None:
        lines = (t / name).read_text(encoding="utf-8").splitlines()
        (t / name).write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")

    return mutate


def with_bom(name: str) -> Callable[[Path], None]:
    def mutate(t: Path) -> None:
        (t / name).write_bytes(b"\xef\xbb\xbf" + (t / name).read_bytes())

    return mutate


def non_utf8(t: Path) -> None:
    lines = (t / "negative.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = b'{"prompt": "caf\xe9 au lait?", "response": "no"}\n'  # Latin-1 e-acute
    (t / "negative.jsonl").write_bytes(b"".join(lines))


def huge_line(t: Path) -> None:
    row = json.dumps({"prompt": "x" * (10 * 1024 * 1024), "response": "y"})
    (t / "positive.jsonl").write_text(row + "\n" + (t / "positive.jsonl").read_text(), encoding="utf-8")
    drop_last_line("positive.jsonl")(t)


def two_formats(t: Path) -> None:
    (t / "positive.txt").write_text("\n".join(f"prompt {i}" for i in range(6)) + "\n", encoding="utf-8")


def only_negative(t: Path) -> None:
    (t / "positive.jsonl").unlink()


def steering(obj: object) -> Callable[[Path], None]:
    return write("steering.json", json.dumps(obj, indent=1) + "\n")


def truncated_vector(d: Path) -> Path:
    """A real vector file (SmolLM2's hidden size) cut in half."""
    from traitlab.tracking.artifacts import save_vector

    p = d / "vec" / "layer_010.safetensors"
    save_vector(p, torch.ones(576), {"layer": 10})
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


def wrong_dim_vector(d: Path) -> Path:
    from traitlab.tracking.artifacts import save_vector

    p = d / "vec" / "layer_010.safetensors"
    save_vector(p, torch.ones(100), {"layer": 10})
    return p


def good_vector(d: Path) -> Path:
    from traitlab.tracking.artifacts import save_vector

    p = d / "vec" / "layer_010.safetensors"
    save_vector(p, torch.ones(576), {"layer": 10})
    return p


def layer_zero_file() -> Build:
    def build(d: Path) -> list[str]:
        from traitlab.tracking.artifacts import save_vector

        save_vector(d / "layer_000.safetensors", torch.ones(576), {"layer": 0, "component": "residual"})
        return [f"vector_file={d / 'layer_000.safetensors'}"]

    return build


def bad_prompt_set(d: Path) -> Path:
    p = d / "prompts.json"
    p.write_text('{"prompts": [\n  {"id": 1, "prompt": "hi"},\n  {"id": 2, "promt": "typo"}\n]}\n',
                 encoding="utf-8")
    return p


def vector_run(make_vector: Callable[[Path], Path], *extra: str, infer: bool = False) -> Build:
    """A FINISHED extract run in the case's store (tags as launchers/extract.py writes them) whose vector
    artifact is `make_vector(d)`: the launcher finds it through the registry and must refuse to load it."""

    def build(d: Path) -> list[str]:
        from traitlab.data import load_trait
        from traitlab.models.identity import model_tags
        from traitlab.models.loading import ModelSpec
        from traitlab.tracking.artifacts import vector_path
        from traitlab.tracking.store import ensure_store

        t = tiny_trait(d / "trait")
        name = load_trait(t).qualified_name
        client, exp_id = ensure_store(Sandbox(d).uri, "rel")
        tags = {"traitlab.stage": "extract", "trait": name, **model_tags(ModelSpec()), "method": "mean_diff",
                "component": "residual", "position": "response[:]", "layers": "10"}
        run = client.create_run(exp_id, tags=tags)
        client.log_metric(run.info.run_id, "val_effect_size", 1.0, step=10)
        vec = make_vector(d)
        rel = Path(vector_path("residual", "response[:]", "mean_diff", 10))
        client.log_artifact(run.info.run_id, str(vec), str(rel.parent))
        client.set_terminated(run.info.run_id, status="FINISHED")
        base = [f"traits=[{name}]", "prompt_set=starter", "inference.max_prompts=2"] if infer else \
            [f"trait.path={t}", "method=mean_diff"]
        return [*base, *extra]

    return build


def prompt_set_file() -> Build:
    def build(d: Path) -> list[str]:
        return [f"prompt_set={bad_prompt_set(d)}"]

    return build


def responses_file() -> Build:
    def build(d: Path) -> list[str]:
        p = d / "items.json"
        p.write_text('[\n {"prompt": "hi", "response": "hello"},\n {"prompt": "bye", "response": ""}\n]\n',
                     encoding="utf-8")
        return ["mode=from_responses", f"responses={p}"]

    return build


# ---- the table ------------------------------------------------------------------------------------------

CASES: list[Case] = [
    # trait files
    Case("bad_json_line", trait(replace_line("positive.jsonl", 3, '{"prompt": "unclosed", "response": "x"')),
         ("positive.jsonl:3", "invalid JSON")),
    Case("missing_prompt", trait(replace_line("negative.jsonl", 2, '{"response": "no prompt here"}')),
         ("negative.jsonl:2", 'missing key "prompt"')),
    Case("wrong_type", trait(replace_line("positive.jsonl", 4, '{"prompt": 42, "response": "x"}')),
         ("positive.jsonl:4", '"prompt" must be a string, got number')),
    Case("line_not_object", trait(replace_line("positive.jsonl", 1, '["prompt", "response"]')),
         ("positive.jsonl:1", "expected a JSON object per line, got array")),
    Case("jsonl_unknown_key", trait(replace_line("positive.jsonl", 5, '{"promt": "typo", "response": "x"}')),
         ("positive.jsonl:5", "unknown key 'promt'", "allowed keys: prompt, system_prompt, response")),
    Case("duplicate_key", trait(replace_line("negative.jsonl", 6, '{"prompt": "a", "prompt": "b"}')),
         ("negative.jsonl:6", 'duplicate key "prompt"')),
    Case("empty_prompt", trait(replace_line("positive.jsonl", 2, '{"prompt": "  ", "response": "x"}')),
         ("positive.jsonl:2", '"prompt" is an empty string')),
    Case("empty_file", trait(write("negative.jsonl", "")), ("negative.jsonl", "empty file")),
    Case("whitespace_only_file", trait(write("positive.jsonl", "\n  \n\n")), ("positive.jsonl", "empty file")),
    Case("unequal_pairs", trait(drop_last_line("negative.jsonl")),
         ("positive.jsonl:6", "unequal pair counts", "positive.jsonl has 6", "negative.jsonl has 5")),
    Case("two_formats", trait(two_formats), ("two formats for positive", "positive.jsonl and positive.txt")),
    Case("no_positive_file", trait(only_negative), ("no positive file", "positive.jsonl")),
    Case("misspelt_file", trait(write("negativ.jsonl", '{"prompt": "x"}\n')),
         ("negativ.jsonl", "did you mean negative.jsonl")),
    Case("non_utf8", trait(non_utf8), ("negative.jsonl:2", "not UTF-8", "0xe9")),
    Case("huge_line_10MB", trait(huge_line), ("positive.jsonl:1", "longer than 1 MiB")),
    # A BOM is accepted: the run gets past every data check and stops at the next bad input (layers).
    Case("bom_accepted", trait(with_bom("positive.jsonl"), "layers=abc"),
         ("layers 'abc'", "cannot parse"), absent=("positive.jsonl", "UTF-8")),
    Case("json_format_bad_prompts", trait(lambda t: (t / "positive.jsonl").unlink() or
                                          write("positive.json", '{\n "prompts": "one string"\n}\n')(t)),
         ("positive.json:2", '"prompts" must be a non-empty array')),
    Case("txt_format_not_utf8", trait(lambda t: (t / "positive.jsonl").unlink() or
                                      write("positive.txt", b"ok line\n\xff\xfe bad\n")(t)),
         ("positive.txt:2", "not UTF-8")),
    Case("steering_without_questions", trait(steering({"direction": "positive"})),
         ("steering.json:1", 'missing key "questions"')),
    Case("steering_bad_direction", trait(steering({"questions": ["q?"], "direction": "up"})),
         ("steering.json:5", '"direction" must be one of', "'positive'")),
    Case("steering_invalid_json", trait(write("steering.json", '{"questions": ["a",\n ]}\n')),
         ("steering.json:2", "invalid JSON")),
    Case("overrides_bad_yaml", trait(write("extraction.yaml", "val_split: [0.1\nseed: 3\n")),
         ("extraction.yaml", "invalid YAML")),
    Case("trait_path_missing", args("trait.path=/nonexistent/trait_dir", trait_ok=False),
         ("trait.path", "/nonexistent/trait_dir", "is not a directory")),
    Case("trait_name_dotdot", args("trait.name=../../etc", trait_ok=False),
         ("config trait", "'../../etc'", "no '..'")),
    Case("trait_option_dotdot", args("trait=../method/probe", trait_ok=False), ("trait/../method/probe",)),
    Case("trait_unknown", args("trait.name=starter/no_such_trait", trait_ok=False),
         ("no trait 'starter/no_such_trait'", "available in starter:", "starter/optimism")),
    # configs
    Case("unknown_group_option", args("method=nope"), ("method/nope", "mean_diff", "probe")),
    Case("config_unknown_key", args("extraction.valsplit=0.2"), ("extraction.valsplit", "not in 'ExtractionConfig'")),
    Case("config_unknown_key_force_added", args("+extraction.valsplit=0.2"),
         ("config extraction.valsplit", "unknown key", "val_split")),
    Case("wrong_value_type", args("seed=abc"), ("seed=abc", "could not be converted to Integer")),
    Case("layer_dsl_garbage", args("layers=abc"), ("layers 'abc'", "cannot parse", "expected all, N")),
    Case("layer_range_backwards", args("layers=12-10"), ("layers '12-10'", "runs backwards")),
    Case("layer_percent_over_100", args("layers=50%-150%"), ("layers '50%-150%'", "above 100%")),
    Case("position_dsl_garbage", args("position.spec='respnse[:5]'"),
         ("position 'respnse[:5]'", "unknown frame", "response")),
    Case("override_syntax", args("method.kwargs.C=[1,2"), ("override 'method.kwargs.C=[1,2'",)),
    # DSL values reach the DSL parser as typed (the launcher quotes them for Hydra), so its error names them
    Case("position_dsl_unclosed", args("position.spec=response[:5"), ("position 'response[:5'", "cannot parse")),
    Case("unknown_component", args("component.name=attn_out"), ("config component", "'attn_out'", "residual")),
    Case("method_bad_kwarg", args("method=probe", "+method.kwargs.bogus=1"),
         ("config method.bogus", "valid options:", "penalty")),
    Case("val_split_out_of_range", args("extraction.val_split=1.5"), ("extraction.val_split", "1.5")),
    Case("cv_one_fold", args("extraction.cv_folds=1"), ("extraction.cv_folds", "at least 2 folds")),
    Case("bad_dtype", args("model.dtype=float8"), ("config model.dtype", "'float8'", "bfloat16")),
    Case("bad_device", args("model.device=tpu"), ("config model.device", "'tpu'", "cpu")),
    Case("bad_quantization", args("model.quantization=int3"), ("config model.quantization", "'int3'", "nf4")),
    Case("hf_model_without_id", args("model=hf"), ("config model.id", "is empty"), model=True),
    Case("multirun_job_named", args("-m", "layers=abc,xyz"), ("in job [", "layers='abc',", "layers 'abc'")),
    # only after the model is loaded (its depth / the adapter registry check)
    Case("layer_out_of_range", args("layers=99"), ("layers '99'", "out of range", "0..29"), model=True),
    Case("negative_layer_out_of_range", args("layers=-31"), ("layers '-31'", "out of range"), model=True),
    # steering stage (launchers/steer.py; rows are skipped while a stage's launcher does not exist)
    Case("steer_no_questions", trait(steering({"direction": "positive"})),
         ("steering.json:1", 'missing key "questions"'), stage="steer"),
    Case("steer_threshold_out_of_range", args("steering.threshold=150"),
         ("config steering.threshold", "150", "0..100"), stage="steer"),
    Case("steer_threshold_negative", args("steering.threshold=-1"), ("config steering.threshold", "0..100"),
         stage="steer"),
    Case("steer_bounds_reversed", args("steering.search_space.low=3.0", "steering.search_space.high=0.5"),
         ("config steering.search_space", "reversed", "low=3.0", "high=0.5"), stage="steer"),
    Case("steer_bad_sampler", args("steering.sampler=bayes"), ("steering.sampler", "'bayes'", "adaptive", "tpe"),
         stage="steer"),
    Case("steer_openai_without_key", args("judge=openai"), ("OPENAI_API_KEY",), stage="steer",
         unset=("OPENAI_API_KEY",)),
    Case("steer_unreachable_base_url", args("judge=openai_compatible", "judge.base_url=http://127.0.0.1:9/v1"),
         ("judge.base_url", "http://127.0.0.1:9/v1", "connection refused"), stage="steer"),
    Case("steer_compatible_without_base_url", args("judge=openai_compatible"), ("judge.base_url",), stage="steer"),
    Case("steer_unknown_judge_key", args("judge=hf_local", "+judge.temprature=0"), ("judge.temprature", "unknown"),
         stage="steer"),
    Case("steer_no_vectors", args("judge=hf_local"), ("no extracted vectors", "launchers/extract.py"),
         stage="steer"),
    Case("steer_truncated_vector", vector_run(truncated_vector, "judge=hf_local", "layers=10"),
         ("layer_010.safetensors", "truncated or corrupted"), stage="steer", model=True),
    Case("steer_vector_wrong_dim", vector_run(wrong_dim_vector, "judge=hf_local", "layers=10"),
         ("layer_010.safetensors", "dimension 100", "576"), stage="steer", model=True),
    # inference stage (launchers/infer.py)
    Case("infer_prompt_set_dotdot", args("prompt_set=../../etc/passwd", trait_ok=False),
         ("prompt_set", "no '..'"), stage="infer"),
    Case("infer_prompt_set_malformed", prompt_set_file(), ("prompts.json:3", "unknown key 'promt'"), stage="infer"),
    Case("infer_prompt_set_unknown", args("prompt_set=no_such_set", trait_ok=False),
         ("no prompt set 'no_such_set'", "available:"), stage="infer"),
    Case("infer_bad_mode", args("mode=realtime", trait_ok=False), ("mode", "'realtime'", "stream"), stage="infer"),
    Case("infer_responses_malformed", responses_file(), ("items.json", "item 1", '"response"'), stage="infer"),
    Case("infer_truncated_vector", vector_run(truncated_vector, "layers=10", infer=True),
         ("layer_010.safetensors", "truncated or corrupted"), stage="infer", model=True),
    Case("infer_vector_wrong_dim", vector_run(wrong_dim_vector, "layers=10", infer=True),
         ("layer_010.safetensors", "dimension 100", "576"), stage="infer", model=True),
    # export and serve (`traitlab export|serve`, launchers/export.py|serve.py): none of them loads the model
    Case("export_no_vectors", args(), ("no vectors of trait", "launchers/extract.py"), stage="export"),
    Case("export_not_residual", args("component=attn_contribution"), ("config component", "residual stream"),
         stage="export"),
    Case("export_layer_zero", layer_zero_file(), ("layer 0", "cannot steer block 0", "layers >= 1"),
         stage="export"),
    Case("export_vector_wrong_dim", vector_run(wrong_dim_vector, "layers=10"),
         ("layer_010.safetensors", "dimension 100", "576"), stage="export"),
    Case("serve_bad_mode", args("mode=steer"), ("config mode", "'steer'", "add_response"), stage="serve"),
    Case("serve_cap_without_threshold", vector_run(good_vector, "layers=10", "mode=cap"),
         ("config cap_threshold", "mode=cap"), stage="serve"),
    Case("serve_no_steering_result", vector_run(good_vector, "layers=10"),
         ("config coefficient", "no steering result", "coefficient=<number>"), stage="serve"),
]

def available(stage: str) -> bool:
    return (ROOT / "launchers" / f"{stage}.py").is_file()


def _case_spec(case: Case, base: Path) -> dict:
    d = base / case.id
    box = Sandbox(d).seed_store()  # an empty migrated store: store creation is not what these rows test
    overrides = case.build(d)
    env = {k: v for k, v in box.env(**case.env).items() if os.environ.get(k) != v}
    return {"id": case.id, "stage": case.stage, "args": with_fast(overrides, d / "hydra", case.stage), "env": env,
            "unset": list(case.unset)}


def _run_table(cases: list[Case], base: Path) -> dict[str, dict]:
    specs = [_case_spec(c, base) for c in cases]
    (base / "cases.json").write_text(json.dumps(specs, indent=1))
    proc = subprocess.run([PY, str(Path(__file__).with_name("case_runner.py")), str(base / "cases.json"),
                           str(base / "results.json")], env=Sandbox(base).env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((base / "results.json").read_text())
    for s in specs:
        results[s["id"]].update(args=s["args"], dir=str(base / s["id"]))
    return results


def _params(model: bool) -> list:
    out = []
    for c in CASES:
        if c.model != model:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        if not available(c.stage):
            marks.append(pytest.mark.skip(reason=f"launchers/{c.stage}.py does not exist yet"))
        if model:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory) -> dict[str, dict]:
    return _run_table([c for c in CASES if not c.model and available(c.stage)], tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def model_results(tmp_path_factory) -> dict[str, dict]:
    return _run_table([c for c in CASES if c.model and available(c.stage)], tmp_path_factory.mktemp("badm"))


def check_rejected(case: Case, res: dict, box: Sandbox, before_model: bool) -> None:
    err = res["stderr"]
    assert res["rc"] == 2, f"exit {res['rc']}: {err[-2000:]}"
    assert "Traceback" not in err
    line = last_line(err)
    assert line.startswith("error ("), err[-2000:]
    for s in case.expect:
        assert s in line, f"{s!r} not in {line!r}"
    for s in case.absent:
        assert s not in line, f"{s!r} in {line!r}"
    if before_model:
        # nothing but the error line: no Hydra "Error executing job" preamble, no log, no bar
        assert nonempty_lines(err) == [line], err
        assert LOADED_LOG not in err and CONVERTING_LOG not in err
        assert res["models_loaded"] == 0, "the model was loaded before the input was rejected"
        # generous: the shared CI box may be busy; a model load plus a capture takes far longer
        assert res["seconds"] < 10.0, f"took {res['seconds']:.1f}s: something heavy ran before the check"
    everything = runs(box)
    assert not [r.info.run_id for r in everything if r.info.status == "RUNNING"], "a run was left RUNNING"
    # runs this case's launcher made (a row may have set up an earlier stage's run as its input)
    mine = [r for r in everything if r.data.tags.get("traitlab.stage") == case.stage]
    sweeps = [r for r in everything if r.data.tags.get("traitlab.stage") == f"{case.stage}_sweep"]
    assert all(r.info.status == "FAILED" for r in sweeps)
    if before_model:
        assert mine == [], "a run was opened for an input that is invalid before the model loads"
    for r in mine:
        assert r.info.status != "FINISHED", f"run {r.info.run_id} FINISHED on a rejected input"
        assert not [p for p in run_files(box, r) if "vectors" in p.parts], "partial artifacts left behind"


@pytest.mark.parametrize("case", _params(model=False))
def test_rejected_before_model(case: Case, fast_results, tmp_path_factory) -> None:
    res = fast_results[case.id]
    check_rejected(case, res, Sandbox(Path(res["dir"])), before_model=True)


@pytest.mark.parametrize("case", _params(model=True))
def test_rejected_after_model(case: Case, model_results) -> None:
    res = model_results[case.id]
    check_rejected(case, res, Sandbox(Path(res["dir"])), before_model=False)


# ---- the same rows in real, separate processes ----------------------------------------------------------

REAL_PROCESS_IDS = ["bad_json_line", "unknown_group_option", "override_syntax", "layer_dsl_garbage"]


@pytest.mark.parametrize("case_id", REAL_PROCESS_IDS)
def test_real_process_matches_shared_runner(case_id: str, fast_results, tmp_path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    spec = _case_spec(case, tmp_path)
    proc = launch("extract", spec["args"], Sandbox(tmp_path / case_id).env(), timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert nonempty_lines(proc.stderr) == [last_line(proc.stderr)]
    # same message, up to the per-sandbox paths
    ours = last_line(proc.stderr).replace(str(tmp_path / case_id), "<d>")
    shared = last_line(fast_results[case_id]["stderr"]).replace(fast_results[case_id]["dir"], "<d>")
    assert ours == shared


def test_traceback_only_with_hydra_full_error(tmp_path) -> None:
    case = next(c for c in CASES if c.id == "bad_json_line")
    spec = _case_spec(case, tmp_path)
    box = Sandbox(tmp_path / case.id)
    quiet = launch("extract", spec["args"], box.env(), timeout=120)
    loud = launch("extract", spec["args"], box.env(HYDRA_FULL_ERROR="1"), timeout=120)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0
    assert "Traceback (most recent call last)" in loud.stderr
    assert "DataError" in loud.stderr and "positive.jsonl:3" in loud.stderr


# ---- function level: vector files and prompt sets (names escaping datasets/: test_security.py) ---------------------------------------

def test_load_vector_rejects_truncated_and_corrupted(tmp_path) -> None:
    from traitlab.tracking.artifacts import load_vector, save_vector

    good = tmp_path / "good.safetensors"
    save_vector(good, torch.arange(576, dtype=torch.float32), {"layer": 3})
    v, meta = load_vector(good, expected_dim=576)
    assert torch.equal(v, torch.arange(576, dtype=torch.float32)) and meta["layer"] == "3"

    raw = good.read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "header_only": raw[:8],
        "empty": b"",
        "flipped_byte": raw[:-10] + bytes([raw[-10] ^ 0x01]) + raw[-9:],
        "garbage": b"not a safetensors file at all",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(DataError) as e:
            load_vector(p, expected_dim=576)
        msg = str(e.value)
        assert str(p) in msg and "\n" not in msg, name
        if name == "flipped_byte":
            assert "checksum mismatch" in msg


def test_load_vector_rejects_dimension_mismatch(tmp_path) -> None:
    from traitlab.tracking.artifacts import load_vector, save_vector

    p = tmp_path / "v.safetensors"
    save_vector(p, torch.ones(100), {})
    with pytest.raises(DataError, match=r"dimension 100 but the model's component has 576"):
        load_vector(p, expected_dim=576)
    save_vector(p, torch.ones(2, 576), {})
    with pytest.raises(DataError, match="must be 1-D"):
        load_vector(p, expected_dim=576)
    save_vector(p, torch.full((576,), float("nan")), {})
    with pytest.raises(DataError, match="NaN"):
        load_vector(p, expected_dim=576)


def test_malformed_prompt_set_names_its_line(tmp_path) -> None:
    from traitlab.data import load_prompt_set

    with pytest.raises(DataError, match=r"prompts\.json:3: unknown key 'promt'"):
        load_prompt_set(path=bad_prompt_set(tmp_path))


def test_table_size() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


__all__ = ["CASES", "Case", "truncated_vector", "wrong_dim_vector", "write_jsonl"]
