"""One self-contained page for every scored prompt of a run (``views/index.html``).

MLflow 3.17 shows an ``.html`` artifact as a blob in an iframe with ``sandbox="allow-scripts"``: a link to
another artifact (``prompts/p1.html``) resolves against the blob's URL and blanks the frame. So this page holds
every prompt itself and never navigates: clicking a prompt (or a top token / span) renders its tokens in the
same page. It shows, for the selected trait x layer:

- a header with each vector's provenance (run, method, component, position, layer, why it was chosen) and
  whether scores are centred on the vector's baseline;
- every prompt with its full response text and mean response score;
- the selected prompt's tokens on ONE colour scale shared by every prompt (a robust peak of |score| over all
  response tokens, so one outlier cannot wash out the rest), hover for the exact score;
- the highest and lowest tokens and spans across all prompts.

Data schema (built by ``monitor.views.index_data``)::

    {"title", "model", "score_mode", "centered",
     "labels": [{"key": "cat/trait L12", "trait", "layer", "scale", "n_tokens", "vector": {...} | None,
                 "baseline", "top_tokens": [Hit], "bottom_tokens": [Hit], "top_spans": [Hit], "bottom_spans": [Hit]}],
     "prompts": [{"id", "prompt", "response", "tokens", "n_prompt_tokens",
                  "scores": {key: [score | None per token]}, "means": {key: mean | None}}]}

    Hit = {"prompt": index into prompts, "start", "stop" (token indices, stop exclusive), "text", "mean"}

Security as in token_view: data embedded as escaped JSON, DOM built with textContent only, the static
fallback escaped with html.escape, a CSP that runs only this page's script (by hash).
"""

from __future__ import annotations

from typing import Any

from traitlab.errors import DataError
from traitlab.viz.token_view import (
    COLOUR_JS,
    PAGE_STYLE,
    _csp,
    _esc,
    _fmt_score,
    _plain,
    _script_json,
    page_head,
    token_colour,
)

__all__ = ["render_run_index"]

_STYLE = PAGE_STYLE + """.meta { color: #444; font-size: 13px; margin-bottom: 8px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-family: ui-monospace, monospace; white-space: nowrap; }
td.text { max-width: 560px; white-space: pre-wrap; word-break: break-word; }
tr.sel td { outline: 2px solid #333; outline-offset: -2px; }
button.pick { font: inherit; font-size: 13px; cursor: pointer; border: 1px solid #bbb; background: #fafafa;
  border-radius: 3px; padding: 1px 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 8px 0; }
.legend { display: inline-flex; gap: 6px; align-items: center; font-size: 12px; color: #333; }
.legend .bar { width: 160px; height: 10px; border: 1px solid #ccc;
  background: linear-gradient(to right, rgb(33, 102, 172), rgb(247, 247, 247), rgb(178, 24, 43)); }
#tokens { line-height: 1.9; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; white-space: pre-wrap; word-break: break-word; border: 1px solid #e3e3e3;
  border-radius: 4px; padding: 8px; }
.tok { border-radius: 2px; padding: 1px 0; }
.tok.prompt { color: #9a9a9a; }
.tok.hl { outline: 2px solid #111; }
.sep { display: block; margin: 6px 0; font-size: 11px; color: #777; border-top: 1px dashed #ccc; }
.note { font-size: 12px; color: #666; margin-top: 4px; }
.cols { display: flex; flex-wrap: wrap; gap: 18px; }
"""

