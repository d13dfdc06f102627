"""The Optuna side of the steering coefficient search: samplers, resumable study storage, and the
ask -> evaluate-as-one-batch -> tell loop.

One study per (vector, layer), maximising the objective's delta against the unsteered model (computed by the
caller's evaluate), with the constraint coherence >= threshold set by `trial.set_constraint` (Optuna 5: TPE
and `study.best_trial` read it; feasible means <= 0), plus any the evaluate adds (`Outcome.constraints`:
capability's drop beyond steering.max_capability_drop).

Resuming is Optuna's job, not ours: studies live in sqlite (RDBStorage) with heartbeats. Trials of a job
that died stop heart-beating; after `grace_period` `fail_stale_trials` marks them FAIL and the
`RetryHeartbeatStaleTrialCallback` re-queues each one as a WAITING trial with the same parameters, which
the next `study.ask()` hands out first. A study is done when `target` trials are finished, where a FAIL
that was retried does not count (its retry does), so nothing is lost and nothing is run twice.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.study import Study
from optuna.trial import FrozenTrial, Trial, TrialState

from traitlab.errors import ConfigError

log = logging.getLogger(__name__)

COEF = "coefficient"              # the one searched parameter: the coefficient's magnitude
GROUP_KEY = "adaptive:group"      # system attr: which round of the adaptive search a trial belongs to
CONSTRAINT = "coherence"          # constraint name: threshold - coherence (<= 0 is feasible)
START_ATTR = "start_coefficient"  # study user attr the adaptive sampler starts from


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of FAIL trials that were re-queued by the retry callback (their retry stands for them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}


def finished_trials(study: Study) -> list[FrozenTrial]:
    """COMPLETE trials and FAIL trials that were not retried, in trial order."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if t.state == TrialState.COMPLETE
            or (t.state == TrialState.FAIL and t.number not in retried)]


def is_feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(c <= 0.0 for c in trial.constraints.values())


