"""viz: figures hold the expected artists; token HTML embeds, escapes and renders without JS."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from browser import parse_dom
from traitlab.errors import DataError, TraitlabError
from traitlab.viz import figures as F
from traitlab.viz.token_view import (
    normalize_record,
    render_token_html,
    token_colour,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"


def _record(**over) -> dict:
    tokens = ["<|user|>", "Hi", "\n", " Sure", XSS_SCRIPT, " and", XSS_IMG, ' "q" & co', "$x$", " end"]
    n = len(tokens)
    rec = {
        "prompt_id": "p-1",
        "prompt": "Hi",
        "response": " Sure" + XSS_SCRIPT + " and" + XSS_IMG,
        "tokens": tokens,
        "n_prompt_tokens": 3,
        "model": "tiny-llama",
        "traits": {
            "sycophancy": {
                "layers": {
                    "12": {"scores": [0.01 * i - 0.02 for i in range(n)], "mode": "cosine"},
                    "3": {
                        "scores": [0.5, -0.25, 0.0, 0.1, -0.4, 0.2, None, 0.3, -0.1, 0.05],
                        "mode": "cosine",
                    },
                }
            },
            "evil": {"layers": {"7": {"scores": [0.2, -0.6, 0.1, 0.0, 0.3, -0.1, 0.05], "mode": "cosine"}}},
        },
    }
    rec.update(over)
    return rec


def _script_block(page: str, block_id: str) -> str:
    m = re.search(rf'<script type="application/json" id="{block_id}">(.*?)</script>', page, re.S)
    assert m, f"no {block_id} block"
    return m.group(1)


def _main_script(page: str) -> str:
    m = re.search(r"<script>(.*?)</script>", page, re.S)
    assert m
    return m.group(1)


# ------------------------------------------------------------------------------------------ token view


def test_embedded_json_round_trips_to_the_record():
    rec = _record()
    page = render_token_html(rec)
    assert json.loads(_script_block(page, "data")) == rec


def test_numpy_and_torch_scores_are_embedded_as_plain_lists():
    rec = _record()
    rec["traits"]["sycophancy"]["layers"]["12"]["scores"] = np.linspace(-1, 1, 10)
    rec["traits"]["evil"]["layers"]["7"]["scores"] = torch.tensor([0.5, -0.5, 0, 0, 0, 0, float("nan")])
    data = json.loads(_script_block(render_token_html(rec), "data"))
    assert data["traits"]["sycophancy"]["layers"]["12"]["scores"] == pytest.approx(
        np.linspace(-1, 1, 10).tolist()
    )
    assert data["traits"]["evil"]["layers"]["7"]["scores"][:2] == [0.5, -0.5]
    assert data["traits"]["evil"]["layers"]["7"]["scores"][-1] is None  # NaN is not valid JSON


def test_model_markup_never_appears_raw_in_the_page():
    rec = _record()
    rec["tokens"][5] = "</script><script>alert(2)</script>\u2028"
    page = render_token_html(rec)
    # Only the page's own three script elements: the two JSON blocks and the view script.
    assert page.count("<script") == 3
    assert page.count("</script>") == 3
    assert '"</script><script>' not in page and "</script><script>" not in page
    assert "<img" not in page
    data = _script_block(page, "data")
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in data
    assert "\u2028" not in data and "\\u2028" in data
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the static fallback shows it as text


def test_static_fallback_has_each_token_once_as_a_text_node():
    rec = _record()
    dom = parse_dom(render_token_html(rec))
    assert dom.container is not None and dom.container["data-rendered"] == "static"
    assert [s.text for s in dom.spans] == rec["tokens"]
    assert all(len(s.text_nodes) == 1 for s in dom.spans)
    classes = [s.attrs["class"] for s in dom.spans]
    assert classes == ["tok prompt"] * 3 + ["tok resp"] * 7
    # Default view = first trait, lowest layer (3); response-only scores would shift, these are per token.
    scores = rec["traits"]["sycophancy"]["layers"]["3"]["scores"]
    for i, (span, s) in enumerate(zip(dom.spans, scores, strict=True)):
        assert span.attrs["data-idx"] == str(i)
        assert span.attrs.get("data-score") == (None if s is None else repr(s))
        assert f"#{i} " in span.attrs["title"]
    scale = 0.4  # max |score| over response tokens (index >= 3) of layers 3 and 12
    resp = dom.spans[4]
    bg, _ = token_colour(-0.4, scale)
    assert bg == "rgb(33, 102, 172)" and f"background-color: {bg}" in resp.attrs["style"]


def test_response_only_scores_leave_prompt_tokens_unscored():
    rec = _record()
    dom = parse_dom(render_token_html({**rec, "traits": {"evil": rec["traits"]["evil"]}}))
    assert [s.attrs.get("data-score") for s in dom.spans[:3]] == [None, None, None]
    assert [float(s.attrs["data-score"]) for s in dom.spans[3:5]] == [0.2, -0.6]
    # One layer only: the layer selector stays hidden; the trait selector lists the trait.
    layer_label = next(a for a in dom.tags("label") if a.get("id") == "layer-label")
    assert layer_label.get("style") == "display: none"
    assert [a.get("value") for a in dom.tags("option")] == ["evil", "7"]


def test_layer_selector_lists_layers_in_numeric_order():
    dom = parse_dom(render_token_html(_record()))
    layer_label = next(a for a in dom.tags("label") if a.get("id") == "layer-label")
    assert layer_label.get("style") is None
    assert [a.get("value") for a in dom.tags("option")] == ["sycophancy", "evil", "3", "12"]


def test_view_script_is_allowed_by_the_csp_hash_and_uses_no_html_sinks_or_storage():
    page = render_token_html(_record())
    script = _main_script(page)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert f"'sha256-{digest}'" in csp and "default-src 'none'" in csp
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "localStorage",
        "sessionStorage",
        "cookie",
        "fetch(",
        "XMLHttpRequest",
    ):
        assert sink not in script, sink


def test_token_colour_is_a_diverging_map_centred_at_zero():
    assert token_colour(0.0, 1.0)[0] == "rgb(247, 247, 247)"
    assert token_colour(2.0, 1.0) == ("rgb(178, 24, 43)", "#fff")  # clipped to the scale
    assert token_colour(-1.0, 1.0)[0] == "rgb(33, 102, 172)"
    assert token_colour(0.5, 1.0)[0] == "rgb(213, 136, 145)"
    assert token_colour(None, 1.0)[0] == "transparent"
    assert token_colour(0.3, 0.0)[0] == "rgb(247, 247, 247)"  # all-zero trait: no division by zero


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.pop("tokens"), "missing key 'tokens'"),
        (lambda r: r.update(n_prompt_tokens=11), "n_prompt_tokens is 11; expected 0..10"),
        (
            lambda r: r["traits"]["evil"]["layers"]["7"].update(scores=[0.1] * 4),
            "traits.evil.layers.7.scores has 4 values; "
            "expected 10 (one per token) or 7 (one per response token)",
        ),
        (lambda r: r["traits"]["evil"]["layers"]["7"].update(scores=["x"] * 7), "must hold numbers or null"),
    ],
)
def test_malformed_records_fail_with_one_line_naming_the_field(mutate, expected):
    rec = copy.deepcopy(_record())
    mutate(rec)
    with pytest.raises(DataError) as exc:
        render_token_html(rec)
    assert expected in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith("token record 'p-1'")


def test_normalize_record_converts_int_layer_keys_to_strings():
    rec = _record()
    rec["traits"] = {"evil": {"layers": {7: rec["traits"]["evil"]["layers"]["7"]}}}
    assert list(normalize_record(rec)["traits"]["evil"]["layers"]) == ["7"]


# --------------------------------------------------------------------------------------------- figures


def _png(fig: Figure, tmp_path, name: str) -> bytes:
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    return data


def _labelled_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_layer_method_heatmap_marks_best_cell_per_method(tmp_path):
    values = {("probe", layer): 0.1 * layer for layer in range(5)}
    values |= {("mean_diff", layer): -abs(layer - 2) for layer in range(5)}
    values[("mean_diff", 4)] = None  # missing cell
    fig = F.layer_method_heatmap(values, "val_effect_size")
    ax = fig.axes[0]
    assert len(ax.images) == 1
    grid = ax.images[0].get_array()
    assert grid.shape == (2, 5) and bool(grid.mask[1, 4])
    stars = sorted((t.xy, t.get_text()) for t in ax.texts)
    assert stars == [((2, 1), "★0"), ((4, 0), "★0.4")]
    assert len([p for p in ax.patches if isinstance(p, Rectangle)]) == 2
    low = F.layer_method_heatmap(values, "loss", higher_is_better=False).axes[0]
    assert sorted(t.xy for t in low.texts) == [(0, 0), (0, 1)]
    _png(fig, tmp_path, "heatmap")


def test_layer_method_heatmap_handles_30_layers(tmp_path):
    values = {(m, layer): float(np.sin(layer + i)) for i, m in enumerate("abc") for layer in range(30)}
    fig = F.layer_method_heatmap(values, "acc")
    assert fig.axes[0].images[0].get_array().shape == (3, 30)
    assert len(fig.axes[0].get_xticks()) == 30
    _png(fig, tmp_path, "heatmap30")


def test_cosine_matrix_figure_cells_and_shape_check(tmp_path):
    names = ["sycophancy", "refusal", "a_really_long_trait_name_here"]
    mat = np.array([[1.0, 0.2, -0.5], [0.2, 1.0, 0.1], [-0.5, 0.1, 1.0]])
    fig = F.cosine_matrix_figure(names, torch.tensor(mat))
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), mat, rtol=1e-6)
    assert len(ax.texts) == 9 and ax.texts[2].get_text() == "-0.50"
    assert ax.get_yticklabels()[2].get_text() == "a_really_long…"
    assert len(F.cosine_matrix_figure([str(i) for i in range(20)], np.eye(20)).axes[0].texts) == 0
    with pytest.raises(TraitlabError, match=r"expected \(3, 3\)"):
        F.cosine_matrix_figure(names[:3], np.eye(2))
    _png(fig, tmp_path, "cos")


def test_pca_scatter_figure_points_and_variance_labels(tmp_path):
    coords = np.array([[0.0, 1.0, 9.0], [1.0, -1.0, 9.0], [-2.0, 0.5, 9.0], [3.0, 3.0, 9.0]])
    fig = F.pca_scatter_figure(["a", "b", "c", "d"], coords, np.array([0.5, 0.25, 0.1]))
    ax = fig.axes[0]
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(points.get_offsets(), coords[:, :2])
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c", "d"]
    assert ax.get_xlabel() == "PC1 (50.0%)" and ax.get_ylabel() == "PC2 (25.0%)"
    _png(fig, tmp_path, "pca")


def test_steering_curve_averages_per_coef_and_marks_best_coherent(tmp_path):
    points = [
        {"coef": 1.0, "trait": 10, "coherence": 95},
        {"coef": 1.0, "trait": 20, "coherence": 85},
        {"coef": 4.0, "trait": 50, "coherence": 80},
        {"coef": 16.0, "trait": 90, "coherence": 40},
        {"coef": 32.0, "trait": None, "coherence": 10},
    ]
    fig = F.steering_curve_figure(points, threshold=77, title="sycophancy L12", baselines={"unsteered": 12.0})
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in _labelled_lines(ax)}
    assert set(lines) == {"trait score", "coherence", "coherence ≥ 77", "unsteered 12.0"}
    assert list(lines["trait score"].get_xdata()) == [1.0, 4.0, 16.0]
    assert list(lines["trait score"].get_ydata()) == [15.0, 50.0, 90.0]
    assert list(lines["coherence"].get_ydata()) == [90.0, 80.0, 40.0, 10.0]
    assert list(lines["coherence ≥ 77"].get_ydata()) == [77, 77]
    (best,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert best.get_offsets().tolist() == [[4.0, 50.0]]  # 16.0 scores higher but is incoherent
    assert ax.get_xscale() == "log"
    _png(fig, tmp_path, "steer")


def test_steering_curve_x_scale_follows_coefficient_span():
    near = [{"coef": c, "trait": 1, "coherence": 90} for c in (2.0, 5.0, 19.0)]
    assert F.steering_curve_figure(near, 77, "t").axes[0].get_xscale() == "linear"
    signed = [{"coef": c, "trait": 1, "coherence": 90} for c in (-8.0, 0.0, 0.5, 8.0)]
    assert F.steering_curve_figure(signed, 77, "t").axes[0].get_xscale() == "symlog"


def test_trajectory_figure_one_line_per_trait_with_thinned_ticks(tmp_path):
    tokens = [f" tok{i}" for i in range(200)]
    tokens[7] = "$"  # mathtext must not trip on a lone dollar
    scores = {"a": np.sin(np.arange(200) / 10), "b": torch.cos(torch.arange(200) / 10), "c": [None] * 200}
    fig = F.trajectory_figure(tokens, scores, "prompt p1", n_prompt_tokens=20)
    ax = fig.axes[0]
    lines = _labelled_lines(ax)
    assert [ln.get_label() for ln in lines] == ["a", "b", "c"]
    np.testing.assert_allclose(lines[0].get_ydata(), np.sin(np.arange(200) / 10))
    assert np.isnan(lines[2].get_ydata()).all()
    assert len(ax.get_xticks()) <= F.MAX_TOKEN_TICKS
    _png(fig, tmp_path, "traj")
    with pytest.raises(TraitlabError, match="expected 200"):
        F.trajectory_figure(tokens, {"a": [0.0] * 3}, "x")


def test_trait_token_heatmap_cells_rows_scaled(tmp_path):
    tokens = ["A", " b", "\n", "$d$"]
    scores = {"t1": [1.0, -2.0, 0.5, 0.0], "t2": [0.1, 0.2, None, -0.4]}
    fig = F.trait_token_heatmap(tokens, scores)
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape == (2, 4)
    np.testing.assert_allclose(grid[0], [0.5, -1.0, 0.25, 0.0])
    assert bool(grid.mask[1, 2]) and grid[1, 3] == pytest.approx(-1.0)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["A", " b", "\\n", r"\$d\$"]
    raw = F.trait_token_heatmap(tokens, scores, normalize_rows=False).axes[0].images[0].get_array()
    assert raw[0, 1] == -2.0
    _png(fig, tmp_path, "tth")


def test_layer_curve_and_model_diff_one_line_per_key(tmp_path):
    curves = {"probe": {layer: layer / 30 for layer in range(30)}, "mean_diff": {3: 0.1, 1: 0.3, 2: 0.2}}
    fig = F.layer_curve_figure(curves, "val_accuracy")
    lines = _labelled_lines(fig.axes[0])
    assert [ln.get_label() for ln in lines] == ["probe", "mean_diff"]
    assert list(lines[1].get_xdata()) == [1, 2, 3] and list(lines[1].get_ydata()) == [0.3, 0.2, 0.1]
    _png(fig, tmp_path, "curve")

    banded = F.layer_curve_figure(curves, "val_accuracy", bands={"mean_diff": {1: (0.1, 0.5), 3: (0.0, 0.2)}})
    (poly,) = banded.axes[0].collections  # one shaded interval, for the one curve that has bands
    xs, ys = poly.get_paths()[0].vertices.T
    assert min(xs) == 1 and max(xs) == 3 and min(ys) == 0.0 and max(ys) == 0.5

    diff = F.model_diff_figure({"evil": {"0": 0.1, "1": -0.8}, "refusal": {0: 1.2, 1: None}})
    ax = diff.axes[0]
    assert len(_labelled_lines(ax)) == 2 and len(ax.get_lines()) == 3  # + zero line
    assert np.isnan(_labelled_lines(ax)[1].get_ydata()[1])
    _png(diff, tmp_path, "diff")
    with pytest.raises(TraitlabError, match="empty"):
        F.layer_curve_figure({}, "m")


def test_figures_do_not_register_with_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    F.layer_curve_figure({"a": {0: 1.0}}, "m")
    assert plt.get_fignums() == before


def test_record_without_traits_still_renders_tokens():
    rec = _record(traits={}, tokens=["a", "b"], n_prompt_tokens=1)
    dom = parse_dom(render_token_html(rec))
    assert [s.text for s in dom.spans] == ["a", "b"]
    assert all("data-score" not in s.attrs for s in dom.spans)
    assert "This record has no trait scores." in render_token_html(rec)
