"""Self-contained HTML token heatmaps for per-token trait scores, one page per prompt (the run's index page,
which holds every prompt, is viz.token_index).

MLflow 3.17 shows an ``.html`` artifact in an iframe with ``sandbox="allow-scripts"``: inline JS and CSS
run, but same-origin access (localStorage, cookies) and anything fetched do not. So each page embeds its
data as JSON in ``<script type="application/json" id="data">`` and carries all CSS/JS inline.

Security: tokens are model output and may contain markup. The JSON is embedded with ``<``, ``>``, ``&``,
U+2028 and U+2029 escaped as ``\\uXXXX`` so ``</script>`` in a token cannot end the data block; the page's
script builds the DOM with ``textContent`` only; the static fallback (the initial DOM, readable without JS)
escapes every string with :func:`html.escape`. A Content-Security-Policy allows only the page's own script
(by hash), so even markup that slipped through could not run.

Record schema (what the inference pipeline writes per prompt; see :class:`TokenRecord`)::

    {"prompt_id": str, "prompt": str, "response": str,
     "tokens": [str, ...],                 # prompt tokens first, then response tokens
     "n_prompt_tokens": int,
     "model": str,
     "traits": {trait: {"layers": {str(layer): {"scores": [float, ...], "mode": "cosine"}}}}}

``scores`` holds one value per token (``len(tokens)``) or one per response token
(``len(tokens) - n_prompt_tokens``); ``None`` (or NaN, stored as ``None``) marks a token without a score.
Extra keys are kept and embedded unchanged. numpy arrays / torch tensors are accepted anywhere a list is.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from typing import Any, TypedDict

from traitlab.errors import DataError

__all__ = [
    "LayerScores",
    "TokenRecord",
    "TraitScores",
    "normalize_record",
    "render_token_html",
    "token_colour",
]


class LayerScores(TypedDict):
    scores: list[float | None]
    mode: str  # raw | normalized | cosine (the projection's score mode)


class TraitScores(TypedDict):
    layers: dict[str, LayerScores]  # key: str(layer index)


class TokenRecord(TypedDict):
    prompt_id: str
    prompt: str
    response: str
    tokens: list[str]
    n_prompt_tokens: int
    model: str
    traits: dict[str, TraitScores]


# Diverging map (ColorBrewer RdBu ends): blue = negative, near-white = 0, red = positive.
# The same numbers live in _SCRIPT so the static fallback and the JS view agree pixel for pixel.
_NEG = (33, 102, 172)
_MID = (247, 247, 247)
_POS = (178, 24, 43)
_DARK_TEXT_ABOVE = 0.55  # |t| beyond which the background is dark enough for white text

_REQUIRED = {
    "prompt_id": str,
    "prompt": str,
    "response": str,
    "tokens": list,
    "n_prompt_tokens": int,
    "model": str,
    "traits": dict,
}


# ----------------------------------------------------------------------------------------------- data


def _plain(obj: Any) -> Any:
    """Deep-convert numpy/torch/tuples to JSON-safe Python; non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, str):
        # Lone surrogates (from odd byte-level decodes) cannot be written as UTF-8.
        return obj.encode("utf-8", "replace").decode("utf-8")
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors (any device/dtype)
        return _plain(obj.tolist())
    raise TypeError(f"cannot embed a {type(obj).__name__} in a token record")


def _layer_sort_key(layer: str) -> tuple[int, int, str]:
    try:
        return (0, int(layer), "")
    except ValueError:
        return (1, 0, layer)


