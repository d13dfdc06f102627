"""One of several processes opening the same (possibly not yet existing) MLflow store at the same instant.

    python store_opener.py <uri> <start_epoch> ours|raw <name>
ours: traitlab.tracking.store.ensure_store (created once under a file lock), then a run with a metric.
raw:  a plain MlflowClient, as MLflow alone would do it (the control: shows the fault is real).
Prints "ok" or "FAIL <kind> <first line>"; always exits 0 so the caller sees every outcome.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    uri, start, mode, name = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    from mlflow.tracking import MlflowClient

    from traitlab.tracking.store import ensure_store

    while time.time() < start:  # all processes past their imports, then go together
        time.sleep(0.002)
    try:
        if mode == "ours":
            client, exp_id = ensure_store(uri, "concurrent")
            run = client.create_run(exp_id, run_name=name)
            client.log_metric(run.info.run_id, "x", 1.0, step=0)
            client.set_terminated(run.info.run_id, status="FINISHED")
        else:
            MlflowClient(tracking_uri=uri).search_experiments()
        print("ok", flush=True)
    except Exception as e:  # noqa: BLE001 - the outcome is the output
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"FAIL {type(e).__name__} {first}", flush=True)


if __name__ == "__main__":
    main()
