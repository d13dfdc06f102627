"""Security: secrets never stored, servers bind 127.0.0.1, no pickle loads, names cannot escape datasets/,
nothing written outside the run's own directories, model text escaped in HTML.

(The HTML view in a real browser: tests/integration/test_token_view_browser.py.)
"""

from __future__ import annotations

import ast
import getpass
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import PY, ROOT, SHARED_CACHE, Sandbox, runs, tiny_trait, with_fast

from traitlab.errors import ConfigError

SRC = ROOT / "src" / "traitlab"
SENTINELS = {
    "OPENAI_API_KEY": "sk-SENTINEL-openai-5f3a9c1e77",
    "HF_TOKEN": "hf_SENTINEL_env_token_c0ffee42",
}
CFG_SECRET = "SENTINEL-config-token-8d1b2e"


def _files_holding(root: Path, needles: list[str]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            found = [n for n in needles if n.encode() in data]
            if found:
                hits[str(p)] = found
    return hits


# ---- secrets ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_no_secret_reaches_store_artifacts_or_logs(tmp_path) -> None:
    """A secret in the environment and one in a config key (`model.extra.hf_token`), through a multirun
    (parent run tag of the overrides, Hydra's multirun.yaml, per-job .hydra/ files, job logs)."""
    box = Sandbox(tmp_path).seed_store()
    trait = tiny_trait(tmp_path / "trait")
    sweep = box.outputs / "multirun"
    args = with_fast(["-m", f"trait.path={trait}", f"+model.extra.hf_token={CFG_SECRET}", "method=mean_diff"], sweep)
    proc = subprocess.run([PY, str(ROOT / "launchers" / "extract.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env=box.env(**SENTINELS), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    needles = [CFG_SECRET, *SENTINELS.values()]

    rs = runs(box)
    assert {r.data.tags.get("traitlab.stage") for r in rs} == {"extract", "extract_sweep"}
    child = next(r for r in rs if r.data.tags.get("traitlab.stage") == "extract")
    assert child.data.params["model.extra.hf_token"] == "***"  # the key is kept, its value is not
    assert child.data.params["extraction.generation.max_new_tokens"].isdigit()  # a length, not a secret
    parent = next(r for r in rs if r.data.tags.get("traitlab.stage") == "extract_sweep")
    assert "+model.extra.hf_token=***" in parent.data.tags["traitlab.overrides"]

    leaks = {}
    for db_file in tmp_path.glob("mlflow.db*"):  # the database and its WAL
        data = db_file.read_bytes()
        leaks.update({str(db_file): [n for n in needles if n.encode() in data]})
    leaks.update(_files_holding(box.artifacts, needles))
    leaks.update(_files_holding(box.outputs, needles))  # Hydra's .hydra/*.yaml, multirun.yaml, job logs
    assert {k: v for k, v in leaks.items() if v} == {}
    assert not any(n in proc.stdout + proc.stderr for n in needles)
    # the scan can see a secret where one is: Hydra's files were written (then redacted) and hold the key
    hydra_cfgs = list(sweep.rglob(".hydra/config.yaml"))
    assert hydra_cfgs and "hf_token: '***'" in hydra_cfgs[0].read_text()


def test_redaction_rules() -> None:
    from traitlab.cli import redact_override
    from traitlab.tracking.params import flatten, redact

    cfg = {"judge": {"api_key_env": "OPENAI_API_KEY", "api_key": "sk-1"},
           "model": {"extra": {"hf_token": "hf_x", "auth_header": "Bearer y", "tokenizer_name": None}},
           "db": {"password": "p"}, "method": {"name": "probe"}}
    flat = flatten(redact(cfg))
    assert flat["judge.api_key_env"] == "OPENAI_API_KEY"  # names an env var: not a secret itself
    assert flat["judge.api_key"] == flat["model.extra.hf_token"] == flat["db.password"] == "***"
    assert flat["model.extra.auth_header"] == "***"
    assert flat["method.name"] == "probe"
    assert redact_override("+model.extra.hf_token=abc") == "+model.extra.hf_token=***"
    assert redact_override("method=probe") == "method=probe"


def test_ordinary_parameters_are_not_redacted() -> None:
    """Names that merely contain "token" (lengths, tokenizer settings) are parameters, not secrets."""
    from traitlab.cli import redact_override
    from traitlab.tracking.params import flatten, is_secret_key, redact

    cfg = {"extraction": {"generation": {"max_new_tokens": 48}},
           "steering": {"max_new_tokens": 32}, "judge": {"max_tokens": 1, "top_logprobs": 20},
           "model": {"extra": {"tokenizer_name": "x", "pad_token": "<pad>", "add_bos_token": True,
                               "auth_token": "a-secret-1", "access_token": "a-secret-2",
                               "openai_api_key": "sk-3", "client_secret": "s"}},
           "inference": {"massive": {"max_tokens": 5000}}}
    flat = flatten(redact(cfg))
    assert flat["extraction.generation.max_new_tokens"] == "48"
    assert flat["steering.max_new_tokens"] == "32"
    assert flat["judge.max_tokens"] == "1"
    assert flat["inference.massive.max_tokens"] == "5000"
    assert flat["model.extra.tokenizer_name"] == "x"
    assert flat["model.extra.pad_token"] == "<pad>"
    assert flat["model.extra.add_bos_token"] == "True"
    for key in ("auth_token", "access_token", "openai_api_key", "client_secret"):
        assert flat[f"model.extra.{key}"] == "***", key
    assert not is_secret_key("max_new_tokens") and is_secret_key("HF_TOKEN")
    assert redact_override("steering.max_new_tokens=16") == "steering.max_new_tokens=16"


def test_env_provided_credentials_are_scrubbed(monkeypatch) -> None:
    """Any credential-named environment variable (not only the four well-known ones) is scrubbed from text,
    as is the variable a judge config names in api_key_env; ordinary variables are left alone."""
    from traitlab.tracking.params import scrub

    monkeypatch.setenv("MYLAB_SERVICE_TOKEN", "tok-SENTINEL-7781")
    monkeypatch.setenv("VLLM_API_KEY", "vk-SENTINEL-4410")
    monkeypatch.setenv("MY_JUDGE_CRED", "cred-SENTINEL-99")
    monkeypatch.setenv("MY_MAX_TOKENS", "4096")
    from traitlab.tracking import params

    params.register_secret_env("MY_JUDGE_CRED")
    text = scrub("a tok-SENTINEL-7781 b vk-SENTINEL-4410 c cred-SENTINEL-99 d 4096")
    assert text == "a *** b *** c *** d 4096"


# ---- servers bind 127.0.0.1 ---------------------------------------------------------------------------

def test_make_ui_binds_localhost_unless_host_given() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "ui"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    ui = [ln for ln in dry.stdout.splitlines() if "mlflow ui" in ln]
    assert ui and "--host 127.0.0.1" in ui[-1], dry.stdout[-2000:]
    other = subprocess.run(["make", "-n", "ui", "HOST=0.0.0.0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--host 0.0.0.0" in [ln for ln in other.stdout.splitlines() if "mlflow ui" in ln][-1]


def test_no_server_defaults_to_all_interfaces() -> None:
    """Every place that starts a server takes its host from a variable defaulting to 127.0.0.1."""
    offenders = []
    for p in [ROOT / "Makefile", *(ROOT / "scripts").glob("*"), *SRC.rglob("*.py")]:
        if not p.is_file():
            continue
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            code = line.split("#", 1)[0]
            m = re.search(r"\bHOST\s*[?:]?=\s*[\"']?([^\s\"']*)", code)
            default = m.group(1) if m else ""
            if "0.0.0.0" in code or (m and not default.startswith(("127.0.0.1", "$"))):
                offenders.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", (ROOT / "Makefile").read_text(), re.M)
    assert 'HOST=${HOST:-127.0.0.1}' in (ROOT / "scripts" / "tracking_server.sh").read_text()


# ---- no pickle -----------------------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Calls and imports in `source` that can execute code from a file: pickle & co, torch.load without
    weights_only=True, numpy allow_pickle=True, pandas read_pickle, yaml.load/unsafe_load, mlflow model loaders."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                                                    else [])
            bad = [n for n in names if n.split(".")[0] in PICKLE_MODULES]
            if bad:
                found.append(f"{filename}:{node.lineno}: import {bad[0]}")
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}
        if name.endswith("torch.load"):
            if kw.get("weights_only") != "True":
                found.append(f"{filename}:{node.lineno}: {name} without weights_only=True")
        elif kw.get("allow_pickle") == "True" or name.endswith(("read_pickle", "yaml.unsafe_load", "yaml.full_load")):
            found.append(f"{filename}:{node.lineno}: {name}")
        elif name.endswith("yaml.load") and "SafeLoader" not in kw.get("Loader", ""):
            found.append(f"{filename}:{node.lineno}: {name} without SafeLoader")
        elif re.search(r"mlflow\.(pyfunc|pytorch|sklearn|transformers)\.load_model$", name):
            found.append(f"{filename}:{node.lineno}: {name} (pickle-based)")
    return found


def test_no_pickle_or_unsafe_torch_load_in_src() -> None:
    found = []
    for p in sorted(SRC.rglob("*.py")):
        found += unsafe_loads(p.read_text(), str(p.relative_to(ROOT)))
    assert found == []


def test_unsafe_load_scanner_catches_the_bad_forms() -> None:
    bad = ("import pickle\nfrom joblib import load\nimport torch, yaml, numpy as np\n"
           "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
           "yaml.load(s)\nmlflow.pytorch.load_model(u)\n")
    assert len(unsafe_loads(bad)) == 7
    good = "import torch, yaml\ntorch.load(p, weights_only=True)\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    assert unsafe_loads(good) == []


# ---- names that escape datasets/ ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../secret", "starter/../../secret", "/etc", "~root/x", ""])
def test_trait_name_cannot_escape_datasets(name: str, tmp_path) -> None:
    from traitlab.data import resolve_trait_dir

    root = tmp_path / "traits"
    (root / "starter").mkdir(parents=True)
    tiny_trait(tmp_path / "secret")  # a real trait just outside the root: must stay unreachable by name
    with pytest.raises(ConfigError):
        resolve_trait_dir(name, root=root)


def test_trait_symlink_out_of_datasets_is_rejected(tmp_path) -> None:
    from traitlab.data import resolve_trait_dir

    root = tmp_path / "traits"
    (root / "starter").mkdir(parents=True)
    outside = tiny_trait(tmp_path / "outside")
    (root / "starter" / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="leads outside"):
        resolve_trait_dir("starter/sneaky", root=root)
    assert resolve_trait_dir(path=str(outside)) == outside.resolve()  # by explicit path it is fine


@pytest.mark.parametrize("name", ["../secret", "a/../../secret", "/etc/passwd"])
def test_prompt_set_name_cannot_escape_datasets(name: str, tmp_path) -> None:
    from traitlab.data import resolve_prompt_set

    root = tmp_path / "inference"
    root.mkdir()
    (tmp_path / "secret.json").write_text('{"prompts": ["hi"]}')
    with pytest.raises(ConfigError, match=r"no '\.\.'"):
        resolve_prompt_set(name, root=root)


def test_prompt_set_symlink_out_of_datasets_is_rejected(tmp_path) -> None:
    from traitlab.data import resolve_prompt_set

    root = tmp_path / "inference"
    root.mkdir()
    (tmp_path / "secret.json").write_text('{"prompts": ["hi"]}')
    (root / "sneaky.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(ConfigError, match="leads outside"):
        resolve_prompt_set("sneaky", root=root)


# ---- nothing written outside the run's own directories ------------------------------------------------

def _mtimes(root: Path, skip: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirs[:] = [d for d in dirs if (rel / d).parts[0] not in skip and d != "__pycache__"]
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.lstat().st_mtime_ns
    out.update({str(Path(dirpath).relative_to(root)) + "/": 0 for dirpath, _, _ in os.walk(root)
                if Path(dirpath).relative_to(root).parts[:1] not in [(s,) for s in skip]})
    return out


@pytest.mark.slow
def test_a_run_writes_only_to_its_own_directories(tmp_path) -> None:
    """A project checkout (conf/, datasets/, launchers/) run with all defaults: every write of the process
    lands in outputs/, mlruns/, the cache or the temp dir (audit hook), and the checkout outside outputs/
    and mlruns/ is unchanged (mtime snapshot)."""
    project = tmp_path / "project"
    project.mkdir()
    for d in ("conf", "datasets", "launchers"):
        shutil.copytree(ROOT / d, project / d)
    trait = tiny_trait(project / "datasets" / "traits" / "tmp" / "tiny")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    before = _mtimes(project, ("outputs", "mlruns"))
    env = Sandbox(tmp_path).env(TRAITLAB_ROOT=str(project), TMPDIR=str(tmpdir),
                                TRAITLAB_AUDIT_OUT=str(tmp_path / "written.json"), MPLCONFIGDIR=str(tmpdir / "mpl"))
    for k in ("MLFLOW_TRACKING_URI", "TRAITLAB_OUTPUTS", "TRAITLAB_MLRUNS", "TRAITLAB_DATASETS"):
        env.pop(k, None)
    proc = subprocess.run([PY, str(Path(__file__).with_name("audit_launch.py")), "launchers/extract.py",
                           "trait=tmp/tiny", "method=mean_diff", "layers='10,12'"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (project / "mlruns" / "mlflow.db").is_file() and (project / "outputs" / "hydra").is_dir()
    assert trait.is_dir()

    after = _mtimes(project, ("outputs", "mlruns"))
    assert after == before, {k for k in set(after) | set(before) if after.get(k) != before.get(k)}

    # torch creates its own compile-cache dir under the system temp dir on first import of its inductor
    # (a framework cache, not project output); everything else must stay in the run's own directories
    inductor = Path("/tmp") / f"torchinductor_{getpass.getuser()}"
    allowed = [project / "outputs", project / "mlruns", SHARED_CACHE.resolve(), tmpdir, Path("/dev"), inductor]
    written = [Path(p) for p in json.loads((tmp_path / "written.json").read_text())]
    outside = [str(p) for p in written
               if not any(p == a or p.is_relative_to(a) for a in allowed) and "__pycache__" not in p.parts
               and p != Path(":memory:")]
    assert outside == []
    # the hook saw the run's real writes (so an empty `outside` means something)
    assert any(p.is_relative_to(project / "mlruns") for p in written)


# ---- model text in HTML --------------------------------------------------------------------------------

def test_token_view_escapes_model_text() -> None:
    from traitlab.viz.token_view import render_token_html

    evil = ["</script><script>alert(1)</script>", '<img src=x onerror="alert(2)">', "a & b", "\u2028"]
    tokens = ["<|im_start|>user\n", "hi", *evil]
    record = {"prompt_id": "x", "prompt": "hi", "response": "".join(evil), "tokens": tokens, "n_prompt_tokens": 2,
              "model": "m", "traits": {"t": {"layers": {"3": {"scores": [0.1] * len(tokens), "mode": "cosine"}}}}}
    page = render_token_html(record)
    for raw in ("<script>alert(1)", "<img src=x", "onerror=\"alert"):
        assert raw not in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page  # static fallback: escaped text
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert data is not None and "alert(1)" in data.group(1)  # the token is kept, as inert JSON
    assert "\u2028" not in data.group(1) and "<" not in data.group(1)  # would end / break the script block
    assert json.loads(data.group(1))  # still valid JSON after escaping
    assert "Content-Security-Policy" in page
