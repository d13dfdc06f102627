"""Figures and HTML views logged as MLflow artifacts: plain data in, Figure / HTML string out.

`figures` builds matplotlib Figures on the Agg canvas (no pyplot, no global backend switch);
`token_view` renders self-contained per-token HTML heatmaps. Import the submodule you need so that
HTML rendering does not pay for importing matplotlib.
"""
