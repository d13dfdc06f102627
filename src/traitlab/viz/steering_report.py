"""One self-contained HTML page per steer run (``report/steering.html``): every measured response, sortable.

MLflow 3.17 shows an ``.html`` artifact in an iframe with ``sandbox="allow-scripts"``: no storage, and a link
to another artifact blanks the frame. So the page holds everything and never navigates: the tables are
rendered server-side (escaped with html.escape, readable without JavaScript) and the page's one inline script
only sorts (clicking a header moves existing rows) and filters (hides rows); it never writes HTML. A
Content-Security-Policy runs only that script, by hash.

It shows the verdict, then one row per condition (unsteered, prompted, each tried coefficient at each layer:
coefficient, coherence, objective delta with its interval, capability, whether it passed the constraints,
which one was chosen), then one row per question x condition with the full response and its scores.

Data schema (plain Python, built by ``tracking.steer_report.report_data``)::

    {"title", "meta": [str], "verdict": str,
     "conditions": {"columns": [Column], "rows": [{key: value}]},
     "responses": {"columns": [Column], "rows": [{key: value}]}}

    Column = {"key", "label", "kind": "num" | "text"}; a row's "condition" names its condition (filter), a
    response row's "question_index" its question (filter), "chosen": true marks the selected coefficient.
"""

from __future__ import annotations

import math
from typing import Any

from traitlab.errors import DataError
from traitlab.viz.token_view import PAGE_STYLE, _csp, _esc, page_head

__all__ = ["render_steering_report"]

_STYLE = PAGE_STYLE + """.meta { color: #444; font-size: 13px; margin: 2px 0; }
.verdict { font-size: 14px; margin: 8px 0; padding: 6px 8px; background: #f6f8fa; border-left: 3px solid #555; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; cursor: pointer; user-select: none; white-space: nowrap; }
th[data-dir="asc"]::after { content: " \\25B2"; }
th[data-dir="desc"]::after { content: " \\25BC"; }
td.num { text-align: right; font-family: ui-monospace, monospace; white-space: nowrap; }
td.text { max-width: 640px; white-space: pre-wrap; word-break: break-word; }
tr.chosen td { background: #fff7d6; }
tr.bad td.num { color: #999; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 8px 0; }
.note { font-size: 12px; color: #666; margin-top: 4px; }
"""

# Sorts by moving rows and filters by hiding them: no HTML is ever written, nothing navigates, no storage.
_SCRIPT = r"""
(function () {
  "use strict";
  function value(td, kind) {
    var v = td.getAttribute("data-v");
    if (kind === "num") { return v === null || v === "" ? NaN : Number(v); }
    return (v === null ? td.textContent : v).toLowerCase();
  }
  function sortBy(table, col, kind, th) {
    var dir = th.getAttribute("data-dir") === "asc" ? "desc" : "asc";
    Array.prototype.forEach.call(table.querySelectorAll("th"), function (h) { h.removeAttribute("data-dir"); });
    th.setAttribute("data-dir", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[col], kind), y = value(b.cells[col], kind);
      var xn = kind === "num" && isNaN(x), yn = kind === "num" && isNaN(y);
      if (xn || yn) { return xn === yn ? 0 : (xn ? 1 : -1); }  // missing values last either way
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return dir === "asc" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.querySelectorAll("th"), function (th, col) {
      th.addEventListener("click", function () { sortBy(table, col, th.getAttribute("data-kind"), th); });
    });
  });
  var q = document.getElementById("f-question"), c = document.getElementById("f-condition");
  var t = document.getElementById("f-text"), shown = document.getElementById("n-shown");
  function filter() {
    var n = 0, needle = t.value.toLowerCase();
    Array.prototype.forEach.call(document.getElementById("responses").tBodies[0].rows, function (r) {
      var ok = (q.value === "" || r.getAttribute("data-question") === q.value)
        && (c.value === "" || r.getAttribute("data-condition") === c.value)
        && (needle === "" || r.textContent.toLowerCase().indexOf(needle) >= 0);
      r.style.display = ok ? "" : "none";
      if (ok) { n += 1; }
    });
    shown.textContent = String(n);
  }
  q.addEventListener("change", filter);
  c.addEventListener("change", filter);
  t.addEventListener("input", filter);
  document.getElementById("static-note").style.display = "none";
})();
"""

