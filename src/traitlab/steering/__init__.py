"""The steering stage's parts below its pipeline (pipelines/steer.py composes them): inputs checked before the
model loads (prepare), measuring conditions (measures: answers, judge, scorers, propensity, capability), the
Optuna coefficient search (coef_search, search), CMA-ES ensembles (ensemble), entanglement with other traits
(entangle), the baseline / ablation / rescore modes (modes), and the results and what is logged (results)."""