def normalize_record(record: dict) -> dict:
    """Validate a token record and return it as plain JSON data (what the page embeds)."""
    where = f"token record {record.get('prompt_id', '?')!r}" if isinstance(record, dict) else "token record"
    if not isinstance(record, dict):
        raise DataError(where, f"expected a dict, got {type(record).__name__}")
    rec = _plain(record)
    for key, typ in _REQUIRED.items():
        if key not in rec:
            raise DataError(where, f"missing key {key!r}; required keys: {', '.join(_REQUIRED)}")
        if not isinstance(rec[key], typ) or (typ is int and isinstance(rec[key], bool)):
            raise DataError(where, f"{key} is a {type(rec[key]).__name__}; expected {typ.__name__}")
    tokens = rec["tokens"]
    if not all(isinstance(t, str) for t in tokens):
        raise DataError(where, "tokens must all be strings")
    n_tok, n_prompt = len(tokens), rec["n_prompt_tokens"]
    if not 0 <= n_prompt <= n_tok:
        raise DataError(where, f"n_prompt_tokens is {n_prompt}; expected 0..{n_tok} (the number of tokens)")
    for trait, tdata in rec["traits"].items():
        if not isinstance(tdata, dict) or not isinstance(tdata.get("layers"), dict):
            raise DataError(where, f"traits.{trait} must be {{'layers': {{layer: {{'scores', 'mode'}}}}}}")
        for layer, ldata in tdata["layers"].items():
            key = f"traits.{trait}.layers.{layer}"
            if not isinstance(ldata, dict) or not isinstance(ldata.get("scores"), list):
                raise DataError(where, f"{key} must be a dict with a 'scores' list")
            scores = ldata["scores"]
            if len(scores) not in (n_tok, n_tok - n_prompt):
                raise DataError(
                    where,
                    f"{key}.scores has {len(scores)} values; expected {n_tok} (one per token) "
                    f"or {n_tok - n_prompt} (one per response token)",
                )
            if not all(s is None or (isinstance(s, int | float) and not isinstance(s, bool)) for s in scores):
                raise DataError(where, f"{key}.scores must hold numbers or null")
    return rec


def _full_scores(scores: list, n_tokens: int) -> list[float | None]:
    """Align response-only score lists to all tokens (prompt tokens get None)."""
    return [None] * (n_tokens - len(scores)) + [None if s is None else float(s) for s in scores]


def _trait_scale(rec: dict, trait: str) -> float:
    """Per-trait colour scale: max |score| over response tokens of every layer of the trait."""
    n_tok, n_prompt = len(rec["tokens"]), rec["n_prompt_tokens"]
    peak = 0.0
    for ldata in rec["traits"][trait]["layers"].values():
        for s in _full_scores(ldata["scores"], n_tok)[n_prompt:]:
            if s is not None:
                peak = max(peak, abs(s))
    return peak


def _sorted_layers(rec: dict, trait: str) -> list[str]:
    return sorted(rec["traits"][trait]["layers"], key=_layer_sort_key)


def token_colour(score: float | None, scale: float) -> tuple[str, str]:
    """(background, text colour) CSS for a score on a symmetric scale; None -> transparent."""
    if score is None:
        return "transparent", "inherit"
    t = max(-1.0, min(1.0, score / scale)) if scale > 0 else 0.0
    end = _POS if t >= 0 else _NEG
    # floor(x + 0.5) matches JS Math.round (Python's round() is banker's rounding).
    rgb = [math.floor(m + abs(t) * (e - m) + 0.5) for m, e in zip(_MID, end, strict=True)]
    fg = "#fff" if abs(t) > _DARK_TEXT_ABOVE else "#111"
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})", fg


# ----------------------------------------------------------------------------------------- embedding


