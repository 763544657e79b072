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
import yaml

from dagster_project import runner
from dagster_project.cli import main
from dagster_project.definitions import build_defs
from kalm_core.catalog import load_catalog
from tests.conftest import write_jsonl

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
    """SIGTERM to `kalm ui`'s (dg dev's) process group (it shuts its daemon and webserver down), SIGKILL after 30 s."""
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


def _data_layer_keys(defs) -> set[str]:
    """Every asset the automation builds by itself: the data layers, not the model layers nor a mart over them."""
    from dagster_project.automation import DATA_LAYERS

    graph = defs.resolve_asset_graph()
    return {k.to_user_string() for k in graph.materializable_asset_keys
            if k.path[0] in DATA_LAYERS and k != K(["marts", "mteb_summary"])}


def test_a_new_project_is_requested_whole_on_the_first_tick(env):
    """Nothing built yet: one evaluation requests every data-layer asset, the synthetic layer included (an asset
    without a condition would leave its children waiting on a parent that is missing and never requested)."""
    defs, inst = build_defs(), runner.instance()
    # the sensor's first tick: every source's version (alpha, beta, held-out) and the profile's evaluation sets
    assert _observe(defs, inst) == 4
    first = dg.evaluate_automation_conditions(defs, inst)
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    requested = {k.to_user_string() for k in keys if first.get_num_requested(k)}
    assert {"synthetic/personas", "filtered/synthetic", "batched/batches"} <= requested
    assert requested == _data_layer_keys(defs)  # and nothing of training or evaluation


def test_a_catalogue_edit_asks_the_ui_to_reload_and_otherwise_is_named_in_the_tick(env, monkeypatch):
    """The sensor compares the catalogue file with the definitions' entries on every tick: under `kalm ui` it asks
    the webserver to reload and skips the tick, naming the edit; without a webserver (or once a reload never came)
    it observes with the entries it has."""
    from dagster_project import automation

    defs, inst = build_defs(), runner.instance()
    sensor = defs.resolve_sensor_def("observe_sources")
    tick = lambda: sensor(dg.build_sensor_context(instance=inst, cursor=None, definitions=defs))  # noqa: E731
    cat = yaml.safe_load(env["catalog"].read_text())
    cat["sources"].append({"name": "delta", "uri": "sources/a.jsonl"})
    env["catalog"].write_text(yaml.safe_dump(cat))
    monkeypatch.delenv(automation.UI_PORT, raising=False)
    assert len(tick().asset_events) == 4  # no webserver to ask: the sources it has are observed
    monkeypatch.setenv(automation.UI_PORT, str(_free_port()))  # nothing listens there: the ask goes unanswered
    skipped = tick()
    assert not skipped.asset_events and "catalogue changed (added delta)" in skipped.skip_reason.skip_message
    monkeypatch.setattr(automation, "RELOAD_WAIT_S", -1)  # the reload never came: observe with what it has
    assert len(tick().asset_events) == 4
    loaded = load_catalog(env["catalog"])
    assert automation.catalogue_edit(loaded) == ""
    env["catalog"].write_text("sources: [")  # half-saved: not an edit yet
    assert automation.catalogue_edit(loaded) == ""


