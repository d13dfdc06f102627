"""The run's single-page index: every prompt in one page (no links), one colour scale shared by all prompts,
each vector's provenance, top tokens and spans across prompts; and per-prompt pages on the same scale."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import numpy as np
import pytest

from browser import parse_dom
from traitlab.monitor.run_index import SCALE_QUANTILE, SPAN_TOKENS, index_data, page_scales
from traitlab.viz.token_index import render_run_index
from traitlab.viz.token_view import render_token_html, token_colour

VECTOR = {"run_id": "0123456789abcdef", "method": "mean_diff", "component": "residual", "position": "response[:]",
          "layer": 12, "selection": "ood_effect_size", "selection_score": 2.9783}


def _record(pid: str, prompt_tokens: list[str], response_tokens: list[str], scores: list[float | None]) -> dict:
    tokens = prompt_tokens + response_tokens
    assert len(scores) == len(tokens)
    return {"prompt_id": pid, "prompt": "".join(prompt_tokens), "response": "".join(response_tokens),
            "tokens": tokens, "n_prompt_tokens": len(prompt_tokens), "model": "m", "score_mode": "normalized",
            "centered": True,
            "traits": {"cat/kind": {"layers": {"12": {"scores": scores, "mode": "normalized", "vector": VECTOR,
                                                      "baseline": 0.125}}}}}


RECORDS = [
    _record("p1", ["<u>", "Hi"], [" Sure", " <b>x</b>", " yes", " great", "!"], [5.0, 0.1, 0.2, -0.3, 0.9, 1.1, 0.4]),
    _record("p2", ["<u>", "Yo"], [" no", " bad", " sad", " -", " end", "."], [0.0, -9.0, -0.5, -0.8, -0.7, None, 0.1, 0.05]),
]
RESPONSE = np.array([0.2, -0.3, 0.9, 1.1, 0.4, -0.5, -0.8, -0.7, 0.1, 0.05])  # finite response scores, both prompts


def test_one_scale_for_every_prompt_from_all_response_tokens():
    data = index_data(RECORDS, title="t")
    (lab,) = data["labels"]
    assert lab["key"] == "cat/kind L12" and lab["n_tokens"] == RESPONSE.size  # prompt tokens (5.0, -9.0) excluded
    assert lab["scale"] == pytest.approx(float(np.quantile(np.abs(RESPONSE), SCALE_QUANTILE)))
    assert page_scales(data) == {"cat/kind": {"12": lab["scale"]}}
    assert data["prompts"][1]["means"]["cat/kind L12"] == pytest.approx(np.mean(RESPONSE[5:]))
    assert data["centered"] is True and lab["vector"] == VECTOR and lab["baseline"] == 0.125


def test_top_and_bottom_tokens_and_spans_across_prompts():
    lab = index_data(RECORDS, title="t")["labels"][0]
    top, bottom = lab["top_tokens"][0], lab["bottom_tokens"][0]
    assert (top["prompt"], top["start"], top["text"], top["mean"]) == (0, 5, " great", pytest.approx(1.1))
    assert (bottom["prompt"], bottom["start"], bottom["text"]) == (1, 3, " bad")
    # best window of SPAN_TOKENS response tokens: p1's " <b>x</b> yes great!" (0.9+1.1+0.4-0.3)/4 vs p1 from the start
    windows = [(p, i, float(np.mean(r[i:i + SPAN_TOKENS]))) for p, r in ((0, RESPONSE[:5]), (1, np.nan_to_num(
        np.array([-0.5, -0.8, -0.7, np.nan, 0.1, 0.05]))))
               for i in range(len(r) - SPAN_TOKENS + 1)]
    best = max(windows, key=lambda w: w[2])
    span = lab["top_spans"][0]
    assert (span["prompt"], span["start"] - 2, span["mean"]) == (best[0], best[1], pytest.approx(best[2]))
    assert span["stop"] - span["start"] == SPAN_TOKENS


def test_index_page_holds_every_prompt_and_never_links():
    page = render_run_index(index_data(RECORDS, title="demo · run"))
    dom = parse_dom(page)
    assert dom.tags("a") == [] and "href=" not in page  # nothing to navigate to inside MLflow's sandbox
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # full response text, escaped
    assert " Sure &lt;b&gt;x&lt;/b&gt; yes great!" in page and " no bad sad - end." in page
    (row,) = re.findall(r'<tbody><tr>(.*?)</tr></tbody></table>\n<div class="controls">', page, re.S)
    assert 'title="0123456789abcdef">01234567<' in row and "mean_diff · residual" in row
    assert "ood_effect_size = 2.98" in row
    assert "centred on each vector&#x27;s baseline" in page
    script = re.findall(r"<script>(.*?)</script>", page, re.S)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page and "innerHTML" not in script
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))
    assert [p["id"] for p in data["prompts"]] == ["p1", "p2"]
    # static fallback: the first prompt's tokens coloured on the shared scale
    scale = data["labels"][0]["scale"]
    assert [s.text for s in dom.spans] == RECORDS[0]["tokens"]
    assert f"background-color: {token_colour(1.1, scale)[0]}" in dom.spans[5].attrs["style"]


def test_prompt_page_uses_the_shared_scale_and_names_its_vector():
    scales = {"cat/kind": {"12": 2.0}}
    dom = parse_dom(render_token_html(RECORDS[0], scales))
    assert f"background-color: {token_colour(0.9, 2.0)[0]}" in dom.spans[4].attrs["style"]
    page = render_token_html(RECORDS[0], scales)
    assert "cat/kind L12: mean_diff · residual · response[:] · run 01234567 · chosen by ood_effect_size = 2.98" in page
    # without shared scales: the record's own peak (1.1)
    own = parse_dom(render_token_html(RECORDS[0]))
    assert f"background-color: {token_colour(0.9, 1.1)[0]}" in own.spans[4].attrs["style"]
