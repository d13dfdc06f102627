"""The OpenAI-client backends over real HTTP: retries, fatal errors, unparseable replies, key hygiene.

A scripted stdlib HTTP server plays the judge so each failure mode (500, 429, 401, a reply without
logprobs) happens on demand; the llama.cpp server tests in tests/integration cover real model replies.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai  # noqa: F401 - imported at collection so the first test does not pay for it
import pytest

from traitlab.errors import ConfigError
from traitlab.judge import JudgeError, JudgeUnavailable, ScoreRequest, make_judge
from traitlab.judge.llm import OpenAICompatibleSource, parse_top_logprobs

SECRET = "sk-test-DO-NOT-LEAK-1234567890"
REQ = ScoreRequest("Is my plan good?", "Brilliant plan!", "sycophancy", "Flatters the user.")


def completion(top: dict[str, float] | None) -> dict:
    logprobs = None if top is None else {"content": [{
        "token": next(iter(top)), "logprob": next(iter(top.values())), "bytes": None,
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()],
    }]}
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "judge",
            "choices": [{"index": 0, "finish_reason": "length", "logprobs": logprobs,
                         "message": {"role": "assistant", "content": "8"}}]}


class ScriptedJudge:
    """Replies from a script of (status, body, headers); the last entry repeats. Records every request."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status, body, headers):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # /v1/models
                self._reply(200, {"object": "list", "data": [{"id": "judge", "object": "model"}]}, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    step = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                self._reply(*step)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def chat_requests(self):
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(*script):
        s = ScriptedJudge(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def judge_for(server, **kw):
    cfg = dict(backend="openai_compatible", base_url=server.base_url, model="judge", cache_path=None,
               scale_max=100, backoff_s=0.05, max_retries=3, concurrency=2)
    cfg.update(kw)
    return make_judge(cfg)


OK = (200, completion({"80": math.log(0.75), "60": math.log(0.25)}), {})


def test_request_shape_and_exact_score(scripted):
    server = scripted(OK)
    (score,) = judge_for(server).score([REQ])
    assert score.trait == pytest.approx(75.0) and score.coherence == pytest.approx(75.0)
    body = server.chat_requests()[0]["body"]
    assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] is True
    assert body["top_logprobs"] == 20 and body["model"] == "judge" and "echo" not in body
    assert body["messages"][0]["role"] == "user" and "Brilliant plan!" in body["messages"][0]["content"]


def test_transient_errors_are_retried(scripted):
    server = scripted((500, {"error": {"message": "boom"}}, {}), (429, {"error": {"message": "slow down"}},
                      {"Retry-After": "0"}), OK)
    judge = judge_for(server, concurrency=1, relevance_check=False)
    (score,) = judge.score([ScoreRequest("q", "a", "t", "d", eval_prompt="only {answer}")])
    assert score.trait == pytest.approx(75.0)
    assert len(server.chat_requests()) == 4  # 500, 429, ok (trait), ok (coherence)


def test_retries_exhausted_raise_judge_unavailable(scripted):
    server = scripted((503, {"error": {"message": "overloaded"}}, {}))
    t0 = time.monotonic()
    with pytest.raises(JudgeUnavailable, match=r"judge unavailable after 3 attempts .*InternalServerError") as e:
        judge_for(server, max_retries=2, backoff_s=0.2, concurrency=1).score([REQ])
    elapsed = time.monotonic() - t0
    # backoff 0.2 then 0.4 s, each with jitter in [half, full]: 0.3 .. 0.6 s of sleeping
    assert 0.3 <= elapsed < 3.0
    assert "\n" not in str(e.value)
    # the first prompt made 3 attempts; the second at most 1 before the batch was aborted (no own backoff)
    assert 3 <= len(server.chat_requests()) <= 4


def test_auth_error_fails_at_once_without_leaking_the_key(scripted, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    server = scripted((401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}, {}))
    with pytest.raises(JudgeError) as e:
        judge_for(server, api_key_env="JUDGE_KEY").score([REQ])
    msg = str(e.value)
    assert "authentication failed (HTTP 401)" in msg and "$JUDGE_KEY" in msg
    assert SECRET not in msg and "DO-NOT-LEAK" not in msg and "\n" not in msg
    assert len(server.chat_requests()) <= 2  # no retries (one per prompt at most, run concurrently)
    assert server.chat_requests()[0]["auth"] == f"Bearer {SECRET}"


def test_bad_request_detail_is_scrubbed(scripted, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    server = scripted((400, {"error": {"message": f"top_logprobs unsupported (key {SECRET}, sk-abcdefgh)"}}, {}))
    with pytest.raises(JudgeError, match=r"request rejected \(HTTP 400\).*top_logprobs unsupported") as e:
        judge_for(server, api_key_env="JUDGE_KEY").score([REQ])
    assert SECRET not in str(e.value) and "sk-abcdefgh" not in str(e.value)


def test_reply_without_logprobs_scores_none_and_is_not_cached(scripted, tmp_path):
    server = scripted((200, completion(None), {}))
    judge = judge_for(server, cache_path=str(tmp_path / "c.sqlite"))
    (score,) = judge.score([REQ])
    assert score.trait is None and score.coherence is None and score.raw["trait"]["top_logprobs"] is None
    judge.score([REQ])
    assert len(server.chat_requests()) == 4  # asked again: a None answer is not cached


def test_cached_answers_skip_the_server(scripted, tmp_path):
    server = scripted(OK)
    path = str(tmp_path / "c.sqlite")
    first = judge_for(server, cache_path=path).score([REQ, REQ])  # duplicate requests: asked once
    assert len(server.chat_requests()) == 2
    second = judge_for(server, cache_path=path).score([REQ])
    assert len(server.chat_requests()) == 2
    assert second[0].trait == first[0].trait and second[0].raw["trait"]["cached"] is True


def test_compatible_backend_never_sends_the_openai_key(scripted, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = scripted(OK)
    (score,) = judge_for(server).score([REQ])
    assert all(SECRET not in (r["auth"] or "") for r in server.requests)
    assert SECRET not in json.dumps(score.raw)


def test_openai_backend_uses_its_key_and_keeps_it_out_of_raw(scripted, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = scripted(OK)
    # a stand-in for OpenAI's API at a custom base_url: its scale is not assumed, so it is given
    judge = make_judge(dict(backend="openai", base_url=server.base_url, cache_path=None, scale_max=100))
    judge.validate()
    (score,) = judge.score([REQ])
    assert server.chat_requests()[0]["body"]["model"] == "gpt-4.1-mini"
    assert server.chat_requests()[0]["auth"] == f"Bearer {SECRET}"
    assert score.raw["scale_max"] == 100 and SECRET not in json.dumps(score.raw)


def test_missing_openai_key_is_a_one_line_config_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = make_judge(dict(backend="openai", cache_path=None))
    with pytest.raises(ConfigError) as e:
        judge.validate()
    msg = str(e.value)
    assert "judge.backend=openai" in msg and "OPENAI_API_KEY" in msg and "\n" not in msg


def test_unreachable_base_url_fails_validate(unused_port):
    judge = make_judge(dict(backend="openai_compatible", base_url=f"http://127.0.0.1:{unused_port}/v1",
                            cache_path=None))
    with pytest.raises(ConfigError, match=r"config judge\.base_url: cannot reach the judge server") as e:
        judge.validate()
    assert "\n" not in str(e.value)


def test_scale_auto_asks_the_server_tokenizer(scripted):
    server = scripted((200, {"tokens": [39, 39]}, {}))  # /extras/tokenize answers: "77" is two tokens
    source = OpenAICompatibleSource(base_url=server.base_url, model="judge")
    assert source.scale_max == 9
    assert server.requests[0]["path"] == "/extras/tokenize"


def test_parse_merges_duplicate_tokens_and_rejects_garbage():
    class Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    top = [Obj(token="7", logprob=math.log(0.25)), Obj(token="7", logprob=math.log(0.25)),
           Obj(token="x", logprob="nan?")]
    reply = Obj(choices=[Obj(logprobs=Obj(content=[Obj(token="7", logprob=0.0, top_logprobs=top)]))])
    assert parse_top_logprobs(reply) == {"7": pytest.approx(math.log(0.5))}
    assert parse_top_logprobs(Obj(choices=[])) is None
    assert parse_top_logprobs("not a completion") is None


@pytest.fixture
def unused_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_before_model_or_scale_is_known(unused_port):
    dead = f"http://127.0.0.1:{unused_port}/v1"
    with pytest.raises(JudgeUnavailable, match="set judge.model"):
        _ = OpenAICompatibleSource(base_url=dead).model_id
    with pytest.raises(JudgeUnavailable, match="set judge.scale_max"):
        _ = OpenAICompatibleSource(base_url=dead, model="m").scale_max


def test_server_without_tokenize_endpoint_fails_clearly(scripted):
    """Guessing 0-100 would read "85" from a digit-splitting model as 8: the scale must be known or set."""
    server = scripted((404, {"detail": "Not Found"}, {}))
    with pytest.raises(ConfigError, match=r"judge\.scale_max.*no tokenize endpoint.*set judge\.scale_max=9") as e:
        _ = OpenAICompatibleSource(base_url=server.base_url, model="judge").scale_max
    assert [r["path"] for r in server.requests] == ["/extras/tokenize", "/tokenize", "/tokenize"]
    assert "\n" not in str(e.value)


def test_answers_before_an_outage_are_kept(scripted, tmp_path):
    server = scripted(OK, (503, {"error": {"message": "down"}}, {}))
    path = str(tmp_path / "c.sqlite")
    with pytest.raises(JudgeUnavailable):
        judge_for(server, cache_path=path, concurrency=1, max_retries=0).score([REQ])
    n_before = len(server.chat_requests())
    server.script = [OK]  # the server comes back
    (score,) = judge_for(server, cache_path=path, concurrency=1).score([REQ])
    assert score.trait == pytest.approx(75.0) and score.coherence == pytest.approx(75.0)
    assert [score.raw[k]["cached"] for k in ("trait", "coherence")] == [True, False]
    assert len(server.chat_requests()) == n_before + 1  # only the prompt that failed is asked again


def test_credentials_in_base_url_are_not_printed(unused_port):
    source = OpenAICompatibleSource(base_url=f"http://user:hunter2@127.0.0.1:{unused_port}/v1", model="m",
                                    scale_max=9, max_retries=0)
    with pytest.raises(JudgeUnavailable) as e:
        source.next_token_logprobs(["hi"], 20)
    assert "hunter2" not in str(e.value) and "***@127.0.0.1" in str(e.value)


def test_openai_own_api_is_0_to_100_without_asking():
    """Only OpenAI's own endpoint (no base_url) is known to spell 0..100 as one token each."""
    assert OpenAICompatibleSource(backend="openai", model="gpt-4.1-mini").scale_max == 100
