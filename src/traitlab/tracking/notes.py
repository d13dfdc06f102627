"""Descriptions shown by the MLflow UI: a run's and an experiment's `mlflow.note.content` (markdown).

The run table's Description column shows the first line of a run's note as plain text, so every stage
writes its verdict there (best layer and method with n; the steering effect with its interval; which
vector an inference used) and the details below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NOTE_TAG = "mlflow.note.content"
# MLflow's limits on tag values: runs 8000 characters, experiments 20000.
MAX_RUN_NOTE = 8000
MAX_EXPERIMENT_NOTE = 20000


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def set_run_note(client: Any, run_id: str, markdown: str) -> None:
    """Set a run's description (cut to MLflow's limit). `client`: an MlflowClient or RetryingClient."""
    client.set_tag(run_id, NOTE_TAG, _fit(markdown.strip(), MAX_RUN_NOTE))


def set_experiment_note(client: Any, experiment_id: str, markdown: str, *, replace: bool = False) -> bool:
    """Set an experiment's description unless it has one (a person's edit in the UI wins) or `replace`.

    Returns whether it was written.
    """
    if not replace and client.get_experiment(experiment_id).tags.get(NOTE_TAG):
        return False
    client.set_experiment_tag(experiment_id, NOTE_TAG, _fit(markdown.strip(), MAX_EXPERIMENT_NOTE))
    return True


def interval(value: float, low: float, high: float, digits: int = 2) -> str:
    """'4.05 [3.47, 4.97]': a value with its 95% interval, as every verdict line writes it."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def part_n(counts: Mapping[str, float], part: str) -> str:
    """'7+7': the positive + negative examples of a part (train, val, cv, ood) from its n_<part>_pos/neg counts."""
    p, n = counts.get(f"n_{part}_pos"), counts.get(f"n_{part}_neg")
    return f"{int(p)}+{int(n)}" if p is not None and n is not None else "?"


def short_metric(name: str) -> str:
    """'cv_effect_size' -> 'cv d', 'ood_accuracy' -> 'ood acc': metric names short enough for a headline."""
    return name.replace("_effect_size", " d").replace("_accuracy", " acc").replace("_", " ")
