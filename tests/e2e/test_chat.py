"""`traitlab chat` used as a person would, through a pseudo-terminal (pexpect): type a message, watch the
coloured reply stream, change the coefficient, stack a vector, turn steering off, save, quit; then read the
saved run back from MLflow."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.pipelines.extract import run_extract

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "you>"
TRUECOLOR_BG = re.compile(r"\x1b\[[0-9;]*48;2;\d+;\d+;\d+m")  # a 24-bit background colour


def test_chat_session_in_a_terminal(mlflow_store, tmp_path, smollm2):
    for trait in ("starter/optimism", "starter/formality"):
        run_extract(ExtractConfig(trait=TraitConfig(name=trait), method=MethodConfig(name="mean_diff"),
                                  layers="10", tracking=TrackingConfig(experiment="chat")), lm=smollm2)
    env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor", TQDM_DISABLE="1", COLUMNS="200")
    # `traitlab chat ...` (the console script calls traitlab.cli:main)
    args = ["-c", "from traitlab.cli import main; main()", "chat", "vectors=starter/optimism", "layers=10",
            "coefficient=8", "generation.max_new_tokens=8", "tracking.experiment=chat",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    child = pexpect.spawn(sys.executable, args, cwd=str(ROOT), env=env, encoding="utf-8", timeout=300,
                          dimensions=(40, 200))
    transcript = []

    def turn(line: str, expect: str = PROMPT) -> str:
        child.sendline(line)
        child.expect(expect)
        transcript.append(child.before)
        return child.before

    try:
        child.expect(PROMPT)
        assert "steering: starter/optimism L10 x 8 (add)" in child.before
        reply = turn("Tell me about Mondays.")
        assert "model>" in reply and TRUECOLOR_BG.search(reply), reply  # tokens arrive coloured
        assert "x 4 (add)" in turn("/coef 4")
        stacked = turn("/add starter/formality 0.5")
        assert "starter/optimism L10 x 4 + starter/formality L10 x 2 (weight 0.5) (add)" in stacked
        assert "off (would apply" in turn("/off")
        turn("Tell me about Mondays.")
        assert "unknown command /frobnicate" in turn("/frobnicate")
        assert "is not one of" in turn("/mode multiply")  # a bad value: one line, the chat goes on
        child.sendline("/save")
        child.expect(r"MLflow run: ([0-9a-f]{32})")
        run_id = child.match.group(1)
        child.expect(PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, "".join(transcript)[-2000:]

    client = MlflowClient(mlflow_store)
    run = client.get_run(run_id)
    assert run.data.tags["traitlab.stage"] == "chat" and run.data.params["coefficient"] == "8"
    turns = json.loads(Path(client.download_artifacts(run_id, "transcript.json")).read_text())["turns"]
    assert [t["steering"] for t in turns] == ["starter/optimism L10 x 8 (add)", "off"]
    assert all(t["user"] == "Tell me about Mondays." and t["assistant"] for t in turns)
    pages = {f.path for f in client.list_artifacts(run_id, "views/prompts")}
    assert pages == {"views/prompts/turn01.html", "views/prompts/turn02.html"}
    rec = json.loads(Path(client.download_artifacts(run_id, "projections/turn01.json")).read_text())
    assert rec["steering"] == turns[0]["steering"] and "starter/optimism" in rec["traits"]
