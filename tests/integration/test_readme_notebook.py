"""The README's notebook example, run as written (in a temp directory, against a temp MLflow store)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"
MARK = "<!-- notebook-example:"


def notebook_example() -> str:
    text = README.read_text()
    block = re.search(re.escape(MARK) + r".*?-->\n```python\n(.*?)```", text, re.S)
    assert block, f"README.md has no ```python block after {MARK}"
    return block.group(1)


def test_readme_notebook_example_runs(mlflow_store, tmp_path, monkeypatch, capsys, smollm2):
    monkeypatch.chdir(tmp_path)
    exec(compile(notebook_example(), str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102
    out = capsys.readouterr().out
    assert "SteeringVector(trait='starter/optimism'" in out
    steered = re.search(r"^steered: +(.*)$", out, re.M).group(1)
    unsteered = re.search(r"^unsteered: +(.*)$", out, re.M).group(1)
    assert steered and unsteered and steered != unsteered
    assert re.search(r"^starter/optimism L1[02]: [+-]\d\.\d{3} -> [+-]\d\.\d{3} \(n=1\)$", out, re.M)
    assert (tmp_path / "optimism.safetensors").is_file() and (tmp_path / "optimism.json").is_file()