def test_a_changed_source_requests_exactly_its_chain_and_nothing_of_the_model(env):
    assert main(["run"]) == 0
    defs, inst = build_defs(), runner.instance()
    assert {s.name for s in defs.sensors} >= {"observe_sources", "kalm_automation"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    assert _observe(defs, inst) == 0  # nothing changed since the run observed the sources
    first = dg.evaluate_automation_conditions(defs, inst)
    assert first.total_requested == 0
    sensor = defs.resolve_sensor_def("observe_sources")
    quiet = sensor(dg.build_sensor_context(instance=inst, cursor=None, definitions=defs))
    assert quiet.skip_reason and "no source changed" in quiet.skip_reason.skip_message  # said, not empty
    _edit_beta(env)
    assert _observe(defs, inst) == 1  # only beta's version moved
    record = inst.fetch_observations(K(["sources", "beta"]), limit=1, ascending=False).records[0]
    facts = record.event_log_entry.asset_observation.metadata  # what the source's asset page shows
    assert facts["records"].value == 2 and facts["files"].value == 1 and facts["size_bytes"].value > 0
    assert facts["location"].value.endswith("b.parquet") and facts["last_modified"].value.startswith("20")
    second = dg.evaluate_automation_conditions(defs, inst, cursor=first.cursor)
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    requested = {k.to_user_string() for k in keys if second.get_num_requested(k)}
    assert requested == BETA_CHAIN  # not raw/alpha, not training, not evaluation


@pytest.mark.slow
def test_the_real_daemon_builds_a_new_project_whole_then_an_edited_sources_chain_alone(env, tmp_path):
    """`kalm ui`'s command (`dg dev`: webserver + the real daemon) on a project nothing was built in: the sensors, running by
    default, build every data-layer table; a source edited afterwards rebuilds its chain and nothing else; then a
    catalogue edit (a new source, another's instruction) is seen with no "Reload definitions" click: the sensor has
    the UI reload the code location, and the new source's chain and the edited one's rebuild. The daemon's runs are
    subprocesses, so the tiny test profile travels as a JSON profile file."""
    from tests.conftest import TINY

    profile = tmp_path / "tiny.json"
    profile.write_text(json.dumps(asdict(TINY), default=list))
    environ = {**os.environ, "KALM_PROFILE": str(profile), "KALM_OBSERVE_INTERVAL_S": "2",
               "KALM_AUTOMATION_INTERVAL_S": "2"}
    data_layers = _data_layer_keys(build_defs())
    inst = runner.instance()

    def stamp(key):
        ev = inst.get_latest_materialization_event(K(key.split("/")))
        return ev.timestamp if ev else None

    def wait(done, seconds: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < seconds and not done():
            time.sleep(2)
        return time.monotonic() - start

    log = (tmp_path / "ui.log").open("w")  # a file: a pipe nobody reads would fill and stall the daemon
    daemon = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "ui", "--port", str(_free_port())],
                              env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        whole = wait(lambda: all(stamp(k) for k in data_layers), 300)
        missing = sorted(k for k in data_layers if not stamp(k))
        assert not missing, f"never built by the automation: {missing}"
        print(f"\nfresh project built whole by the daemon in {whole:.0f}s ({len(data_layers)} assets)")
        time.sleep(6)  # the build's last runs finish their bookkeeping
        before = {k: stamp(k) for k in data_layers}
        _edit_beta(env)
        took = wait(lambda: all((stamp(k) or 0) > before[k] for k in BETA_CHAIN), 240)
        print(f"source edit to rebuilt batched/batches: {took:.0f}s (goal <= 60)")
        time.sleep(6)  # anything else the edit wrongly requested would be running by now
        rebuilt = {k for k in before if (stamp(k) or 0) > before[k]}
        # the catalogue edited under the running UI, no click: a new source and another's instruction
        before = {k: stamp(k) for k in data_layers}
        write_jsonl(env["dir"] / "sources" / "d.jsonl", [{"query": "what is a lake", "pos": ["tables in files"]},
                                                         {"query": "what is a mart", "pos": ["a shaped table"]}])
        cat = yaml.safe_load(env["catalog"].read_text())
        cat["sources"].append({"name": "delta", "uri": "sources/d.jsonl"})
        cat["sources"][0]["instruction"] = "Given a question about Python, retrieve the answer"
        env["catalog"].write_text(yaml.safe_dump(cat))
        new_chain = {"raw/delta", "staged/delta", "filtered/delta", "filtered/alpha", "batched/batches"}
        took = wait(lambda: all((stamp(k) or 0) > (before.get(k) or 0) for k in new_chain), 240)
        print(f"catalogue edit to the new source's chain and alpha's rebuilt: {took:.0f}s")
        late = sorted(k for k in new_chain if (stamp(k) or 0) <= (before.get(k) or 0))
        assert not late, f"not built after the catalogue edit: {late}"
    finally:
        _stop(daemon)
        log.close()
    assert rebuilt == BETA_CHAIN
    assert not any((stamp(k) or 0) > before[k] for k in ("raw/beta", "staged/beta", "filtered/beta"))
    said = (tmp_path / "ui.log").read_text()
    assert "Serving dagster-webserver" in said and "SupersessionWarning" not in said  # `dg dev`, no deprecation
