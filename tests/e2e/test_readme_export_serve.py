"""The README's "Export and serve" commands, run as written (in a temporary MLflow store and outputs dir):
extract, `traitlab export`, `traitlab serve` (which registers and then serves, in the background here, on a
free port instead of 5001) and the curl chat request."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def readme_commands(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", body, re.S)
    assert block, f"README section {section!r} has no bash block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#\s.*$", "", line) for line in lines if line.strip()]  # without trailing comments


def env_with_traitlab(tmp_path: Path, mlflow_store: str) -> dict[str, str]:
    """The test environment; a `traitlab` console script stand-in when this checkout is not installed."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if shutil.which("traitlab", path=str(Path(sys.executable).parent)) is None:
        shim = bindir / "traitlab"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m traitlab.cli "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    path = os.pathsep.join([str(bindir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return dict(os.environ, PATH=path, MLFLOW_TRACKING_URI=mlflow_store, TQDM_DISABLE="1")


def test_readme_export_and_serve_commands_run_as_written(mlflow_store, servers, tmp_path):
    lines = readme_commands("Export and serve")
    assert [ln.split()[0:2] for ln in lines] == [["python", "launchers/extract.py"], ["traitlab", "export"],
                                                  ["traitlab", "serve"], ["curl", "-s"]]
    env = env_with_traitlab(tmp_path, mlflow_store)

    def run(line: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
        return proc

    run(lines[0])
    exported = run(lines[1])
    gguf_path = Path(os.environ["TRAITLAB_OUTPUTS"]) / "export" / "starter_optimism_L9-11.gguf"
    assert f"wrote {gguf_path}" in exported.stdout
    assert {t.name for t in gguf.GGUFReader(str(gguf_path)).tensors} == {"direction.9", "direction.10", "direction.11"}

    port = servers.free_port()
    server = servers.start(["bash", "-c", f"{lines[2]} port={port}"], env, port)
    server.wait_ready("/ping", timeout_s=300)
    assert "registered models:/traitlab-optimism/1" in server.log_tail(20000)
    reply = json.loads(run(lines[3].replace("127.0.0.1:5001", f"127.0.0.1:{port}")).stdout)
    text = "".join(p["text"] for p in reply["output"][0]["content"])
    print(f"\nREADME request answered: {text!r}\n{json.dumps(reply['custom_outputs'])}")
    assert text.strip() and reply["custom_outputs"]["coefficients"] == {"10": 8.0}
    assert reply["custom_outputs"]["model"] == "embedded:smollm2-135m-instruct"
    body = json.loads(re.search(r"-d '(.*)'", lines[3]).group(1))
    plain = server.post("/invocations", {**body, "custom_inputs": {"coefficient": 0}})
    assert plain["custom_outputs"]["coefficients"] == {"10": 0.0}
    assert "".join(p["text"] for p in plain["output"][0]["content"]) != text  # the override reached the model
