"""The token view in a real headless Chromium: JS renders scored spans, model markup stays inert text."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urljoin

import pytest

from browser import dump_dom, parse_dom, require_chromium, serve_directory
from traitlab.monitor.run_index import index_data
from traitlab.viz.token_index import render_run_index
from traitlab.viz.token_view import render_token_html, token_colour

pytestmark = pytest.mark.slow

PWN_SCRIPT = "<script>document.title='pwned'</script>"
PWN_IMG = "<img src=x onerror=\"document.title='pwned'\">"
PROMPT_TOKENS = ["<|im_start|>user\n", "Say hi", "<|im_end|>\n"]
RESPONSE_TOKENS = [" Hello", PWN_SCRIPT, " and", PWN_IMG, "!", "\u2028", " bye"]
TOKENS = PROMPT_TOKENS + RESPONSE_TOKENS
TITLE = "p1 — traitlab tokens"
RECORD2 = {"prompt_id": "p2", "prompt": "Go", "response": " No way", "tokens": ["Go", " No", " way"],
           "n_prompt_tokens": 1, "model": "SmolLM2-135M-Instruct",
           "traits": {"alpha": {"layers": {"5": {"scores": [0.0, -0.4, 0.8], "mode": "cosine"}}}}}

RECORD = {
    "prompt_id": "p1",
    "prompt": "Say hi",
    "response": "".join(RESPONSE_TOKENS),
    "tokens": TOKENS,
    "n_prompt_tokens": len(PROMPT_TOKENS),
    "model": "SmolLM2-135M-Instruct",
    "traits": {
        "alpha": {
            "layers": {
                "10": {"scores": [0.0, 0.1, 0.2, 0.9, -0.3, 0.25, None, 0.05, -0.8, 0.4], "mode": "cosine"},
                "5": {"scores": [0.3, -0.2, 0.1, 0.45, -0.15, 0.0, 0.3, None, -0.6, 0.125], "mode": "cosine"},
            }
        },
        "beta": {"layers": {"3": {"scores": [1.5, -2.0, 0.5, 0.0, 3.0, -1.0, 0.25], "mode": "raw"}}},
    },
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    root: Path = tmp_path_factory.mktemp("token_view")
    (root / "prompts").mkdir()
    (root / "prompts" / "p1.html").write_text(render_token_html(RECORD), encoding="utf-8")
    (root / "index.html").write_text(render_run_index(index_data([RECORD, RECORD2], title="run")), encoding="utf-8")
    with serve_directory(root) as base:
        yield base


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium()


def _assert_rendered(dom, trait: str, layer: str, scale: float) -> None:
    assert dom.container is not None and dom.container["data-rendered"] == "js", "view script did not run"
    assert (dom.container["data-trait"], dom.container["data-layer"]) == (trait, layer)
    assert [s.text for s in dom.spans] == TOKENS
    scores = RECORD["traits"][trait]["layers"][layer]["scores"]
    scores = [None] * (len(TOKENS) - len(scores)) + scores
    for i, (span, score) in enumerate(zip(dom.spans, scores, strict=True)):
        assert span.attrs["data-idx"] == str(i)
        if score is None:
            assert "data-score" not in span.attrs
        else:
            assert float(span.attrs["data-score"]) == pytest.approx(score)
        if i >= len(PROMPT_TOKENS):  # JS and the Python static fallback share one colour map
            assert f"background-color: {token_colour(score, scale)[0]}" in span.attrs["style"]
        else:
            assert "prompt" in span.attrs["class"].split()


def test_js_renders_scored_spans_and_markup_stays_text(site, chromium):
    dom = parse_dom(dump_dom(urljoin(site, "prompts/p1.html"), binary=chromium))
    _assert_rendered(dom, "alpha", "5", scale=0.9)
    assert dom.title == TITLE  # an injected script or onerror handler would have set 'pwned'
    texts = [s.text for s in dom.spans]
    assert PWN_SCRIPT in texts and PWN_IMG in texts
    assert dom.tags("img") == []
    assert [a.get("type") for a in dom.tags("script")] == ["application/json", "application/json", None]


def test_url_hash_selects_trait_and_layer(site, chromium):
    dom = parse_dom(dump_dom(urljoin(site, "prompts/p1.html#trait=alpha&layer=10"), binary=chromium))
    _assert_rendered(dom, "alpha", "10", scale=0.9)
    dom = parse_dom(dump_dom(urljoin(site, "prompts/p1.html#trait=beta"), binary=chromium))
    _assert_rendered(dom, "beta", "3", scale=3.0)
    assert dom.title == TITLE


def test_run_index_shows_any_prompt_in_the_same_page(site, chromium):
    """The index never navigates (MLflow's sandboxed frame cannot follow a link to another artifact): the
    prompt named in the hash is rendered in place, on the scale every prompt shares."""
    dom = parse_dom(dump_dom(urljoin(site, "index.html#prompt=p2&label=alpha%20L5"), binary=chromium))
    assert dom.tags("a") == []
    assert dom.container["data-rendered"] == "js" and dom.container["data-prompt"] == "p2"
    assert [s.text for s in dom.spans] == RECORD2["tokens"]
    assert [s.attrs.get("data-score") for s in dom.spans] == ["0", "-0.4", "0.8"]
    # one scale for both prompts: the 98th percentile of |score| over p1's and p2's response tokens at L5
    pooled = sorted(abs(x) for x in [0.45, -0.15, 0.0, 0.3, -0.6, 0.125, -0.4, 0.8])  # None and prompt left out
    rank = 0.98 * (len(pooled) - 1)
    scale = pooled[int(rank)] + (rank - int(rank)) * (pooled[int(rank) + 1] - pooled[int(rank)])
    assert f"background-color: {token_colour(0.8, scale)[0]}" in dom.spans[2].attrs["style"]