def best_trial(study: Study) -> FrozenTrial | None:
    """Optuna's constrained best (highest value among feasible trials), or None when none is feasible."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    return best if is_feasible(best) else None


# ------------------------------------------------------------------------------------------ samplers


def fan(j: int, up: float, down: float) -> float:
    """Multiplier of the j-th candidate of one adaptive round: 1, up, down, up^2, down^2, ..."""
    if j == 0:
        return 1.0
    k = (j + 1) // 2
    return up**k if j % 2 else down**k


class AdaptiveSampler(BaseSampler):
    """Multiplicative coherence-gated search: x up_mult after a coherent round, x down_mult after an
    incoherent one, with momentum (log-step += momentum * previous log-step while the direction holds).

    State is read from the study's finished trials every time, so a new sampler on the same storage
    continues the sequence. A round (group) with several candidates (trials asked before any is told)
    fans out around its centre; the next centre moves from the largest coherent coefficient of the
    round (up) or, if none was coherent, from the smallest one (down).
    """

    def __init__(self, start: float | None = None, up_mult: float = 1.3, down_mult: float = 0.85,
                 momentum: float = 0.5, seed: int | None = None):
        if not up_mult > 1.0:
            raise ConfigError("steering.up_mult", f"{up_mult} must be > 1")
        if not 0.0 < down_mult < 1.0:
            raise ConfigError("steering.down_mult", f"{down_mult} must be in (0, 1)")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError("steering.momentum", f"{momentum} must be in [0, 1)")
        if start is not None and not start > 0:
            raise ConfigError("steering.start_mult", f"start coefficient {start} must be > 0")
        self.start, self.up, self.down, self.momentum = start, up_mult, down_mult, momentum
        self._fallback = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name != COEF or not isinstance(param_distribution, FloatDistribution):
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        lo, hi = param_distribution.low, param_distribution.high
        others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        group, j = self._place(others)
        value = min(hi, max(lo, self.center(others, group, lo, hi, study) * fan(j, self.up, self.down)))
        # Same pattern as Optuna's own samplers (NSGA-II's generation): remember the round in the trial.
        study._storage.set_trial_system_attr(trial._trial_id, GROUP_KEY, group)
        return value

    @staticmethod
    def _members(trials: Sequence[FrozenTrial], retried: set[int]) -> dict[int, list[FrozenTrial]]:
        groups: dict[int, list[FrozenTrial]] = {}
        for t in trials:
            g = t.system_attrs.get(GROUP_KEY)
            if g is None or (t.state == TrialState.FAIL and t.number in retried):
                continue
            groups.setdefault(int(g), []).append(t)
        return groups

    def _place(self, trials: Sequence[FrozenTrial]) -> tuple[int, int]:
        """(round, index in round): join the newest round while it has unfinished trials, else open one."""
        groups = self._members(trials, retried_numbers(trials))
        if not groups:
            return 0, 0
        last = max(groups)
        if any(not t.state.is_finished() for t in groups[last]):
            return last, len(groups[last])
        return last + 1, 0

    def center(self, trials: Sequence[FrozenTrial], group: int, lo: float, hi: float,
               study: Study | None = None) -> float:
        """Centre coefficient of round `group`, replayed from the finished trials of earlier rounds."""
        start = self.start
        if start is None and study is not None:
            start = study.user_attrs.get(START_ATTR)
        c = float(start) if start is not None else math.sqrt(lo * hi)
        c = min(hi, max(lo, c))
        velocity = 0.0
        groups = self._members(trials, retried_numbers(trials))
        for g in sorted(k for k in groups if k < group):
            done = [t for t in groups[g] if t.state.is_finished() and COEF in t.params]
            if not done:
                continue
            feasible = [t.params[COEF] for t in done if is_feasible(t)]
            if feasible:
                anchor, step = max(feasible), math.log(self.up)
            else:
                anchor, step = min(t.params[COEF] for t in done), math.log(self.down)
            velocity = step + self.momentum * velocity if velocity * step > 0 else step
            c = min(hi, max(lo, anchor * math.exp(velocity)))
        return c


class BatchGridSampler(GridSampler):
    """GridSampler for ask/tell: the run loop stops at `target` trials itself; Optuna's version calls
    `study.stop()` once the grid is used up, which is only allowed inside `study.optimize`."""

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None


TPE_MIN_GUIDED = 5  # fewer trials than this left to TPE's model and it is close to random search


def tpe_startup(budget: int, configured: int | str = "auto") -> int:
    """TPE's random start-up trials for a study of `budget` trials: `auto` is a third of the budget (at
    least 1), so TPE's model chooses most trials of a short search; a configured int is kept. Warns when
    fewer than TPE_MIN_GUIDED trials are left to the model."""
    if configured == "auto":
        startup = max(1, budget // 3)
    else:
        try:
            startup = int(configured)
        except (TypeError, ValueError):
            raise ConfigError("steering.tpe_startup_trials", f"{configured!r} is not 'auto' or an int >= 0") from None
        if startup < 0:
            raise ConfigError("steering.tpe_startup_trials", f"{startup} must be >= 0 or auto")
    guided = max(0, budget - startup)
    if guided < TPE_MIN_GUIDED:
        log.warning("sampler=tpe: only %d of %d trials per layer are chosen by TPE's model (%d start-up trials); "
                    "raise steering.steps (x trials_per_step) to at least %d, or use sampler=adaptive for short "
                    "searches", guided, budget, startup, startup + TPE_MIN_GUIDED)
    return startup


def make_sampler(name: str, *, seed: int, grid: Sequence[float] | None = None, up_mult: float = 1.3,
                 down_mult: float = 0.85, momentum: float = 0.5, tpe_startup_trials: int | str = "auto",
                 budget: int | None = None) -> BaseSampler:
    """`budget`: trials per study; tpe scales its start-up trials to it (see tpe_startup)."""
    if name == "adaptive":
        return AdaptiveSampler(up_mult=up_mult, down_mult=down_mult, momentum=momentum, seed=seed)
    if name == "tpe":
        if budget is None:
            if tpe_startup_trials == "auto":
                raise ConfigError("steering.tpe_startup_trials", "auto needs the study's trial budget")
            startup = int(tpe_startup_trials)
        else:
            startup = tpe_startup(budget, tpe_startup_trials)
        return TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    if name == "grid":
        if not grid:
            raise ConfigError("steering.sampler", "grid needs grid values")
        return BatchGridSampler({COEF: list(grid)}, seed=seed)
    raise ConfigError("steering.sampler", f"'{name}' is not one of adaptive, tpe, grid")


def geometric_grid(lo: float, hi: float, n: int) -> list[float]:
    if n == 1:
        return [math.sqrt(lo * hi)]
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


# ------------------------------------------------------------------------------------------- storage


@contextmanager
def _quiet_ctx() -> Iterator[None]:
    """Optuna flags heartbeats and retry callbacks as experimental; we rely on them on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_storage(path: Path, *, heartbeat_interval: int = 10, grace_period: int = 30,
                 max_retry: int | None = 2) -> RDBStorage:
    """An sqlite RDBStorage with heartbeats and retry of stale trials (several jobs may share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def connect() -> sqlite3.Connection:
        # WAL + synchronous=NORMAL: parallel jobs (and the heartbeat thread) share the file without
        # "database is locked", and a trial's writes cost no fsync each (still durable on a process kill).
        conn = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    # Parallel jobs of one trait share this file: the first one creates the schema while the others wait
    # (two processes creating it at once fail with "table studies already exists").
    with FileLock(str(path) + ".lock"), _quiet_ctx():
        return RDBStorage(
            f"sqlite:///{path}",
            engine_kwargs={"creator": connect},
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )


def open_study(storage: RDBStorage, name: str, sampler: BaseSampler, user_attrs: dict[str, Any] | None = None,
               enqueue: dict[str, float] | None = None) -> Study:
    """Create or load a maximising study; attrs (and a first enqueued trial) only when it is new."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction="maximize",
                                load_if_exists=True)
    if not study.user_attrs:
        for k, v in (user_attrs or {}).items():
            study.set_user_attr(k, v)
        if enqueue and not study.get_trials(deepcopy=False):
            study.enqueue_trial(enqueue)
    return study


