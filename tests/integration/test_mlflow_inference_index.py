"""An inference run's index clicked through INSIDE the MLflow UI (real server, real SmolLM2 run, Chromium).

MLflow 3.17 shows an HTML artifact in a sandboxed iframe; a link from the index to another artifact used to
blank that frame. The index now holds every prompt: clicking one renders its tokens in the same frame.
WebDriver (chromedriver) does the clicking, since --dump-dom cannot see inside the iframe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from browser import WebDriver, mlflow_server, require_chromedriver, require_chromium
from traitlab.config.infer import InferConfig, InferenceConfig
from traitlab.config.schema import GenerationConfig, TrackingConfig
from traitlab.pipelines.infer import run_infer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def infer_run(extract_sweep, smollm2):
    """The smoke prompts scored with starter/optimism's best vector, default inference settings otherwise."""
    cfg = InferConfig(prompt_set="smoke", traits=["starter/optimism"], layers="best",
                      inference=InferenceConfig(max_prompts=3, max_figure_prompts=0,
                                                generation=GenerationConfig(max_new_tokens=12)),
                      tracking=TrackingConfig(experiment="dashboard", uri=extract_sweep.uri))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAITLAB_OUTPUTS", str(Path(extract_sweep.uri[len("sqlite:///"):]).parent.parent / "outputs"))
        return run_infer(cfg, lm=smollm2)


def _scores(wd: WebDriver) -> list[str | None]:
    return wd.execute("return Array.from(document.querySelectorAll('#tokens .tok'))"
                      ".map(function (s) { return s.getAttribute('data-score'); });")


def test_clicking_a_prompt_renders_it_inside_the_mlflow_frame(extract_sweep, infer_run, tmp_path):
    driver, chromium = require_chromedriver(), require_chromium()
    records = infer_run.records
    assert len(records) == 3 and all(r["centered"] for r in records)  # centred on the baseline by default
    client = MlflowClient(extract_sweep.uri)
    assert client.get_run(infer_run.run_id).info.experiment_id == extract_sweep.experiment_id
    second = records[1]
    (trait, layers), = second["traits"].items()
    (layer, entry), = layers["layers"].items()
    with mlflow_server(extract_sweep.uri, tmp_path) as base, WebDriver(driver, chromium) as wd:
        wd.get(f"{base}/#/experiments/{extract_sweep.experiment_id}/runs/{infer_run.run_id}/artifacts/"
               "views/index.html?workflowType=machine_learning")
        wd.frame(wd.wait("iframe", timeout=90))
        wd.wait('#tokens[data-rendered="js"]')
        buttons = wd.find_all("#prompt-rows button.pick")
        assert [wd.text(b) for b in buttons] == [r["prompt_id"] for r in records]
        # every prompt's full response is on the index
        rows = wd.execute("return Array.from(document.querySelectorAll('#prompt-rows tr'))"
                          ".map(function (r) { return r.children[2].textContent; });")
        assert rows == [r["response"] for r in records]
        # the header names the vector and why it was chosen
        vectors = wd.text(wd.wait("#vectors"))
        assert entry["vector"]["run_id"][:8] in vectors and entry["vector"]["selection"] in vectors
        assert entry["vector"]["run_id"] in extract_sweep.child_run_ids

        wd.click(buttons[1])
        box = wd.wait(f'#tokens[data-prompt="{second["prompt_id"]}"]')
        assert wd.attr(box, "data-label") == f"{trait} L{layer}"
        assert wd.execute("return document.querySelectorAll('#tokens .tok').length;") == len(second["tokens"])
        want = [None if s is None else s for s in entry["scores"]]
        got = _scores(wd)
        assert [g is None for g in got] == [w is None for w in want]
        assert [float(g) for g in got if g is not None] == pytest.approx([w for w in want if w is not None])
        # a top span opens its prompt with the span's tokens outlined
        wd.click(wd.wait("#top-spans button.pick"))
        hl = wd.execute("return Array.from(document.querySelectorAll('#tokens .tok.hl'))"
                        ".map(function (s) { return Number(s.getAttribute('data-idx')); });")
        assert len(hl) == 4 and hl == list(range(hl[0], hl[0] + 4))
        wd.frame(None)
        assert wd.find_all("iframe"), "the artifact frame is gone"

    page = json.loads(Path(client.download_artifacts(infer_run.run_id, "projections", str(tmp_path / "p")))
                      .joinpath(f"{second['prompt_id']}.json").read_text())
    assert page["traits"][trait]["layers"][layer]["scores"] == entry["scores"]
