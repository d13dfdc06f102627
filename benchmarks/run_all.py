"""`make bench`: run every benchmarks/bench_*.py (or those named), then write ONE table of every ratio.

    python -m benchmarks.run_all [--quick] [capture steering ...]

benchmarks/RESULTS.md gets the machine, the load average before and after, the versions, and one row per
ratio: its median over interleaved repeats, its run-to-run noise (half the range of the per-repeat ratios),
its target and the verdict. Every sentence in it is computed from this run's numbers. The exit status is 1
when a benchmark failed (its agreement checks included) or a ratio MISSED its target by more than its noise.
Per-benchmark details: benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"


def _versions() -> str:
    import platform

    import torch
    import transformers

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"transformers {transformers.__version__}"]
    for dist in ("numpy", "optuna", "mlflow"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{dist} {version(dist)}")
    peers = HERE / ".venv-peers" / "bin" / "python"
    if peers.exists():
        out = subprocess.run([str(peers), "-c", "from importlib.metadata import version as v; "
                              "print(v('repeng'), v('steering-vectors'))"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            repeng, sv = out.stdout.split()
            parts += [f"repeng {repeng}", f"steering-vectors {sv} (benchmarks/.venv-peers)"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return ", ".join(parts + [f"traitlab at {sha or 'no git'}"])


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3g} {unit}" if unit != "x" else f"{value:.3g}x"


def _beyond_bound(missed: list) -> list[str]:
    """Which misses have a target this device cannot reach (past the comparison's bound)."""
    past = [r for r in missed if r.bound is not None
            and (r.target > r.bound if r.higher_is_better else r.target < r.bound)]
    if not missed:
        return []
    return [f"Of the misses, {len(past)} {'has' if len(past) == 1 else 'have'} a target beyond the bound this "
            "device allows"
            f"{': ' + '; '.join(f'{r.name} (bound {_fmt(r.bound, r.unit)})' for r in past) if past else ''}."]


def render(ratios: list, failed: list[str], started: float, load_before: tuple, quick: bool) -> str:
    from benchmarks.common import clock_name, machine, threads

    m = machine()
    verdicts = [r.verdict for r in ratios]
    held = [r for r in ratios if r.target is not None]
    missed = [r for r in ratios if r.verdict == "MISSED"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `benchmarks/run_all.py` ({'--quick' if quick else 'full'} run) on "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, {(time.time() - started) / 60:.1f} min.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores{', ' + m['cuda'] if m['cuda'] else ''}, {m['platform']}.",
        f"- Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        f"- Clock: {clock_name()} time, {threads()} torch thread(s) (TRAITLAB_BENCH_THREADS).",
        f"- Versions: {_versions()}.",
        "",
        "Each ratio is the median over interleaved repeats (all modes of a round back to back, the order rotating);",
        "noise is half the range of the per-repeat ratios. A ratio misses its target when it falls short by more",
        "than its noise; one that falls short by less is within noise. Bound: the best value the comparison can",
        "reach on this device where the run can compute one (its details say how).",
        "",
        "| benchmark | ratio | value | noise (±) | target | bound | verdict | repeats | details |",
        "| --- | --- | ---: | ---: | --- | ---: | --- | ---: | --- |",
    ]
    for r in ratios:
        target = "-" if r.target is None else f"{'>=' if r.higher_is_better else '<='} {_fmt(r.target, r.unit)}"
        bound = "-" if r.bound is None else _fmt(r.bound, r.unit)
        lines.append(f"| {r.benchmark} | {r.name} | {_fmt(r.value, r.unit)} | {r.noise:.2g} | {target} | {bound} | "
                     f"{r.verdict} | {r.n} | {r.detail} |")
    lines += [
        "",
        f"Targets held: {len(held)}; met {verdicts.count('met')}, within noise {verdicts.count('within noise')}, "
        f"missed {len(missed)}{': ' + '; '.join(r.name for r in missed) if missed else ''}.",
        *_beyond_bound(missed),
        f"Benchmarks that failed to run or failed their checks: {', '.join(failed) if failed else 'none'}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")] or sorted(
        p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    started, load_before = time.time(), os.getloadavg()
    ratios, failed = [], []
    for name in names:
        print(f"\n## {name}", flush=True)
        try:
            ratios += importlib.import_module(f"benchmarks.bench_{name}").run(quick=quick)
        except Exception:  # one broken benchmark should not hide the others' numbers
            traceback.print_exc()
            failed.append(name)
    from traitlab.io import atomic_write_text

    text = render(ratios, failed, started, load_before, quick)
    atomic_write_text(RESULTS_MD, text)
    print("\n" + text)
    return 1 if failed or any(r.verdict == "MISSED" for r in ratios) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
