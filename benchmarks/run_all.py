"""`make bench`: run every benchmarks/bench_*.py (or those named on the command line) and print tables."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path


def main(names: list[str]) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    here = Path(__file__).resolve().parent
    names = names or sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))
    failed = []
    for name in names:
        print(f"\n## {name}", flush=True)
        try:
            importlib.import_module(f"benchmarks.bench_{name}").run()
        except Exception:  # one broken benchmark should not hide the others' numbers
            traceback.print_exc()
            failed.append(name)
    print(f"\nresults in {here / 'results'}; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