_CSP = _csp(_SCRIPT)


def _shown(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if kind == "num" and isinstance(v, bool):
        return "yes" if v else "no"
    if kind == "num" and isinstance(v, int | float):
        return f"{v:.4g}"
    return str(v)


def _sort_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return repr(float(v)) if isinstance(v, int | float) else str(v)


def _table(tid: str, block: dict[str, Any], *, row_attrs: dict[str, str] | None = None) -> str:
    """A sortable table; row_attrs: data-<attr> on each row from the row's <key> (what the filters read)."""
    cols = block["columns"]
    for c in cols:
        if c.get("kind") not in ("num", "text"):
            raise DataError("steering report", f"column {c.get('key')!r} needs kind num or text")
    head = "".join(f'<th data-kind="{c["kind"]}" title="click to sort">{_esc(c["label"])}</th>' for c in cols)
    body = []
    for r in block["rows"]:
        attrs = "".join(f' data-{a}="{_esc(str(r.get(k, "")))}"' for a, k in (row_attrs or {}).items())
        cls = " ".join(k for k, on in (("chosen", r.get("chosen")), ("bad", r.get("feasible") is False)) if on)
        cells = []
        for c in cols:
            v = r.get(c["key"])
            if c["kind"] == "num":
                cells.append(f'<td class="num" data-v="{_esc(_sort_value(v))}">{_esc(_shown(v, "num"))}</td>')
            else:
                cells.append(f'<td class="text">{_esc(_shown(v, "text"))}</td>')
        body.append(f'<tr{attrs}{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{"".join(cells)}</tr>')
    return f'<table class="sortable" id="{tid}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render_steering_report(data: dict[str, Any]) -> str:
    """The run's response browser (see module doc for `data`)."""
    for key in ("title", "conditions", "responses"):
        if key not in data:
            raise DataError("steering report", f"missing key {key!r}; expected title, conditions, responses")
    rows = data["responses"]["rows"]
    questions = sorted({(int(r["question_index"]), str(r.get("question", ""))) for r in rows})
    conditions = list(dict.fromkeys(str(r["condition"]) for r in rows))
    q_opts = "".join(f'<option value="{qi}">{qi}: {_esc(q[:70])}</option>' for qi, q in questions)
    c_opts = "".join(f'<option value="{_esc(c)}">{_esc(c)}</option>' for c in conditions)
    meta = "".join(f'<div class="meta">{_esc(m)}</div>' for m in data.get("meta", []))
    return f"""{page_head(data["title"], _CSP, _STYLE)}
<body>
<h1>{_esc(data["title"])}</h1>
{meta}
<div class="verdict" id="verdict">{_esc(data.get("verdict", ""))}</div>
<h2>Conditions</h2>
<div class="note">One row per condition: the baselines and every tried coefficient at every layer. The chosen
coefficient is highlighted; greyed numbers failed a constraint. Click a header to sort.</div>
{_table("conditions", data["conditions"])}
<h2>Responses (<span id="n-shown">{len(rows)}</span> of {len(rows)})</h2>
<div class="controls">
<label>question <select id="f-question"><option value="">all</option>{q_opts}</select></label>
<label>condition <select id="f-condition"><option value="">all</option>{c_opts}</select></label>
<label>text contains <input id="f-text" type="search" size="24"></label>
</div>
<div class="note" id="static-note">Without JavaScript the tables are shown in their original order.</div>
{_table("responses", data["responses"], row_attrs={"question": "question_index", "condition": "condition"})}
<script>{_SCRIPT}</script>
</body>
</html>
"""