def recover_stale(studies: Sequence[Study], grace_period: float, heartbeat_interval: float) -> int:
    """Let Optuna fail (and so retry) the trials of a job that died; returns how many were recovered.

    Called while this job holds its run lock, so RUNNING trials belong to a dead process (or to another
    job on the same study): wait at most one grace period for their heartbeats to go stale.
    """
    def running() -> int:
        return sum(len(s.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) for s in studies)

    before = running()
    if before == 0:
        return 0
    log.info("%d trial(s) left RUNNING by an interrupted job: waiting up to %.0fs for them to go stale",
             before, grace_period + heartbeat_interval)
    deadline = time.monotonic() + grace_period + 2 * heartbeat_interval
    with _quiet_ctx():
        while True:
            for s in studies:
                fail_stale_trials(s)
            left = running()
            if left == 0 or time.monotonic() > deadline:
                break
            time.sleep(min(1.0, heartbeat_interval))
    return before - left


@contextmanager
def keep_alive(trials: Sequence[tuple[Any, int]], interval: float) -> Iterator[None]:
    """Heartbeat (storage, trial_id) pairs while one batch is generated and judged (Optuna's own heartbeat
    thread runs only inside study.optimize)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            for storage, tid in trials:
                try:
                    storage.record_heartbeat(tid)
                except Exception as e:  # noqa: BLE001 - a missed heartbeat must not kill the batch
                    log.debug("heartbeat of trial %s failed: %s", tid, e)
            stop.wait(interval)

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_and_retry(study: Study, trial: Trial) -> None:
    """What fail_stale_trials does for a dead trial, now: FAIL it and hand it to the retry callback."""
    storage = study._storage
    try:
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    callback = getter() if callable(getter) else None
    if callback is not None:
        with _quiet_ctx():
            callback(study, storage.get_trial(trial._trial_id))


# --------------------------------------------------------------------------------------------- search


@dataclass
class SearchStudy:
    """One (vector, layer) study and what turns a judged outcome into its objective."""

    key: str
    layer: int
    study: Study
    target: int                  # finished trials wanted
    low: float                   # coefficient magnitude bounds
    high: float
    log: bool = True
    direction: int = 1           # +1 raise the trait, -1 lower it: the sign of the coefficient
    vector: Any = None           # what evaluate needs to steer (a Tensor in the pipeline)

    def remaining(self) -> int:
        return max(0, self.target - len(finished_trials(self.study)))


@dataclass(frozen=True)
class Candidate:
    key: str
    layer: int
    coefficient: float           # signed: what is added, coefficient * vector
    magnitude: float
    trial_number: int
    vector: Any = None


@dataclass
class Outcome:
    """What evaluate found for one candidate: the objective's delta against the unsteered model (already
    oriented by the trait's direction; None: not measurable, the trial FAILs) and its mean coherence."""

    value: float | None
    coherence: float | None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)  # more constraints beside coherence (<= 0: ok)


