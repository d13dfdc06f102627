"""Shared fixtures: a tiny random Llama built from a config (no download) and the real SmolLM2."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# One shared cache (converted model, activations, responses) for every test, even those that move
# outputs/ or the MLflow store into a temp dir.
os.environ.setdefault("TRAITLAB_CACHE", str(ROOT / "outputs" / "cache"))
os.environ.setdefault("TRAITLAB_ROOT", str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama():
    """A 4-layer Llama with hidden 32, GQA (4 heads, 2 kv heads), random weights, eval mode, float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    return model


@pytest.fixture(scope="session")
def char_tokenizer():
    """A real fast tokenizer built offline: one token per character of a small alphabet, no chat template."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Split
    from transformers import PreTrainedTokenizerFast

    alphabet = list("abcdefghijklmnopqrstuvwxyz .,?!'")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.padding_side = "left"
    return fast


@pytest.fixture(scope="session")
def tiny_lm(tiny_llama, char_tokenizer):
    """`tiny_llama` with `char_tokenizer` as a LoadedModel, for code that takes one (generation, capture)."""
    from traitlab.models.loading import LoadedModel, ModelSpec

    return LoadedModel(model=tiny_llama, tokenizer=char_tokenizer, spec=ModelSpec(name="tiny_llama", id="tiny_llama"),
                       use_chat_template=False)


@pytest.fixture(scope="session")
def tiny_gpt2():
    """A 3-layer GPT-2 (absolute position embeddings) with random weights, eval mode, float32."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_positions=64, n_embd=32, n_layer=3, n_head=4, pad_token_id=0,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (from the safetensors cache after the first load)."""
    from traitlab.models.loading import load_model

    return load_model("smollm2_135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's real tokenizer and chat template, without loading the weights."""
    from transformers import AutoTokenizer

    from traitlab.models.loading import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh real MLflow sqlite store (artifacts beside it) and outputs dir in tmp; returns the URI."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TRAITLAB_OUTPUTS", str(tmp_path / "outputs"))
    return uri



class ServerProcess:
    """A server subprocess in its own session on 127.0.0.1: bounded start, always terminated (its group)."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str], base_url: str):
        import subprocess

        self.log_path, self.base_url = log_path, base_url
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_ready(self, path: str, timeout_s: float) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"no answer from {self.base_url}{path} in {timeout_s:.0f}s:\n{self.log_tail()}")

    def post(self, path: str, body: dict, timeout_s: float = 300.0) -> dict:
        import json
        import urllib.request

        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read())

    def stop(self, timeout_s: float = 20.0) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers only
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)


class Servers:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[ServerProcess] = []

    @staticmethod
    def free_port() -> int:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def start(self, cmd: list[str], env: dict[str, str], port: int) -> ServerProcess:
        import atexit

        server = ServerProcess(cmd, self.log_dir / f"server{len(self.started)}.log", env, f"http://127.0.0.1:{port}")
        self.started.append(server)
        atexit.register(server.stop)  # also if pytest dies before teardown
        return server


@pytest.fixture
def servers(tmp_path):
    """`servers.start(cmd, env, port)` runs a server subprocess; every one is terminated at teardown."""
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        for server in s.started:
            server.stop()


@pytest.fixture
def generate_calls(monkeypatch):
    """Rows of every generate call made by models/steered_generation, in order (a spy: the real generate runs)."""
    from traitlab.models import steered_generation as sg

    calls: list[int] = []
    real = sg.generate_padded

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(sg, "generate_padded", counting)
    return calls