_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def _script_json(obj: Any) -> str:
    """JSON safe to place inside <script>: the escaped characters only ever occur inside JSON strings."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _JSON_ESCAPE_RE.sub(lambda m: _JSON_ESCAPES[m.group(0)], text)


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; "
        f"script-src 'sha256-{digest}'; "
        "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
    )


# The look every self-contained page shares (token views, the inference index, the steering report).
PAGE_STYLE = """
:root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px; color: #111; }
body { margin: 12px 16px; background: #fff; }
h1 { font-size: 17px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 18px 0 6px; }
"""


def page_head(title: str, csp: str, style: str) -> str:
    """The start of a self-contained page up to </head>: its CSP, its title (escaped) and inline style."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{style}</style>
</head>"""


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _fmt_score(score: float | None) -> str:
    return "n/a" if score is None else f"{score:+.4f}"


# ---------------------------------------------------------------------------------------------- page


_STYLE = """
:root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px; color: #111; }
body { margin: 12px 16px; background: #fff; }
h1 { font-size: 16px; margin: 0 0 4px; }
.meta { color: #555; font-size: 12px; margin-bottom: 8px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 8px 0; font-size: 13px; }
.controls label { display: inline-flex; gap: 4px; align-items: center; }
.legend { display: inline-flex; gap: 6px; align-items: center; font-size: 12px; color: #333; }
.legend .bar { width: 160px; height: 10px; border: 1px solid #ccc;
  background: linear-gradient(to right, rgb(33, 102, 172), rgb(247, 247, 247), rgb(178, 24, 43)); }
.stats { font-size: 12px; color: #333; }
#tokens { line-height: 1.9; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; white-space: pre-wrap; word-break: break-word; border: 1px solid #e3e3e3;
  border-radius: 4px; padding: 8px; }
.tok { border-radius: 2px; padding: 1px 0; }
.tok.prompt { color: #9a9a9a; }
.tok.resp { cursor: default; }
.tok.resp:hover { outline: 1px solid #333; }
.sep { display: block; margin: 6px 0; font-size: 11px; color: #777; border-top: 1px dashed #ccc; }
#tip { position: fixed; display: none; pointer-events: none; background: #222; color: #fff;
  font: 12px ui-monospace, monospace; padding: 3px 6px; border-radius: 3px; white-space: pre; z-index: 10; }
.note { font-size: 11px; color: #777; margin-top: 6px; }
"""

# token_colour and _fmt_score in JS, from the same constants: every page (this one, viz.token_index) colours
# and formats a score exactly as the static fallback does.
COLOUR_JS = (
    f"  var NEG = {list(_NEG)}, MID = {list(_MID)}, POS = {list(_POS)}, DARK = {_DARK_TEXT_ABOVE};\n"
    + r"""  function colour(s, scale) {
    if (s === null || s === undefined) { return ["transparent", "inherit"]; }
    var t = scale > 0 ? Math.max(-1, Math.min(1, s / scale)) : 0;
    var end = t >= 0 ? POS : NEG, a = Math.abs(t), c = [];
    for (var k = 0; k < 3; k++) { c.push(Math.round(MID[k] + a * (end[k] - MID[k]))); }
    return ["rgb(" + c.join(", ") + ")", a > DARK ? "#fff" : "#111"];
  }
  function fmt(s) {
    if (s === null || s === undefined) { return "n/a"; }
    return (s >= 0 ? "+" : "") + s.toFixed(4);
  }"""
)

# The view script. It reads the two JSON blocks and renders with textContent only (never innerHTML), and
# keeps no state outside the page (the sandboxed iframe has no storage). Initial trait/layer can be
# picked with #trait=NAME&layer=N in the URL.
_SCRIPT = r"""
(function () {
  "use strict";
  var rec = JSON.parse(document.getElementById("data").textContent);
  var view = JSON.parse(document.getElementById("view").textContent);
%COLOUR_JS%
  var tokens = rec.tokens, nPrompt = rec.n_prompt_tokens, traits = view.traits;
  var box = document.getElementById("tokens");
  var traitSel = document.getElementById("trait");
  var layerSel = document.getElementById("layer");
  var layerLabel = document.getElementById("layer-label");
  var tip = document.getElementById("tip");

  function fullScores(scores) {
    var pad = tokens.length - scores.length, out = [];
    for (var i = 0; i < tokens.length; i++) { out.push(i < pad ? null : scores[i - pad]); }
    return out;
  }
  function option(sel, value) {
    var o = document.createElement("option");
    o.value = value; o.textContent = value; sel.appendChild(o);
  }
  function layersOf(trait) { return traits.length ? view.layers[trait] : []; }

  function render() {
    var trait = traitSel.value, layer = layerSel.value;
    var frag = document.createDocumentFragment();
    var entry = trait ? rec.traits[trait].layers[layer] : null;
    var scores = entry ? fullScores(entry.scores) : [];
    var mode = entry ? entry.mode : "";
    var scale = trait ? view.scales[trait][layer] : 0;
    var sum = 0, n = 0;
    for (var i = 0; i < tokens.length; i++) {
      if (i === nPrompt && nPrompt > 0) {
        var sep = document.createElement("span");
        sep.className = "sep"; sep.textContent = "response";
        frag.appendChild(sep);
      }
      var span = document.createElement("span");
      var s = i < scores.length ? scores[i] : null;
      span.className = i < nPrompt ? "tok prompt" : "tok resp";
      span.textContent = tokens[i];
      span.setAttribute("data-idx", String(i));
      if (s !== null && s !== undefined) { span.setAttribute("data-score", String(s)); }
      var label = "#" + i + " " + JSON.stringify(tokens[i]);
      if (trait) { label += "  " + trait + " L" + layer + " (" + mode + "): " + fmt(s); }
      span.title = label;
      if (i >= nPrompt) {
        var c = colour(s, scale);
        span.style.backgroundColor = c[0]; span.style.color = c[1];
        if (s !== null && s !== undefined) { sum += s; n += 1; }
      }
      frag.appendChild(span);
    }
    box.replaceChildren(frag);
    box.setAttribute("data-rendered", "js");
    box.setAttribute("data-trait", trait || "");
    box.setAttribute("data-layer", layer || "");
    document.getElementById("scale").textContent = trait ? "\u00b1" + scale.toPrecision(3) : "n/a";
    document.getElementById("mode").textContent = mode;
    document.getElementById("mean").textContent = n ? fmt(sum / n) : "n/a";
  }
  function fillLayers(trait, wanted) {
    layerSel.replaceChildren();
    var ls = layersOf(trait);
    for (var i = 0; i < ls.length; i++) { option(layerSel, ls[i]); }
    if (wanted && ls.indexOf(wanted) >= 0) { layerSel.value = wanted; }
    layerLabel.style.display = ls.length > 1 ? "" : "none";
  }

  var want = {};
  try {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    want.trait = params.get("trait"); want.layer = params.get("layer");
  } catch (e) { want = {}; }

  traitSel.replaceChildren();
  for (var t = 0; t < traits.length; t++) { option(traitSel, traits[t]); }
  if (view.default_trait !== null) { traitSel.value = view.default_trait; }
  if (want.trait && traits.indexOf(want.trait) >= 0) { traitSel.value = want.trait; }
  document.getElementById("trait-label").style.display = traits.length ? "" : "none";
  fillLayers(traitSel.value, want.layer || view.default_layer[traitSel.value]);
  traitSel.addEventListener("change", function () {
    fillLayers(traitSel.value, view.default_layer[traitSel.value]); render();
  });
  layerSel.addEventListener("change", render);

  box.addEventListener("mousemove", function (ev) {
    var el = ev.target;
    if (!el || !el.classList || !el.classList.contains("tok")) { tip.style.display = "none"; return; }
    tip.textContent = el.title;
    tip.style.display = "block";
    var x = Math.min(ev.clientX + 12, window.innerWidth - tip.offsetWidth - 4);
    tip.style.left = Math.max(0, x) + "px";
    tip.style.top = (ev.clientY + 16) + "px";
  });
  box.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  document.getElementById("static-note").style.display = "none";
  render();
})();
"""

_SCRIPT = _SCRIPT.replace("%COLOUR_JS%", COLOUR_JS)
_CSP = _csp(_SCRIPT)


def _static_tokens(rec: dict, trait: str | None, layer: str | None, scale: float) -> tuple[str, float | None]:
    """Server-rendered token spans for the default trait/layer; returns (html, mean response score)."""
    tokens, n_prompt = rec["tokens"], rec["n_prompt_tokens"]
    if trait is not None and layer is not None:
        entry = rec["traits"][trait]["layers"][layer]
        scores, mode = _full_scores(entry["scores"], len(tokens)), entry.get("mode", "")
    else:
        scores, mode, scale = [None] * len(tokens), "", 0.0
    parts, resp = [], []
    for i, tok in enumerate(tokens):
        if i == n_prompt and n_prompt > 0:
            parts.append('<span class="sep">response</span>')
        s = scores[i]
        label = f"#{i} {json.dumps(tok, ensure_ascii=False)}"
        if trait is not None:
            label += f"  {trait} L{layer} ({mode}): {_fmt_score(s)}"
        attrs = [f'data-idx="{i}"']
        if s is not None:
            attrs.append(f'data-score="{s!r}"')
        attrs.append(f'title="{_esc(label)}"')
        if i < n_prompt:
            cls = "tok prompt"
        else:
            cls = "tok resp"
            bg, fg = token_colour(s, scale)
            attrs.append(f'style="background-color: {bg}; color: {fg}"')
            if s is not None:
                resp.append(s)
        parts.append(f'<span class="{cls}" {" ".join(attrs)}>{_esc(tok)}</span>')
    mean = sum(resp) / len(resp) if resp else None
    return "".join(parts), mean


def _provenance_line(rec: dict) -> str:
    """'cat/trait L12: mean_diff · residual · response[:] · run 1a2b3c4d · chosen by ood_effect_size = 2.98; ...'"""
    parts = []
    for trait in rec["traits"]:
        for layer in _sorted_layers(rec, trait):
            v = rec["traits"][trait]["layers"][layer].get("vector")
            if not isinstance(v, dict):
                continue
            why = str(v.get("selection") or "?")
            if isinstance(v.get("selection_score"), int | float):
                why += f" = {v['selection_score']:.3g}"
            parts.append(f"{trait} L{layer}: {v.get('method', '?')} · {v.get('component', '?')} · "
                         f"{v.get('position', '?')} · run {str(v.get('run_id', '?'))[:8]} · chosen by {why}")
    return "; ".join(parts)


def render_token_html(record: dict, scales: dict[str, dict[str, float]] | None = None) -> str:
    """One self-contained HTML page showing the record's tokens coloured by trait score.

    `scales` ({trait: {layer: scale}}): colour scales shared with the other prompts of a run (see
    monitor.run_index); by default each trait's max |response score| over all its layers in this record.
    """
    rec = normalize_record(record)
    traits = list(rec["traits"])
    layers = {t: _sorted_layers(rec, t) for t in traits}
    default_layer = {t: (ls[0] if ls else None) for t, ls in layers.items()}
    shared = scales is not None
    scales = {t: {ly: float((scales or {}).get(t, {}).get(ly, 0.0)) if shared else _trait_scale(rec, t)
                  for ly in layers[t]} for t in traits}
    trait0 = next((t for t in traits if layers[t]), None)
    view = {
        "traits": traits,
        "layers": layers,
        "default_trait": trait0,
        "default_layer": default_layer,
        "scales": scales,
    }
    layer0 = default_layer[trait0] if trait0 is not None else None
    scale0 = scales[trait0][layer0] if trait0 is not None else 0.0
    body, mean = _static_tokens(rec, trait0, layer0, scale0)
    mode0 = rec["traits"][trait0]["layers"][layer0].get("mode", "") if trait0 is not None else ""
    if trait0 is not None:
        static_note = (
            f"Static view: trait {_esc(trait0)}, layer {_esc(str(layer0))}. "
            "Enable JavaScript to switch trait and layer."
        )
    else:
        static_note = "This record has no trait scores."
    trait_opts = "".join(
        f'<option value="{_esc(t)}"{" selected" if t == trait0 else ""}>{_esc(t)}</option>' for t in traits
    )
    layer_opts = "".join(
        f'<option value="{_esc(str(ly))}">{_esc(str(ly))}</option>'
        for ly in (layers[trait0] if trait0 else [])
    )
    title = f"{rec['prompt_id']} — traitlab tokens"
    scale_txt = f"±{scale0:.3g}" if trait0 is not None else "n/a"
    hidden = ' style="display: none"'
    trait_hidden = "" if traits else hidden
    layer_hidden = "" if trait0 and len(layers[trait0]) > 1 else hidden
    meta = f"model: {_esc(rec['model'])} · {len(rec['tokens'])} tokens ({rec['n_prompt_tokens']} prompt)"
    provenance = _provenance_line(rec)
    if provenance:
        meta += f'<br><span id="provenance">vectors: {_esc(provenance)}</span>'
    scale_note = ("Colour scale per trait × layer, shared by every prompt of the run (98th percentile of |score|)."
                  if shared else "Colour scale is per trait: max |score| over the response tokens of all its layers.")
    legend = (
        '<span>−</span><span class="bar"></span><span>+</span>'
        f'<span>scale <span id="scale">{scale_txt}</span> (<span id="mode">{_esc(str(mode0))}</span>)</span>'
    )
    return f"""{page_head(title, _CSP, _STYLE)}
<body>
<h1>{_esc(rec["prompt_id"])}</h1>
<div class="meta">{meta}</div>
<div class="controls">
<label id="trait-label"{trait_hidden}>trait <select id="trait">{trait_opts}</select></label>
<label id="layer-label"{layer_hidden}>layer <select id="layer">{layer_opts}</select></label>
<span class="legend">{legend}</span>
<span class="stats">mean response score: <span id="mean">{_fmt_score(mean)}</span></span>
</div>
<div id="tokens" data-rendered="static">{body}</div>
<div class="note" id="static-note">{static_note}</div>
<div class="note">Hover a token for its index and exact score. {scale_note}</div>
<div id="tip"></div>
<script type="application/json" id="data">{_script_json(rec)}</script>
<script type="application/json" id="view">{_script_json(view)}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""