Evaluate = Callable[[list[Candidate]], list[Outcome]]


def tell(s: SearchStudy, trial: Trial, magnitude: float, out: Outcome, threshold: float) -> None:
    trial.set_user_attr("coherence", out.coherence)
    trial.set_user_attr("coefficient_signed", s.direction * magnitude)
    trial.set_user_attr("layer", s.layer)
    for k, v in out.user_attrs.items():
        trial.set_user_attr(k, v)
    # An unscorable coherence counts as incoherent: a coefficient is accepted only on evidence.
    trial.set_constraint(CONSTRAINT, threshold - (out.coherence if out.coherence is not None else 0.0))
    for name, value in out.constraints.items():  # e.g. capability: drop - max_capability_drop
        trial.set_constraint(name, value if math.isfinite(value) else 1.0)  # unmeasured: infeasible, as above
    if out.value is None or not math.isfinite(out.value):
        s.study.tell(trial, state=TrialState.FAIL)
    else:
        s.study.tell(trial, float(out.value))


def run_search(studies: Sequence[SearchStudy], evaluate: Evaluate, *, per_step: int, threshold: float,
               heartbeat_interval: float = 10.0, on_round: Callable[[int, int], None] | None = None) -> int:
    """Ask up to `per_step` trials from every unfinished study, evaluate them all in ONE call, tell them.

    Repeats until every study has `target` finished trials; returns the number of rounds run.
    """
    rounds = 0
    while True:
        asked: list[tuple[SearchStudy, Trial, float]] = []
        for s in studies:
            for _ in range(min(per_step, s.remaining())):
                with warnings.catch_warnings():  # "heartbeat is meant for optimize": keep_alive does it here
                    warnings.simplefilter("ignore", UserWarning)
                    trial = s.study.ask()
                s.study._storage.record_heartbeat(trial._trial_id)  # stale-detectable from now on
                magnitude = trial.suggest_float(COEF, s.low, s.high, log=s.log)
                asked.append((s, trial, magnitude))
        if not asked:
            return rounds
        candidates = [Candidate(s.key, s.layer, s.direction * m, m, t.number, s.vector) for s, t, m in asked]
        try:
            with keep_alive([(s.study._storage, t._trial_id) for s, t, _ in asked], heartbeat_interval):
                outcomes = evaluate(candidates)
        except BaseException:
            for s, t, _ in asked:
                fail_and_retry(s.study, t)
            raise
        if len(outcomes) != len(candidates):
            raise RuntimeError(f"evaluate returned {len(outcomes)} outcomes for {len(candidates)} candidates")
        for (s, trial, magnitude), out in zip(asked, outcomes, strict=True):
            tell(s, trial, magnitude, out, threshold)
        rounds += 1
        if on_round is not None:
            on_round(rounds, len(asked))
