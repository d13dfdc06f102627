"""Judge faults: a judge reply that is not a score is None (and a marked trial), never a crash; a judge server
that goes away mid-study is retried with backoff, then the study stops with one line, keeping its completed
trials and cached scores; after the server is back the same command finishes the study without redoing them.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import pytest
from helpers import Sandbox, last_line, launch, runs, start

from traitlab.judge import make_judge
from traitlab.judge.base import ScoreRequest

optuna.logging.set_verbosity(optuna.logging.WARNING)
COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


# ---- a reply that is not a score ----------------------------------------------------------------------

class _WordsOnly(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose judge model answers with a word: almost no mass on integers."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # /v1/models
        self._send({"object": "list", "data": [{"id": "words-only", "object": "model", "owned_by": "test"}]})

    def do_POST(self) -> None:  # /v1/chat/completions
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        tops = [{"token": t, "logprob": lp, "bytes": None}
                for t, lp in (("banana", -0.02), ("Sure", -4.0), ("The", -5.0), ("7", -6.0))]
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "words-only",
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "banana"},
                                 "logprobs": {"content": [{"token": "banana", "logprob": -0.02, "bytes": None,
                                                           "top_logprobs": tops}]}}]})


@pytest.fixture
def words_only_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WordsOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_unparseable_judge_reply_is_none_not_a_crash(words_only_server) -> None:
    judge = make_judge({"backend": "openai_compatible", "base_url": words_only_server, "scale_max": 100,
                        "cache_path": None, "max_retries": 0})
    judge.validate()
    (score,) = judge.score([ScoreRequest("How are you?", "Fine.", "optimism", "Expecting good outcomes.")])
    assert score.trait is None and score.coherence is None  # 0.25% mass on integers: below the 0.25 gate


def test_unscorable_outcome_marks_the_trial_and_the_study_goes_on(tmp_path) -> None:
    from traitlab.steering import coef_search as cs

    storage = cs.open_storage(tmp_path / "s.db", heartbeat_interval=1, grace_period=2, max_retry=1)
    study = cs.open_study(storage, "s", cs.make_sampler("adaptive", seed=0), {cs.START_ATTR: 1.0})
    s = cs.SearchStudy("k", 10, study, target=3, low=0.1, high=10.0)
    replies = iter([(None, None), (10.0, 90.0), (15.0, 85.0)])  # the first reply could not be scored

    def evaluate(cands: list) -> list:
        return [cs.Outcome(*next(replies)) for _ in cands]

    cs.run_search([s], evaluate, per_step=1, threshold=77.0)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [FAIL, COMPLETE, COMPLETE]
    assert trials[0].user_attrs["coherence"] is None  # marked: kept with what is known, not a made-up score
    best = cs.best_trial(study)
    assert best is not None and best.value == pytest.approx(15.0)  # the unscorable trial never wins


# ---- the judge server goes away mid-study -------------------------------------------------------------

def _trials(box: Sandbox) -> list:
    out = []
    for db in sorted((box.outputs / "studies").rglob("*.db")):
        storage = f"sqlite:///{db}"
        for name in optuna.study.get_all_study_names(storage):
            out += optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return out


def _complete_now(box: Sandbox) -> int:
    """COMPLETE trials, read-only: opening the storage with Optuna while the job creates it would race
    the job's own schema creation (see test_concurrency.py)."""
    n = 0
    for db in (box.outputs / "studies").rglob("*.db"):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                n += con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
            finally:
                con.close()
        except sqlite3.OperationalError:
            pass  # not created yet
    return n


def _chat_requests(log: Path) -> int:
    return len(re.findall(r'"POST /v1/chat/completions HTTP/1\.1" 200', log.read_text(errors="replace")))


@pytest.mark.slow
def test_judge_outage_mid_study_then_resume(extracted, llama_server_process, tmp_path) -> None:
    server = llama_server_process
    box = Sandbox(tmp_path).clone_store(extracted[0])
    args = [f"trait.path={extracted[1]}", "method=mean_diff", "layers=10", "tracking.experiment=rel",
            "judge=openai_compatible", f"judge.base_url={server.base_url}", "judge.max_retries=2",
            "judge.backoff_s=0.2", "judge.max_backoff_s=0.5", "judge.concurrency=2",
            f"judge.cache_path={tmp_path / 'judge_cache.sqlite'}",  # cold: a shared warm cache would hide the outage
            "steering.n_questions=2", "steering.steps=3", "steering.max_new_tokens=40",
            # the judge is what this test takes away: make it the objective, and keep every trial a trial
            "steering.objective=judge", "steering.propensity.max_pairs=0", "steering.threshold=0",
            "steering.study.heartbeat_interval=1", "steering.study.grace_period=2", f"hydra.run.dir={tmp_path / 'h'}"]
    proc = start("steer", args, box.env())
    try:
        # stop the server as soon as round 1 is told: round 2 then generates (seconds, 40 tokens) and finds no judge
        reached = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if _complete_now(box) >= 1:
                reached = True
                break
            time.sleep(0.1)
        assert reached, f"the study never completed a trial: {proc.poll()} {proc.stderr.read()[-3000:] if proc.poll() is not None else ''}"
        server.stop()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.start()
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    line = last_line(err)
    assert line.startswith("error (JudgeUnavailable)") and "re-run to resume" in line, line
    assert server.base_url in line
    assert re.search(r"retry 1/2 in [0-9.]+s", err) and re.search(r"retry 2/2 in", err)  # backoff, then give up
    kept = _trials(box)
    done = [t for t in kept if t.state == COMPLETE]
    assert len(done) == 1
    assert [r.info.status for r in runs(box) if r.data.tags.get("traitlab.stage") == "steer"] == ["FAILED"]

    before = _chat_requests(server.log_path)
    proc2 = launch("steer", args, box.env(), timeout=400)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    trials = _trials(box)
    complete = [t for t in trials if t.state == COMPLETE]
    assert len(complete) == 3  # the study's target: nothing lost, nothing run twice
    assert complete[0].number == done[0].number and complete[0].params == done[0].params
    failed = [t.number for t in trials if t.state == FAIL]
    retried = [t.system_attrs.get("failed_trial") for t in trials if "failed_trial" in t.system_attrs]
    assert sorted(failed) == sorted(retried)  # each trial the outage broke was retried exactly once
    assert not [t for t in trials if t.state not in (COMPLETE, FAIL)]
    assert sorted(r.info.status for r in runs(box) if r.data.tags.get("traitlab.stage") == "steer") == \
        ["FAILED", "FINISHED"]
    # cached scores: the re-run asked the judge only about the 2 new trials' responses
    # (2 trials x 2 questions x trait+coherence), not again about the baselines or trial 1
    assert _chat_requests(server.log_path) - before == 2 * 2 * 2


@pytest.mark.slow
def test_server_restart_helper_really_stops_it(llama_server_process) -> None:
    """The fixture's stop() must make the port refuse, or the outage test proves nothing."""
    import urllib.request

    server = llama_server_process
    with server.outage(), pytest.raises(OSError):
        urllib.request.urlopen(server.base_url + "/models", timeout=5)
    assert server.is_running()
    with urllib.request.urlopen(server.base_url + "/models", timeout=10) as r:
        assert r.status == 200


pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
