"""Headless Chromium helpers for tests that must see a page after its scripts ran.

`chromium --dump-dom` prints the DOM after JS executed (bounded by a virtual time budget), which is
enough to check pages rendered inside MLflow's sandboxed iframe without a WebDriver. Install with
`scripts/install_browser.sh`; set TRAITLAB_CHROMIUM to use another binary.

    from browser import dump_dom, require_chromium, serve_directory

`mlflow_server` runs a real `mlflow server` on 127.0.0.1 for a store; `grid_rows` reads MLflow's run table
(ag-grid) out of a dumped DOM.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# No network beyond the URL asked for, no first-run UI, no background fetches that could slow a CI box.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI containers run as root, where the setuid sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes renderers
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: $TRAITLAB_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    override = os.environ.get("TRAITLAB_CHROMIUM")
    if override:
        return override if Path(override).exists() else shutil.which(override)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The Chromium path, or skip the calling test with the install hint."""
    path = find_chromium()
    if path is None:
        pytest.skip("chromium is not installed (run scripts/install_browser.sh, or set TRAITLAB_CHROMIUM)")
    return path


def dump_dom(
    url: str,
    budget_ms: int = 3000,
    timeout_s: float = 90.0,
    binary: str | None = None,
    extra_flags: tuple[str, ...] = (),
) -> str:
    """Load `url` in headless Chromium with a fresh profile and return the serialized DOM after scripts ran.

    `extra_flags` are appended, e.g. ``("--window-size=1280,900",)``. (Disabling scripts does not work:
    --dump-dom itself needs the page's JS runtime and then prints nothing.)
    """
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (run scripts/install_browser.sh)")
    with tempfile.TemporaryDirectory(prefix="traitlab-chromium-") as profile:
        cmd = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *extra_flags,
            "--dump-dom",
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"chromium exited {proc.returncode} with no DOM for {url}:\n{tail}")
    return proc.stdout


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@contextmanager
def serve_directory(directory: str | Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (free port) in a thread; yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class TokenSpan:
    attrs: dict[str, str | None]
    text_nodes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_nodes)


@dataclass
class PageDom:
    """What the token-view tests look at: title, every start tag, the token container and its spans."""

    title: str = ""
    start_tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    container: dict[str, str | None] | None = None
    spans: list[TokenSpan] = field(default_factory=list)

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.start_tags if tag == name]


class _DomParser(HTMLParser):
    def __init__(self, container_id: str):
        super().__init__(convert_charrefs=True)  # one handle_data call per text node
        self.dom = PageDom()
        self._container_id = container_id
        self._depth = 0  # element depth inside the container (0 = outside)
        self._span: TokenSpan | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.dom.start_tags.append((tag, a))
        if tag == "title":
            self._in_title = True
        if self._depth:
            self._depth += 1
            if tag == "span" and "tok" in (a.get("class") or "").split():
                self._span = TokenSpan(a)
        elif a.get("id") == self._container_id:
            self.dom.container = a
            self._depth = 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if self._depth:
            self._depth -= 1
            if tag == "span" and self._span is not None:
                self.dom.spans.append(self._span)
                self._span = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.dom.title += data
        if self._span is not None:
            self._span.text_nodes.append(data)


def parse_dom(html_text: str, container_id: str = "tokens") -> PageDom:
    """Parse a page (or a --dump-dom output) into a PageDom; spans are `span.tok` inside #container_id."""
    parser = _DomParser(container_id)
    parser.feed(html_text)
    parser.close()
    return parser.dom