# Renders with textContent/createElement only; keeps no state outside the page (the sandbox has no storage);
# never navigates. `#prompt=<id>&label=<key>` in the URL picks the first view.
_SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("data").textContent);
%COLOUR_JS%
  var labelSel = document.getElementById("label");
  var box = document.getElementById("tokens");
  var state = {label: 0, prompt: 0, hl: null};

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (cls) { e.className = cls; }
    return e;
  }
  function label() { return D.labels[state.label]; }
  function pickButton(text, p, hl) {
    var b = el("button", text, "pick");
    b.type = "button";
    b.addEventListener("click", function () { select(p, hl); });
    return b;
  }

  function renderPrompts() {
    var L = label(), body = document.getElementById("prompt-rows");
    var frag = document.createDocumentFragment();
    for (var p = 0; p < D.prompts.length; p++) {
      var P = D.prompts[p], tr = el("tr");
      if (p === state.prompt) { tr.className = "sel"; }
      var td = el("td"); td.appendChild(pickButton(P.id, p, null)); tr.appendChild(td);
      tr.appendChild(el("td", P.prompt, "text"));
      tr.appendChild(el("td", P.response, "text"));
      var m = L ? P.means[L.key] : null, c = colour(m, L ? L.scale : 0), n = el("td", fmt(m), "num");
      n.style.backgroundColor = c[0]; n.style.color = c[1];
      tr.appendChild(n);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  function renderTokens() {
    var L = label(), P = D.prompts[state.prompt];
    var scores = L ? P.scores[L.key] : [], frag = document.createDocumentFragment();
    var scale = L ? L.scale : 0;
    for (var i = 0; i < P.tokens.length; i++) {
      if (i === P.n_prompt_tokens && P.n_prompt_tokens > 0) { frag.appendChild(el("span", "response", "sep")); }
      var s = i < scores.length ? scores[i] : null;
      var span = el("span", P.tokens[i], i < P.n_prompt_tokens ? "tok prompt" : "tok resp");
      span.setAttribute("data-idx", String(i));
      if (s !== null && s !== undefined) { span.setAttribute("data-score", String(s)); }
      span.title = "#" + i + " " + JSON.stringify(P.tokens[i]) + (L ? "  " + L.key + ": " + fmt(s) : "");
      if (i >= P.n_prompt_tokens) {
        var c = colour(s, scale);
        span.style.backgroundColor = c[0]; span.style.color = c[1];
      }
      if (state.hl && i >= state.hl[0] && i < state.hl[1]) { span.className += " hl"; }
      frag.appendChild(span);
    }
    box.replaceChildren(frag);
    box.setAttribute("data-rendered", "js");
    box.setAttribute("data-prompt", P.id);
    box.setAttribute("data-label", L ? L.key : "");
    document.getElementById("shown").textContent = P.id;
    document.getElementById("shown-mean").textContent = L ? fmt(P.means[L.key]) : "n/a";
  }

  function renderHits(id, hits) {
    var body = document.getElementById(id), frag = document.createDocumentFragment();
    for (var h = 0; h < hits.length; h++) {
      var H = hits[h], tr = el("tr");
      var td = el("td"); td.appendChild(pickButton(D.prompts[H.prompt].id, H.prompt, [H.start, H.stop]));
      tr.appendChild(td);
      tr.appendChild(el("td", JSON.stringify(H.text), "text"));
      tr.appendChild(el("td", fmt(H.mean), "num"));
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  function render() {
    var L = label();
    document.getElementById("scale").textContent = L ? "\u00b1" + L.scale.toPrecision(3) : "n/a";
    document.getElementById("scale-n").textContent = L ? String(L.n_tokens) : "0";
    renderPrompts();
    renderTokens();
    renderHits("top-spans", L ? L.top_spans : []);
    renderHits("bottom-spans", L ? L.bottom_spans : []);
    renderHits("top-tokens", L ? L.top_tokens : []);
    renderHits("bottom-tokens", L ? L.bottom_tokens : []);
  }
  function select(p, hl) { state.prompt = p; state.hl = hl; render(); box.scrollIntoView({block: "nearest"}); }

  labelSel.replaceChildren();
  for (var l = 0; l < D.labels.length; l++) {
    var o = el("option", D.labels[l].key); o.value = String(l); labelSel.appendChild(o);
  }
  try {
    var want = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    for (var q = 0; q < D.prompts.length; q++) { if (D.prompts[q].id === want.get("prompt")) { state.prompt = q; } }
    for (var r = 0; r < D.labels.length; r++) { if (D.labels[r].key === want.get("label")) { state.label = r; } }
  } catch (e) { /* no hash */ }
  labelSel.value = String(state.label);
  labelSel.addEventListener("change", function () { state.label = Number(labelSel.value); state.hl = null; render(); });
  document.getElementById("static-note").style.display = "none";
  render();
})();
"""

_SCRIPT = _SCRIPT.replace("%COLOUR_JS%", COLOUR_JS)
_CSP = _csp(_SCRIPT)


def _check(data: dict) -> dict:
    d = _plain(data)
    for key in ("title", "labels", "prompts"):
        if key not in d:
            raise DataError("run index", f"missing key {key!r}; expected title, labels, prompts")
    keys = {lab["key"] for lab in d["labels"]}
    for p in d["prompts"]:
        n = len(p["tokens"])
        for key, scores in p["scores"].items():
            if key not in keys:
                raise DataError("run index", f"prompt {p['id']!r} has scores for {key!r}, which no label lists")
            if len(scores) != n:
                raise DataError("run index", f"prompt {p['id']!r}: {key} has {len(scores)} scores for {n} tokens")
    return d


def _provenance(lab: dict) -> str:
    v = lab.get("vector") or {}
    why = v.get("selection") or "?"
    if v.get("selection_score") is not None:
        why += f" = {v['selection_score']:.3g}"
    run = str(v.get("run_id", "?"))
    cells = [lab["trait"], lab["layer"], f"{v.get('method', '?')} · {v.get('component', '?')} · {v.get('position', '?')}",
             why, "n/a" if lab.get("baseline") is None else f"{lab['baseline']:.4g}",
             f"±{lab['scale']:.3g} ({lab['n_tokens']} tokens)"]
    tds = [f"<td>{_esc(str(c))}</td>" for c in cells]
    tds.insert(3, f'<td title="{_esc(run)}">{_esc(run[:8])}</td>')
    return "<tr>" + "".join(tds) + "</tr>"


def _static_tokens(prompt: dict, lab: dict | None) -> str:
    scores = prompt["scores"].get(lab["key"], []) if lab else []
    parts = []
    for i, tok in enumerate(prompt["tokens"]):
        if i == prompt["n_prompt_tokens"] and i > 0:
            parts.append('<span class="sep">response</span>')
        s = scores[i] if i < len(scores) else None
        attrs = f'data-idx="{i}"' + (f' data-score="{s!r}"' if s is not None else "")
        if i < prompt["n_prompt_tokens"]:
            parts.append(f'<span class="tok prompt" {attrs}>{_esc(tok)}</span>')
        else:
            bg, fg = token_colour(s, lab["scale"] if lab else 0.0)
            parts.append(f'<span class="tok resp" {attrs} style="background-color: {bg}; color: {fg}">'
                         f"{_esc(tok)}</span>")
    return "".join(parts)


def render_run_index(data: dict[str, Any]) -> str:
    """The run's single-page view of every prompt (see module doc for `data`)."""
    d = _check(data)
    lab0 = d["labels"][0] if d["labels"] else None
    centring = ("scores centred on each vector's baseline (the projection of its training examples' mean), "
                "so 0 is neutral" if d.get("centered") else "scores not centred (raw projection zero point)")
    rows = []
    for p in d["prompts"]:
        m = p["means"].get(lab0["key"]) if lab0 else None
        bg, fg = token_colour(m, lab0["scale"] if lab0 else 0.0)
        rows.append(f"<tr><td>{_esc(p['id'])}</td><td class=\"text\">{_esc(p['prompt'])}</td>"
                    f"<td class=\"text\">{_esc(p['response'])}</td>"
                    f'<td class="num" style="background-color: {bg}; color: {fg}">{_fmt_score(m)}</td></tr>')
    first = d["prompts"][0] if d["prompts"] else {"id": "", "tokens": [], "n_prompt_tokens": 0, "scores": {}}
    hit_head = "<thead><tr><th>prompt</th><th>text</th><th>mean score</th></tr></thead>"
    hit_tables = "".join(
        f'<div><h2>{title}</h2><table>{hit_head}<tbody id="{tid}"></tbody></table></div>'
        for tid, title in (("top-spans", "Highest spans"), ("bottom-spans", "Lowest spans"),
                           ("top-tokens", "Highest tokens"), ("bottom-tokens", "Lowest tokens")))
    label_opts = "".join(f'<option value="{i}">{_esc(lab["key"])}</option>' for i, lab in enumerate(d["labels"]))
    return f"""{page_head(d["title"], _CSP, _STYLE)}
<body>
<h1>{_esc(d["title"])}</h1>
<div class="meta">model: {_esc(str(d.get("model", "")))} · {len(d["prompts"])} prompts · score mode
{_esc(str(d.get("score_mode", "")))} · {_esc(centring)}</div>
<h2>Vectors</h2>
<table id="vectors"><thead><tr><th>trait</th><th>layer</th><th>method · component · position</th>
<th>extraction run</th><th>chosen by</th><th>baseline</th><th>colour scale</th></tr></thead>
<tbody>{"".join(_provenance(lab) for lab in d["labels"])}</tbody></table>
<div class="controls">
<label>trait × layer <select id="label">{label_opts}</select></label>
<span class="legend"><span>−</span><span class="bar"></span><span>+</span>
<span>scale <span id="scale">{f"±{lab0['scale']:.3g}" if lab0 else "n/a"}</span>, one for every prompt
(98th percentile of |score| over <span id="scale-n">{lab0["n_tokens"] if lab0 else 0}</span> response tokens)</span></span>
</div>
<h2>Tokens of <span id="shown">{_esc(first["id"])}</span> (mean response score <span id="shown-mean">n/a</span>)</h2>
<div id="tokens" data-rendered="static">{_static_tokens(first, lab0)}</div>
<div class="note" id="static-note">Static view of the first prompt; enable JavaScript to pick a prompt.</div>
<div class="note">Click a prompt, span or token below to show it here; hover a token for its exact score.</div>
<h2>Prompts</h2>
<table><thead><tr><th>prompt</th><th>text</th><th>response</th><th>mean score</th></tr></thead>
<tbody id="prompt-rows">{"".join(rows)}</tbody></table>
<div class="cols">{hit_tables}</div>
<script type="application/json" id="data">{_script_json(d)}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""
