"""A trait's examples as an MLflow dataset input, so the run table's Dataset column names the data and its
sizes: name = the trait, digest = its content fingerprint (the key of every cache built from it), source =
its directory, profile = the sample sizes (n_pos, n_neg and the split's n_train_*, n_val_*, n_ood_*)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

CONTEXT_TAG = "mlflow.data.context"
# What a row of a trait dataset holds (the schema the UI's dataset drawer shows).
SCHEMA = {"mlflow_colspec": [{"type": "string", "name": "prompt"}, {"type": "string", "name": "system_prompt"},
                             {"type": "string", "name": "response"}, {"type": "string", "name": "polarity"}]}


def trait_dataset_input(trait: Any, counts: Mapping[str, int] | None = None, context: str = "extraction") -> Any:
    """The DatasetInput of a TraitDataset; `counts` (e.g. n_train_pos, n_val_pos) join its profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {"n_pos": len(trait.positive), "n_neg": len(trait.negative)}
    if trait.ood_positive or trait.ood_negative:
        profile.update(n_ood_pos=len(trait.ood_positive), n_ood_neg=len(trait.ood_negative))
    profile.update({k: int(v) for k, v in (counts or {}).items()})
    ds = Dataset(name=trait.qualified_name, digest=trait.fingerprint()[:8], source_type="local",
                 source=json.dumps({"uri": str(trait.path)}), schema=json.dumps(SCHEMA), profile=json.dumps(profile))
    return DatasetInput(ds, [InputTag(CONTEXT_TAG, context)])


def log_trait_dataset(client: Any, run_id: str, trait: Any, counts: Mapping[str, int] | None = None,
                      context: str = "extraction") -> None:
    """Log a trait as a dataset input of a run (see module doc)."""
    client.log_inputs(run_id, datasets=[trait_dataset_input(trait, counts, context)])


def copy_dataset_inputs(client: Any, runs: list[Any], to_run_id: str) -> int:
    """Log on `to_run_id` (a sweep's parent) each distinct dataset input of `runs`; returns how many."""
    seen: dict[tuple[str, str], Any] = {}
    for r in runs:
        for di in (r.inputs.dataset_inputs if r.inputs else []):
            seen.setdefault((di.dataset.name, di.dataset.digest), di)
    if seen:
        client.log_inputs(to_run_id, datasets=list(seen.values()))
    return len(seen)