@contextmanager
def mlflow_server(backend_uri: str, workdir: Path, artifacts: Path | None = None) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (free port) over `backend_uri`; yields its base URL.

    `artifacts`: where the server stores artifacts logged through it (proxied); runs logged straight into
    the store keep their own file locations, which the server reads.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no background job workers
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    log_path = workdir / "mlflow_server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("mlflow server did not start: " + log_path.read_text()[-2000:]) from None
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server runs uvicorn in children: stop the whole group
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class _GridParser(HTMLParser):
    """Collects ag-grid cells: rows are `div[role=row][row-id]` (pinned and centre parts share the id),
    cells `div[role=gridcell][col-id]`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: dict[str, dict[str, str]] = {}
        self._stack: list[tuple[str | None, str | None]] = []  # (row-id opened here, col-id opened here)
        self._row: str | None = None
        self._col: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "img", "input", "meta", "link", "hr", "path", "circle", "rect"):
            return
        a = dict(attrs)
        row = a.get("row-id") if a.get("role") == "row" else None
        col = a.get("col-id") if a.get("role") == "gridcell" and self._row else None
        if row:
            self._row = row
            self.rows.setdefault(row, {})
        if col:
            self._col = col
            self.rows[self._row][col] = ""
        self._stack.append((row, col))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("br", "img", "input", "meta", "link", "hr", "path", "circle", "rect") or not self._stack:
            return
        row, col = self._stack.pop()
        if col:
            self._col = None
        if row:
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row and self._col:
            self.rows[self._row][self._col] += data


def grid_rows(html_text: str) -> dict[str, dict[str, str]]:
    """{run id: {column id: cell text}} of MLflow's run table in a dumped DOM; column ids look like
    metrics.`best/layer`, tags.`method`, attributes.`Description`."""
    parser = _GridParser()
    parser.feed(html_text)
    parser.close()
    return parser.rows


CHROMEDRIVER_NAMES = ("chromedriver", "chromium-driver")


def require_chromedriver() -> str:
    """chromedriver ($TRAITLAB_CHROMEDRIVER or on PATH; scripts/install_browser.sh installs it), else skip."""
    override = os.environ.get("TRAITLAB_CHROMEDRIVER")
    path = override if override and Path(override).exists() else None
    path = path or next((p for p in map(shutil.which, CHROMEDRIVER_NAMES) if p), None)
    if path is None:
        pytest.skip("chromedriver is not installed (run scripts/install_browser.sh, or set TRAITLAB_CHROMEDRIVER)")
    return path


class WebDriver:
    """Just enough of the W3C WebDriver protocol (over chromedriver's HTTP API) to click through a page,
    including into MLflow's sandboxed artifact iframe, which --dump-dom cannot read. No selenium needed.

        with WebDriver(require_chromedriver(), require_chromium()) as wd:
            wd.get(url); wd.frame(wd.wait("iframe")); wd.click(wd.wait("button.pick"))
    """

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C web element identifier

    def __init__(self, driver: str, chromium: str, window: tuple[int, int] = (1600, 1000)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self._port = s.getsockname()[1]
        self._profile = tempfile.TemporaryDirectory(prefix="traitlab-webdriver-")
        self._proc = subprocess.Popen([driver, f"--port={self._port}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        self._base = f"http://127.0.0.1:{self._port}"
        deadline = time.time() + 30
        while True:
            try:
                if json.loads(urllib.request.urlopen(f"{self._base}/status", timeout=2).read())["value"]["ready"]:
                    break
            except OSError:
                pass
            if time.time() > deadline or self._proc.poll() is not None:
                self._stop_driver()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.2)
        args = [*CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", f"--window-size={window[0]},{window[1]}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": chromium, "args": args}}}}
        self._session = f"{self._base}/session/" + self._call("POST", f"{self._base}/session", caps)["sessionId"]

    def _call(self, method: str, url: str, body: dict | None = None) -> Any:
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {url.rsplit('/', 2)[-2:]}: {e.read()[:500]!r}") from None

    def _s(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._call(method, self._session + path, body)

    def get(self, url: str) -> None:
        self._s("POST", "/url", {"url": url})

    def find_all(self, css: str) -> list[str]:
        return [e[self.ELEMENT] for e in self._s("POST", "/elements", {"using": "css selector", "value": css})]

    def wait(self, css: str, timeout: float = 60.0, count: int = 1) -> str:
        """The first element matching `css` once at least `count` exist (polls: the UI renders late)."""
        deadline = time.time() + timeout
        while True:
            found = self.find_all(css)
            if len(found) >= count:
                return found[0]
            if time.time() > deadline:
                raise TimeoutError(f"no {count} element(s) {css!r} after {timeout}s")
            time.sleep(0.25)

    def click(self, element: str) -> None:
        self._s("POST", f"/element/{element}/click")

    def attr(self, element: str, name: str) -> str | None:
        return self._s("GET", f"/element/{element}/attribute/{name}")

    def text(self, element: str) -> str:
        return self._s("GET", f"/element/{element}/text")

    def frame(self, element: str | None) -> None:
        """Switch into an iframe element (None: back to the top document)."""
        self._s("POST", "/frame", {"id": None if element is None else {self.ELEMENT: element}})

    def execute(self, script: str, *args: Any) -> Any:
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self._s("GET", "/screenshot")))

    def _stop_driver(self) -> None:
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._profile.cleanup()

    def quit(self) -> None:
        try:
            self._call("DELETE", self._session)
        finally:
            self._stop_driver()

    def __enter__(self) -> WebDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()
