"""Run many launcher invocations in ONE Python process and report exit code, stderr and time of each.

Why: a fresh interpreter pays ~2 s importing torch, Hydra and MLflow before it can reject a bad input;
the bad-input table has dozens of cases that never load a model, so sharing one process keeps the suite
fast on 2 cores. Each case goes through the very function the launchers call (`traitlab.cli.launch`),
with its own argv, environment and a real fd-2 redirect, so what is recorded is what a user's terminal
would show. test_bad_inputs.py checks a sample of cases in real separate processes as well.

    python case_runner.py cases.json results.json
cases.json: [{"id", "stage", "args": [...], "env": {...}, "unset": [...]}]
results.json: {id: {"rc", "stderr", "seconds", "models_loaded"}}
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path


def run_case(case: dict) -> dict:
    from traitlab import cli

    saved_env = dict(os.environ)
    saved_argv = list(sys.argv)
    for k in case.get("unset", []):
        os.environ.pop(k, None)
    os.environ.update(case.get("env", {}))
    sys.argv = [f"launchers/{case['stage']}.py", *case["args"]]
    cli.open_parent_runs.clear()
    loading = sys.modules.get("traitlab.models.loading")
    if loading is not None:
        loading.clear_model_cache()
    with tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(err.fileno(), 2)
        t0 = time.perf_counter()
        rc: int | str | None = 0
        try:
            cli.launch(case["stage"])
        except SystemExit as e:
            rc = e.code
        except BaseException as e:  # noqa: BLE001 - an escaped exception is a finding, record it
            rc = f"escaped {type(e).__name__}: {e}"
        finally:
            seconds = time.perf_counter() - t0
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            os.environ.clear()
            os.environ.update(saved_env)
            sys.argv = saved_argv
        err.seek(0)
        text = err.read().decode("utf-8", errors="replace")
    loading = sys.modules.get("traitlab.models.loading")
    models_loaded = len(loading._LOADED) if loading is not None else 0  # noqa: SLF001 - the ground truth
    return {"rc": rc if isinstance(rc, (int, str)) or rc is None else str(rc), "stderr": text, "seconds": seconds,
            "models_loaded": models_loaded}


def main() -> None:
    import importlib

    cases = json.loads(Path(sys.argv[1]).read_text())
    for stage in sorted({c["stage"] for c in cases}):  # import costs are paid once, outside the timings
        importlib.import_module(f"traitlab.apps.{stage}")
    results = {c["id"]: run_case(c) for c in cases}
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
