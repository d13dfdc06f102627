"""An inference HTML view served by a REAL `mlflow server` and rendered by headless Chromium.

The server sends every artifact with ``Content-Disposition: attachment`` (so a browser pointed at the
``/get-artifact`` URL downloads it instead of rendering it). The MLflow UI therefore fetches the artifact
with JS and renders the text as HTML (a blob in a sandboxed iframe). Chromium's --dump-dom cannot read
inside a sandboxed iframe, so the host page here does the same fetch and writes the text into its own
document: what is checked is exactly the bytes the server's artifact endpoint returns, with their
scripts run under the page's own Content-Security-Policy.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
import torch

from browser import dump_dom, parse_dom, require_chromium, serve_directory
from browser import mlflow_server as real_mlflow_server
from traitlab.pipelines.infer import Scored, TextItem, TraitVector, build_record, write_views
from traitlab.tracking.registry import VectorRef
from traitlab.tracking.runs import job_run

pytestmark = pytest.mark.slow

TOKENS = ["<|im_start|>user\n", "Hi", "<|im_end|>\n", " Hello", " <b>there</b>", "!"]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1 (sqlite backend, artifacts proxied by the server)."""
    with real_mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path, tmp_path / "server_artifacts") as base:
        yield base


def _record() -> dict:
    ref = VectorRef("run0", "cat/kind", "m", "mean_diff", "residual", "response[:]", 3)
    tv = TraitVector("cat/kind", 3, ref, torch.ones(4), baseline=0.0, selection="val_effect_size")
    raw = torch.tensor([[40.0], [1.0], [2.0], [0.5], [-1.5], [3.0]])
    norms = torch.tensor([100.0, 4.0, 4.0, 2.0, 2.0, 2.0])
    scored = Scored(list(range(6)), 3, {3: raw}, {3: norms})
    return build_record(
        TextItem("p<1>", "Hi", response=" Hello <b>there</b>!"),
        TOKENS,
        scored,
        [tv],
        {0: 0},
        model="m",
        source="smoke",
        score_mode="normalized",
        centered=False,
        clean_massive=False,
    )


def test_view_served_by_mlflow_renders_scored_tokens(mlflow_server, tmp_path, monkeypatch):
    chromium = require_chromium()
    monkeypatch.setenv("TRAITLAB_OUTPUTS", str(tmp_path / "outputs"))
    rec = _record()
    with job_run(
        experiment="ui",
        job_key="ui-view",
        run_name="ui-view",
        config={"x": 1},
        tags={"traitlab.stage": "infer"},
        uri=mlflow_server,
    ) as run:
        out = tmp_path / "views_out"
        pages = write_views(out, [rec], title="ui test", max_figures=0)
        run.log_artifacts(out)
    assert pages == ["views/prompts/p_1.html"]

    url = f"{mlflow_server}/get-artifact?" + urllib.parse.urlencode(
        {"path": pages[0], "run_uuid": run.run_id}
    )
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "attachment" in resp.headers["Content-Disposition"]  # why the UI (and this test) fetch it
        served = resp.read().decode()
    assert served == (out / pages[0]).read_text()

    host = tmp_path / "host"
    host.mkdir()
    (host / "ui.html").write_text(
        "<!DOCTYPE html><html><head><title>host</title></head><body><script>"
        f"fetch({json.dumps(url)}).then(function (r) {{ return r.text(); }}).then(function (t) {{"
        " document.open(); document.write(t); document.close(); });"
        "</script></body></html>"
    )
    with serve_directory(host) as site:
        dom = parse_dom(dump_dom(site + "ui.html", binary=chromium))
    assert dom.container is not None and dom.container["data-rendered"] == "js", (
        "the view's script did not run"
    )
    assert dom.title.startswith("p<1>")
    assert [s.text for s in dom.spans] == TOKENS  # the markup in a token stays text
    scores = rec["traits"]["cat/kind"]["layers"]["3"]["scores"]
    assert scores[3:] == pytest.approx([0.25, -0.75, 1.5])  # raw / mean response norm (2)
    for span, want in zip(dom.spans, scores, strict=True):
        assert float(span.attrs["data-score"]) == pytest.approx(want)
    assert not dom.tags("b")  # no element was created from model text

    # the index comes through the same endpoint and holds the prompt itself: MLflow's sandboxed frame cannot
    # follow a link to another artifact (tests/integration/test_mlflow_inference_index.py clicks through it)
    index_url = f"{mlflow_server}/get-artifact?" + urllib.parse.urlencode(
        {"path": "views/index.html", "run_uuid": run.run_id}
    )
    with urllib.request.urlopen(index_url, timeout=30) as resp:
        index = resp.read().decode()
    assert "href=" not in index and " Hello &lt;b&gt;there&lt;/b&gt;!" in index
