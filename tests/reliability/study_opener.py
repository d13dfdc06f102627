"""One of several processes opening the same (possibly not yet existing) Optuna study storage at once,
as parallel steering jobs of one trait do (they share outputs/studies/<model>/<trait>.db).

    python study_opener.py <db path> <start_epoch> <name>      prints "ok" or "FAIL <kind> <first line>"
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    path, start, name = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    from traitlab.steering import coef_search as cs

    while time.time() < start:
        time.sleep(0.002)
    try:
        storage = cs.open_storage(path, heartbeat_interval=1, grace_period=2)
        cs.open_study(storage, f"study-{name}", cs.make_sampler("adaptive", seed=0), {cs.START_ATTR: 1.0})
        print("ok", flush=True)
    except Exception as e:  # noqa: BLE001 - the outcome is the output
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"FAIL {type(e).__name__} {first}", flush=True)


if __name__ == "__main__":
    main()
