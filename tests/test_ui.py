"""`kalm ui` serves the Dagster UI on 127.0.0.1 with every asset of the DAG; the test stops it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kalm_ui_serves_the_asset_graph(env):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "ui", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "KALM_PROFILE": "demo"})  # "tiny" lives in this process only
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=2) as r:
                    assert json.load(r)["dagster_version"]
                break
            except OSError:
                assert proc.poll() is None, "kalm ui exited"
                assert time.monotonic() < deadline, "the UI did not come up in 120 s"
                time.sleep(1)
        query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
        keys = []
        while time.monotonic() < deadline and not keys:  # the code location loads after the webserver
            req = urllib.request.Request(f"{base}/graphql", data=query, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                keys = ["/".join(n["assetKey"]["path"]) for n in (json.load(r).get("data") or {}).get("assetNodes", [])]
            time.sleep(0 if keys else 1)
        assert {"raw/alpha", "staged/alpha", "filtered/alpha", "marts/training_pairs", "training/candidate", "training/embedder",
                "evaluation/mteb_results"} <= set(keys)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)  # dg dev may respawn its code server while shutting down: end the whole group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
