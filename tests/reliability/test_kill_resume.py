"""Kill and resume: an extraction SIGKILLed at each fault point, then re-run with the same command, ends with
exactly one FINISHED run, every interrupted run marked FAILED (never left RUNNING), and vectors bit-equal to
an uninterrupted run's. Damaged caches are detected and rebuilt, never loaded.

Kill points are deterministic (traitlab.faults: TRAITLAB_FAULT=<point>[:<n>] SIGKILLs the process at the
n-th arrival), so the test knows exactly what state each kill leaves. The kills are chained in one store
and one cache so each re-run also resumes from the state the previous kill left:

  generate:2  mid-generation (batch 2 of 3)       -> nothing cached, run left RUNNING
  write:1     responses generated, cache temp file written but not renamed -> no cache file, a stray .tmp
  capture:2   positive captured + cached, negative captured but not cached
  log:1       metrics and vectors logged, figures/tables not yet -> a RUNNING run holding partial artifacts
  (clean)     finishes; the four interrupted runs are marked FAILED on its start
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from helpers import (
    Sandbox,
    last_line,
    launch,
    private_cache,
    run_files,
    runs,
    tiny_trait,
    vectors_of,
    with_fast,
)

from traitlab.io import load_tensors

pytestmark = pytest.mark.slow

GEN = ["extraction.generation.max_new_tokens=6", "extraction.generation.batch_size=2"]
KILLS = ["generate:2", "write:1", "capture:2", "log:1"]


def _args(trait: Path, box: Sandbox, *extra: str) -> list[str]:
    return with_fast([f"trait.path={trait}", *GEN, *extra], box.root / "hydra")


def _extract_runs(box: Sandbox) -> list:
    return [r for r in runs(box) if r.data.tags.get("traitlab.stage") == "extract"]


def _cache_files(cache: Path, kind: str) -> list[Path]:
    d = cache / kind
    return sorted(p for p in d.iterdir() if not p.name.endswith(".lock")) if d.is_dir() else []


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted run from an empty cache: the reference vectors."""
    root = tmp_path_factory.mktemp("baseline")
    box = Sandbox(root, cache=private_cache(root)).seed_store()
    trait = tiny_trait(root / "trait", responses=False)
    proc = launch("extract", _args(trait, box), box.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _extract_runs(box)
    vecs = vectors_of(box, run)
    assert len(vecs) == 2  # layers 10 and 12
    return trait, vecs, box


def test_kill_at_each_point_then_resume(baseline, tmp_path) -> None:
    _, want, _ = baseline
    box = Sandbox(tmp_path, cache=private_cache(tmp_path)).seed_store()
    trait = tiny_trait(tmp_path / "trait", responses=False)
    args = _args(trait, box)
    cache = box.cache

    for i, point in enumerate(KILLS, start=1):
        proc = launch("extract", args, box.env(TRAITLAB_FAULT=point))
        assert proc.returncode == -signal.SIGKILL, f"{point}: rc {proc.returncode}\n{proc.stderr[-2000:]}"
        rs = _extract_runs(box)
        # the killed run is RUNNING (nobody could mark it); every earlier one was marked FAILED on this start
        assert sorted(r.info.status for r in rs) == ["FAILED"] * (i - 1) + ["RUNNING"], point
        assert not [r for r in rs if r.info.status == "FINISHED"]
        responses = _cache_files(cache, "responses")
        acts = _cache_files(cache, "activations")
        if point == "generate:2":
            assert responses == [] and acts == []
        elif point == "write:1":
            # the complete temp file was never renamed into place: no cache file a later run could trust
            assert [p for p in responses if p.suffix == ".json" and not p.name.startswith(".")] == []
            assert [p for p in responses if p.name.endswith(".tmp")], "expected the stray temp file"
        elif point == "capture:2":
            real = [p for p in acts if p.suffix == ".safetensors"]
            assert len(real) == 1  # positive cached, negative lost with the process
            tensors, _ = load_tensors(real[0])  # a finished cache file verifies
            assert tensors["acts"].shape == (6, 2, 576)
        elif point == "log:1":
            running = next(r for r in rs if r.info.status == "RUNNING")
            files = [p.name for p in run_files(box, running)]
            assert "layer_010.safetensors" in files and "accuracy_by_layer.png" not in files

    proc = launch("extract", args, box.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was left RUNNING by an interrupted job: marked FAILED" in proc.stderr
    rs = _extract_runs(box)
    assert sorted(r.info.status for r in rs) == ["FAILED"] * len(KILLS) + ["FINISHED"]
    assert all(r.data.tags.get("traitlab.interrupted") == "true" for r in rs if r.info.status == "FAILED")
    assert len({r.data.tags["traitlab.job_key"] for r in rs}) == 1  # one job, however often it was started
    done = next(r for r in rs if r.info.status == "FINISHED")
    assert vectors_of(box, done) == want  # bit-equal to the uninterrupted run
    names = {p.name for p in run_files(box, done)}
    assert {"accuracy_by_layer.png", "metrics_by_layer.json", "resolved.yaml"} <= names
    # exactly one cache file per content key, each readable: stray temp files are never picked up
    real_acts = [p for p in _cache_files(cache, "activations") if not p.name.startswith(".")]
    assert len(real_acts) == 2 and all(load_tensors(p) for p in real_acts)


def test_damaged_caches_are_rebuilt_not_loaded(baseline, tmp_path) -> None:
    """Damage the baseline's caches, re-run the job (force=true): warned, rebuilt, same vectors."""
    trait, want, box = baseline
    args = _args(trait, box)

    responses = [p for p in _cache_files(box.cache, "responses") if p.suffix == ".json"]
    acts = [p for p in _cache_files(box.cache, "activations") if p.suffix == ".safetensors"]
    assert len(responses) == 2 and len(acts) == 2
    good = {p: p.read_bytes() for p in (*responses, *acts)}
    # one truncated activations file, one with a flipped byte in its tensor data (same length),
    # one truncated responses file (invalid JSON)
    acts[0].write_bytes(good[acts[0]][: len(good[acts[0]]) // 2])
    flipped = bytearray(good[acts[1]])
    flipped[-5] ^= 0x40
    acts[1].write_bytes(bytes(flipped))
    responses[0].write_bytes(good[responses[0]][:-7])

    proc = launch("extract", [*args, "force=true"], box.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [ln for ln in proc.stderr.splitlines() if "damaged" in ln]
    assert any(str(acts[0]) in ln for ln in warned) and any(str(acts[1]) in ln for ln in warned)
    assert any(str(responses[0]) in ln for ln in warned)
    # rebuilt in place, byte-identical content to the originals (deterministic), checksums verify
    for p in acts:
        tensors, _ = load_tensors(p)
        assert tensors["acts"].numpy().tobytes() == load_tensors_bytes(good[p], tmp_path)
    assert json.loads(responses[0].read_text()) == json.loads(good[responses[0]])
    done = [r for r in _extract_runs(box) if r.info.status == "FINISHED"]
    assert len(done) == 2  # force=true: a second run of the same job, by request
    assert all(vectors_of(box, r) == want for r in done)
    assert "MLflow run:" in last_line(proc.stdout)


def load_tensors_bytes(data: bytes, tmp: Path) -> bytes:
    p = tmp / "orig.safetensors"
    p.write_bytes(data)
    tensors, _ = load_tensors(p)
    return tensors["acts"].numpy().tobytes()


# ---- steering: killed between Optuna trials ------------------------------------------------------------

STEER = ["method=mean_diff", "layers=10", "judge=hf_local", "steering.objective=judge", "steering.threshold=0",
         "steering.propensity.max_pairs=0", "steering.n_questions=2", "steering.steps=3",
         "steering.max_new_tokens=8", "steering.study.heartbeat_interval=1", "steering.study.grace_period=2"]


def study_trials(box: Sandbox) -> list:
    """Every trial of every study under the sandbox's outputs/studies (one study here)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = []
    for db in sorted((box.outputs / "studies").rglob("*.db")):
        storage = f"sqlite:///{db}"
        for name in optuna.study.get_all_study_names(storage):
            out += optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return out


def test_steering_study_killed_between_trials_resumes(extracted, tmp_path) -> None:
    import optuna

    box = Sandbox(tmp_path).clone_store(extracted[0])
    trait = extracted[1]
    args = [f"trait.path={trait}", *STEER, "tracking.experiment=rel", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = launch("steer", args, box.env(TRAITLAB_FAULT="trial:1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    first = study_trials(box)
    assert [t.state for t in first] == [optuna.trial.TrialState.COMPLETE]  # round 1 told, then killed
    steer_runs = [r for r in runs(box) if r.data.tags.get("traitlab.stage") == "steer"]
    assert [r.info.status for r in steer_runs] == ["RUNNING"]

    proc = launch("steer", args, box.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_trials(box)
    states = [t.state for t in trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3, states  # none lost, none duplicated, none pending
    assert trials[0].params == first[0].params and trials[0].value == first[0].value  # kept, not redone
    assert len({t.number for t in trials}) == 3
    steer_runs = [r for r in runs(box) if r.data.tags.get("traitlab.stage") == "steer"]
    assert sorted(r.info.status for r in steer_runs) == ["FAILED", "FINISHED"]
