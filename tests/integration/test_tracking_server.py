"""`make server` for real: scripts/tracking_server.sh starts a throwaway PostgreSQL cluster and an MLflow
server on free 127.0.0.1 ports; an extract job logs to it over HTTP and the run is read back through the
REST API and straight from PostgreSQL. Everything is stopped in `finally`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from traitlab.config.schema import ExtractConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.pipelines.extract import run_extract

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bindir() -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return str(found[-1].parent)
    pg_ctl = shutil.which("pg_ctl")
    return str(Path(pg_ctl).parent) if pg_ctl else None


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def tracking_server(monkeypatch):
    """(base url, dirs) of a running scripts/tracking_server.sh; stops the server and its cluster after."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed: run scripts/install_postgres.sh (make extras does)")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed (dev extra)")
    # Under /tmp with 0755: as root the cluster runs as `postgres`, which must reach the data dir
    # (pytest's own tmp dirs are private to root).
    tmp = Path(tempfile.mkdtemp(prefix="traitlab-server-"))
    tmp.chmod(0o755)
    port, pg_port = free_port(), free_port()
    env = dict(os.environ, HOST="127.0.0.1", PORT=str(port), PG_PORT=str(pg_port), PG_DIR=str(tmp / "pg"),
               ARTIFACTS=str(tmp / "artifacts"), WORKERS="1", PYTHON_BIN=str(Path(sys.executable).parent))
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "tracking_server.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tracking_server.sh exited ({proc.returncode}): {(tmp / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no MLflow server after 180 s: {(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("TRAITLAB_OUTPUTS", str(tmp / "outputs"))
        yield url, tmp, pg_port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the script's trap stops mlflow, then the cluster
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        if (tmp / "pg" / "data" / "postmaster.pid").exists():  # the script died without its trap
            subprocess.run(["runuser", "-u", "postgres", "--"] * (os.getuid() == 0) +
                           [f"{bindir}/pg_ctl", "-D", str(tmp / "pg" / "data"), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def test_extract_logs_to_postgres_backed_server(tracking_server, smollm2, monkeypatch):
    url, tmp, pg_port = tracking_server
    cfg = ExtractConfig(trait=TraitConfig(name="starter/optimism"), method=MethodConfig(name="mean_diff"),
                        layers="1,3", tracking=TrackingConfig(experiment="server-test"))
    res = run_extract(cfg, lm=smollm2)
    assert not res.skipped

    run = get_json(f"{url}/api/2.0/mlflow/runs/get?run_id={res.run_id}")["run"]
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["trait"] == "starter/optimism" and tags["traitlab.stage"] == "extract"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["layers"] == "1,3" and params["method.name"] == "mean_diff"
    steps = get_json(f"{url}/api/2.0/mlflow/metrics/get-history?run_id={res.run_id}&metric_key=layer%2Fval_accuracy")
    assert sorted(m["step"] for m in steps["metrics"]) == [1, 3]
    listed = get_json(f"{url}/api/2.0/mlflow/artifacts/list?run_id={res.run_id}&path=vectors/residual/response/mean_diff")
    assert {Path(f["path"]).name for f in listed["files"]} >= {"layer_001.safetensors", "layer_003.json"}
    # artifacts went through the server into its local artifact root
    assert list((tmp / "artifacts").rglob("layer_003.safetensors"))

    # ...and the run lives in PostgreSQL, not in some fallback store
    import psycopg2

    monkeypatch.setenv("PGPASSFILE", str(tmp / "pg" / "pgpass"))  # the password the script generated
    con = psycopg2.connect(host="127.0.0.1", port=pg_port, user="traitlab", dbname="mlflow")
    try:
        with con, con.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (res.run_id,))
            assert cur.fetchone() == ("FINISHED",)
    finally:
        con.close()
