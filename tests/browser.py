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
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

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
