"""Declarative automation: a changed source is observed on its own and rebuilds its data chain alone; training and
evaluation wait to be asked. First through Dagster's condition evaluator (fast), then the real daemon."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import dagster as dg
import polars as pl
import pytest

from dagster_project import runner
from dagster_project.cli import main
from dagster_project.definitions import build_defs

K = dg.AssetKey
BETA_CHAIN = {"raw/beta", "staged/beta", "filtered/beta", "marts/training_pairs", "marts/filter_report",
              "marts/negatives_report", "marts/contamination", "marts/duplicate_pairs", "marts/data_mix",
              "batched/batches", "batched/batch_purity", "batched/left_over"}


def _observe(defs, inst) -> int:
    """One tick of the source sensor; its observations recorded as the daemon records them."""
    sensor = defs.resolve_sensor_def("observe_sources")
    result = sensor(dg.build_sensor_context(instance=inst, cursor=None, definitions=defs))
    for event in result.asset_events:
        inst.report_runless_asset_event(event)
    return len(result.asset_events)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to dagster dev's process group (it shuts its daemon and webserver down), SIGKILL after 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _edit_beta(env):
    pl.DataFrame({"question": ["what is a tensor", "what is a graph"], "answer": ["an array", "nodes and edges"],
                  "hard": [["a scalar"], ["a tree"]]}).write_parquet(env["dir"] / "sources" / "b.parquet")


def test_a_changed_source_requests_exactly_its_chain_and_nothing_of_the_model(env):
    assert main(["run"]) == 0
    defs, inst = build_defs(), runner.instance()
    assert {s.name for s in defs.sensors} >= {"observe_sources", "kalm_automation"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    assert _observe(defs, inst) == 0  # nothing changed since the run observed the sources
    first = dg.evaluate_automation_conditions(defs, inst)
    assert first.total_requested == 0
    _edit_beta(env)
    assert _observe(defs, inst) == 1  # only beta's version moved
    second = dg.evaluate_automation_conditions(defs, inst, cursor=first.cursor)
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    requested = {k.to_user_string() for k in keys if second.get_num_requested(k)}
    assert requested == BETA_CHAIN  # not raw/alpha, not training, not evaluation


@pytest.mark.slow
def test_the_real_daemon_rebuilds_an_edited_sources_chain_by_itself(env, tmp_path):
    """`dagster dev` (webserver + the real daemon) on the project, a source edited while it runs: the sensors,
    running by default, observe it and rebuild its chain and nothing else. The daemon's runs are subprocesses, so
    the tiny test profile travels as a JSON profile file."""
    from tests.conftest import TINY

    profile = tmp_path / "tiny.json"
    profile.write_text(json.dumps(asdict(TINY), default=list))
    environ = {**os.environ, "KALM_PROFILE": str(profile), "KALM_OBSERVE_INTERVAL_S": "2",
               "KALM_AUTOMATION_INTERVAL_S": "2"}
    selection = " or ".join(f"+key:{k}" for k in sorted(BETA_CHAIN | {"marts/eval_pairs"}))
    done = subprocess.run([sys.executable, "-m", "dagster_project.cli", "run", "--select", selection], env=environ,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    inst = runner.instance()

    def stamp(key):
        ev = inst.get_latest_materialization_event(K(key.split("/")))
        return ev.timestamp if ev else None

    before = {k: stamp(k) for k in BETA_CHAIN | {"raw/alpha", "filtered/alpha"}}
    assert all(before.values())
    daemon = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-m", "dagster_project.definitions",
                               "-h", "127.0.0.1", "-p", str(_free_port())], env=environ, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(5)
        _edit_beta(env)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if all((stamp(k) or 0) > before[k] for k in BETA_CHAIN):
                break
            time.sleep(3)
    finally:
        _stop(daemon)
    rebuilt = {k for k in before if (stamp(k) or 0) > before[k]}
    assert rebuilt == BETA_CHAIN
