"""OpenAI and OpenAI-compatible judges (vLLM, llama.cpp server, OpenRouter): one client, one request shape.

Each judge prompt is one chat completion with max_tokens=1, temperature=0, logprobs=True and
top_logprobs=k; only the FIRST generated token's top_logprobs are used (prompt-token logprobs from
`echo` are wrong in some servers, and we never need them).

Reliability: transient failures (connection refused/reset, timeouts, 429, 5xx) are retried with
exponential backoff and jitter; after `max_retries` the batch raises JudgeUnavailable so a study can
stop cleanly and resume later (every answer already received is cached). Requests the server rejects
(bad key, unknown model, bad request) raise JudgeError at once: retrying cannot fix them.

Security: the API key lives only inside the client object. It is never logged, never put in `raw`,
and any server error text is scrubbed of it before it reaches a message.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from traitlab.errors import ConfigError
from traitlab.judge.base import JudgeError, JudgeUnavailable

log = logging.getLogger(__name__)

DEFAULT_OPENAI_MODEL = "gpt-4.1-mini"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
_RETRY_STATUS = {408, 409, 425, 429}
_KEY_PATTERN = re.compile(r"(sk-|Bearer\s+)[A-Za-z0-9_\-*.]{4,}")
Logprobs = dict[str, float]


def _scrub(text: str, secret: str | None) -> str:
    """One line of server text, without the key (nor anything that looks like one), at most 200 chars."""
    if secret:
        text = text.replace(secret, "***")
    text = _KEY_PATTERN.sub(r"\1***", text)
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."


def parse_top_logprobs(response: Any) -> Logprobs | None:
    """Token -> logprob of the first generated token's top alternatives, or None if the reply lacks them.

    Distinct token ids can decode to the same text; their probabilities are added (log-sum-exp).
    """
    try:
        first = response.choices[0].logprobs.content[0]
        tops = list(first.top_logprobs or [])
        if not tops and getattr(first, "token", None) is not None:
            tops = [first]  # a server that ignores top_logprobs still tells us the chosen token's logprob
    except (AttributeError, IndexError, TypeError, KeyError):
        return None
    out: Logprobs = {}
    for item in tops:
        token = getattr(item, "token", None)
        lp = getattr(item, "logprob", None)
        if not isinstance(token, str) or not isinstance(lp, int | float) or isinstance(lp, bool):
            continue
        lp = float(lp)
        if math.isnan(lp):
            continue
        if token in out:
            hi, lo = max(out[token], lp), min(out[token], lp)
            out[token] = hi + math.log1p(math.exp(lo - hi)) if lo > -math.inf else hi
        else:
            out[token] = lp
    return out or None


class OpenAICompatibleSource:
    """A LogprobSource over the `openai` client. backend is 'openai' or 'openai_compatible'."""

    def __init__(
        self,
        *,
        backend: str = "openai_compatible",
        model: str | None = None,
        base_url: str | None = None,
        api_key_env: str | None = None,
        max_retries: int = 4,
        timeout_s: float = 30.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        concurrency: int = 8,
        scale_max: int | str = "auto",
    ):
        if backend not in ("openai", "openai_compatible"):
            raise ConfigError("judge.backend", f"'{backend}' is not openai or openai_compatible")
        if backend == "openai_compatible" and not base_url:
            raise ConfigError("judge.base_url", "judge.backend=openai_compatible needs a base_url, e.g. "
                              "http://127.0.0.1:8000/v1")
        if max_retries < 0:
            raise ConfigError("judge.max_retries", f"{max_retries} must be >= 0")
        if timeout_s <= 0:
            raise ConfigError("judge.timeout_s", f"{timeout_s} must be > 0")
        if scale_max not in ("auto", 9, 100):
            raise ConfigError("judge.scale_max", f"{scale_max!r} is not auto, 9 or 100")
        self.backend = backend
        self._model = model or (DEFAULT_OPENAI_MODEL if backend == "openai" else None)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.api_key_env = api_key_env or (OPENAI_KEY_ENV if backend == "openai" else None)
        from traitlab.tracking.params import register_secret_env

        register_secret_env(self.api_key_env)  # its value is scrubbed from every message and log line
        self.max_retries = max_retries
        self.timeout_s = float(timeout_s)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.concurrency = max(1, int(concurrency))
        self.scale_setting = scale_max
        self._client: Any = None
        self._key: str | None = None

    # -- configuration -------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        if self._model is None:
            self._model = self._discover_model()
        return self._model

    @property
    def scale_max(self) -> int:
        """100, or 9 for a judge whose tokenizer splits numbers (see judge/scoring.py).

        auto: 100 for OpenAI's own API (its tokenizers spell 0..100 as one token each); any other server
        (a custom base_url, even with backend=openai) may serve any model, so its tokenizer is asked.
        """
        if self.scale_setting == "auto":
            self.scale_setting = 100 if self.backend == "openai" and self.base_url is None else self._detect_scale()
        return int(self.scale_setting)

    def _server_tokens(self, text: str) -> list[int] | None:
        """Token ids of `text` from the server's tokenize endpoint, or None if it has none we know."""
        import json
        import urllib.error
        import urllib.request

        root = re.sub(r"/v1/?$", "", self.base_url or "")
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {self._api_key()}"
        attempts = [
            ("/extras/tokenize", {"input": text}),  # llama-cpp-python server
            ("/tokenize", {"model": self.model_id, "prompt": text, "add_special_tokens": False}),  # vLLM
            ("/tokenize", {"content": text, "add_special": False}),  # llama.cpp llama-server
        ]
        for path, body in attempts:
            req = urllib.request.Request(root + path, data=json.dumps(body).encode(), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=min(self.timeout_s, 10.0)) as resp:
                    tokens = json.loads(resp.read().decode()).get("tokens")
            except urllib.error.HTTPError:
                continue  # an endpoint this server lacks (404) or rejects (422): try the next
            except (OSError, ValueError, AttributeError) as e:
                if isinstance(e, urllib.error.URLError | ConnectionError | TimeoutError):
                    # Down, not tokenizer-less: guessing 100 here would silently change every prompt.
                    raise JudgeUnavailable(
                        f"{self._where()}: cannot reach the server to detect its number tokenization; start it, "
                        "or set judge.scale_max (9 or 100)") from None
                continue
            if isinstance(tokens, list):
                return tokens
        return None

    def _detect_scale(self) -> int:
        """100 if the server's tokenizer spells 77 and 100 as one token each, else 9.

        A server without a tokenize endpoint leaves it unknown, and guessing is not an option: reading the first
        token of "85" from a digit-splitting model gives 8, so no answer would ever count as coherent.
        """
        for text in ("77", "100"):
            tokens = self._server_tokens(text)
            if tokens is None:
                raise ConfigError("judge.scale_max", f"{self._where()} has no tokenize endpoint, so whether the judge "
                                  "model spells numbers as one token is unknown; set judge.scale_max=9 (tokenizers "
                                  "that split digits: SmolLM2, Qwen, Mistral, Llama-2) or 100 (one token per number "
                                  "up to 100: Llama-3, GPT-4)")
            if len(tokens) != 1:
                return 9
        return 100

    def _where(self) -> str:
        # A base_url may carry user:password@ -- never print it.
        url = re.sub(r"//[^/@]+@", "//***@", self.base_url) if self.base_url else None
        return f"judge.backend={self.backend}" + (f" at {url}" if url else "")

    def _api_key(self) -> str:
        if self.api_key_env is None:
            # Never fall back to OPENAI_API_KEY here: that would send an OpenAI key to an arbitrary server.
            return "not-needed"
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            hint = "export it" + (", or use judge.backend=openai_compatible|hf_local|perplexity"
                                  if self.backend == "openai" else ", or set judge.api_key_env to null")
            raise ConfigError(f"judge.backend={self.backend}", f"environment variable {self.api_key_env} is not set; "
                              f"{hint}")
        return key

    def client(self) -> Any:
        if self._client is None:
            import openai

            self._key = self._api_key()
            kwargs: dict[str, Any] = dict(api_key=self._key, max_retries=0, timeout=self.timeout_s)
            if self.base_url:
                kwargs["base_url"] = self.base_url
            self._client = openai.OpenAI(**kwargs)
        return self._client

    def validate(self) -> None:
        """Key present (no network); for a custom base_url, the server answers /models. One-line errors."""
        self.client()
        if self.base_url is None:
            return
        try:
            self.client().with_options(timeout=min(self.timeout_s, 10.0)).models.list()
        except Exception as e:  # noqa: BLE001 - every failure becomes one readable line
            import openai

            if isinstance(e, openai.APIStatusError) and e.status_code in (401, 403):
                raise JudgeError(self._fatal_message(e)) from None
            if isinstance(e, openai.APIStatusError) and e.status_code == 404:
                return  # some servers do not implement /models; the first request will tell
            reason = "connection refused or host unreachable" if isinstance(e, openai.APIConnectionError) \
                else _scrub(f"{type(e).__name__}: {e}", self._key)
            raise ConfigError("judge.base_url", f"cannot reach the judge server {self.base_url} ({reason}); "
                              f"start it or fix judge.base_url") from None

    def _discover_model(self) -> str:
        """openai_compatible without judge.model: use the server's only (or first) model."""
        import openai

        try:
            models = [m.id for m in self.client().models.list()]
        except openai.APIConnectionError:
            raise JudgeUnavailable(f"{self._where()}: cannot reach the server to ask which model it serves; "
                                   "start it, or set judge.model so cached scores can be used without it") from None
        except openai.OpenAIError:
            models = []
        if not models:
            raise ConfigError("judge.model", f"not set and {self.base_url}/models lists no model; set judge.model")
        return models[0]

    # -- requests -------------------------------------------------------------------------------------
    def _fatal_message(self, e: Any) -> str:
        status = getattr(e, "status_code", None)
        if status in (401, 403):
            where = f"the key in ${self.api_key_env}" if self.api_key_env else "no API key (set judge.api_key_env)"
            return f"{self._where()}: authentication failed (HTTP {status}) using {where}"
        if status == 404:
            return (f"{self._where()}: model '{self._model}' or endpoint not found (HTTP 404); "
                    "set judge.model to a model the server serves")
        detail = _scrub(str(getattr(e, "message", e)), self._key)
        return f"{self._where()}: request rejected (HTTP {status}): {detail}"

    def _retryable(self, e: BaseException) -> bool:
        import openai

        if isinstance(e, openai.APIConnectionError):  # includes APITimeoutError
            return True
        if isinstance(e, openai.APIStatusError):
            return e.status_code in _RETRY_STATUS or e.status_code >= 500
        return False

    def _delay(self, attempt: int, e: BaseException) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, so workers do not sync up."""
        base = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        delay = base / 2 + random.uniform(0, base / 2)
        retry_after = None
        response = getattr(e, "response", None)
        if response is not None:
            try:
                retry_after = float(response.headers.get("retry-after", ""))
            except (TypeError, ValueError):
                retry_after = None
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay

    def _request(self, prompt: str, top_k: int, abort: threading.Event | None = None) -> Logprobs | None:
        """One judge call with retries; `abort` (set when a sibling request gave up) ends the wait early."""
        client = self.client()
        model = self.model_id
        abort = abort or threading.Event()
        attempt = 0
        while True:
            try:
                response = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=1,
                    temperature=0,
                    logprobs=True,
                    top_logprobs=top_k,
                )
            except Exception as e:  # noqa: BLE001 - classified below, never swallowed
                import openai

                if not isinstance(e, openai.OpenAIError):
                    raise
                if not self._retryable(e):
                    raise JudgeError(self._fatal_message(e)) from None
                reason = _scrub(f"{type(e).__name__}: {e}", self._key)
                if attempt >= self.max_retries:
                    raise JudgeUnavailable(
                        f"{self._where()}: judge unavailable after {attempt + 1} attempts ({reason}); "
                        "answers so far are cached, re-run to resume"
                    ) from None
                delay = self._delay(attempt, e)
                log.warning("%s: %s, retry %d/%d in %.1fs", self._where(), type(e).__name__, attempt + 1,
                            self.max_retries, delay)
                if abort.wait(delay):
                    raise JudgeUnavailable(
                        f"{self._where()}: judge unavailable ({reason}); answers so far are cached, re-run to resume"
                    ) from None
                attempt += 1
                continue
            return parse_top_logprobs(response)

    def next_token_logprobs(
        self, prompts: Sequence[str], top_k: int, on_result: Callable[[int, Logprobs | None], None] | None = None
    ) -> list[Logprobs | None]:
        results: list[Logprobs | None] = [None] * len(prompts)
        if not prompts:
            return results
        self.client()  # create the client and resolve the model once, not racing in every worker
        self.model_id  # noqa: B018
        abort = threading.Event()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = {pool.submit(self._request, p, top_k, abort): i for i, p in enumerate(prompts)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                errors = []
                for fut in done:
                    err = fut.exception()
                    if err is not None:
                        errors.append(err)
                        continue
                    i = futures[fut]
                    results[i] = fut.result()
                    if on_result is not None:
                        on_result(i, results[i])
                if errors:
                    abort.set()  # workers still retrying give up instead of sleeping through their backoff
                    for other in pending:
                        other.cancel()
                    raise next((e for e in errors if isinstance(e, JudgeError)), errors[0])
        return results
