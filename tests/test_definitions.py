"""The Definitions load with the expected keys; the DAG runs end to end; one changed source rebuilds only its chain."""

import json
import re
from pathlib import Path

import dagster as dg
import polars as pl
import yaml

from dagster_project import runner
from dagster_project.cli import main
from dagster_project.definitions import build_defs
from kalm_core import warehouse
from tests.conftest import write_jsonl

K = dg.AssetKey


def _keys(keys):
    return {k.to_user_string() for k in keys}


def test_default_definitions_have_every_layer_and_check():
    defs = build_defs()
    keys = _keys(defs.resolve_asset_graph().get_all_asset_keys())
    assert {"sources/numpy", "raw/numpy", "staged/numpy", "raw/polars", "staged/polars",
            "marts/training_pairs", "marts/eval_pairs"} <= keys
    checks = {(c.asset_key.to_user_string(), c.name) for c in defs.resolve_asset_graph().asset_check_keys}
    assert ("staged/numpy", "row_accounting") in checks
    assert ("marts/training_pairs", "unique_pair_id") in checks and ("marts/eval_pairs", "not_empty") in checks
    job = defs.resolve_job_def("kalm_all")
    assert job.executor_def.name == "in_process"


def test_full_run_then_a_changed_source_rebuilds_only_its_chain(env, capsys):
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "marts.training_pairs" in out and str(env["lake"]) in out
    with warehouse.connect(read_only=True) as con:
        # alpha: 5 rows -> 2 kept, 1 duplicate, 2 rejected; beta: 2 kept; gamma (held out): 2
        assert warehouse.count(con, "marts", "training_pairs") == 4
        assert warehouse.count(con, "marts", "eval_pairs") == 2
        assert con.execute("select count(*) from staged.rejects where source = 'alpha'").fetchall()[0][0] == 3

    defs, inst = build_defs(), runner.instance()
    assert runner.stale_keys(defs, inst) == []

    data = env["dir"] / "sources" / "b.parquet"
    pl.DataFrame({"question": ["what is a tensor", "what is a graph"], "answer": ["an array", "nodes and edges"],
                  "hard": [["a scalar"], ["a tree"]]}).write_parquet(data)
    runner.observe_sources(defs, inst)
    stale = _keys(runner.stale_keys(defs, inst))
    # marts/eval_pairs reads the held-out sources only: a training source's change leaves it alone
    tail = {"marts/training_pairs", "marts/filter_report", "marts/negatives_report", "marts/data_mix",
            "marts/duplicate_pairs", "marts/contamination",
            "batched/batches", "batched/batch_purity", "batched/left_over", "training/candidate", "training/embedder", "training/runs",
            "evaluation/mteb_results", "marts/mteb_summary"}
    assert stale == {"raw/beta", "staged/beta", "filtered/beta"} | tail

    assert main(["run", "--stale"]) == 0
    out = capsys.readouterr().out
    assert f"{len(stale)} stale asset(s)" in out and "raw.alpha" not in out and "raw.beta" in out
    assert runner.stale_keys(build_defs(), inst) == []
    with warehouse.connect(read_only=True) as con:
        got = {q for (q,) in con.execute("select query from marts.training_pairs where source = 'beta'").fetchall()}
        report = con.execute("select source, pairs, kept from marts.filter_report order by source").fetchall()
        truth = con.execute("select source, count(*), count(*) filter (kept) from (select * from filtered.alpha "
                            "union all by name select * from filtered.beta union all by name "
                            "select * from filtered.synthetic) group by source order by source").fetchall()
    assert got == {"what is a tensor", "what is a graph"}
    with warehouse.connect(read_only=True) as con:  # the row counts the steps recorded (and kalm run printed)
        for layer, name in (("raw", "beta"), ("staged", "beta"), ("filtered", "beta"), ("marts", "training_pairs"),
                            ("marts", "filter_report"), ("marts", "data_mix"), ("batched", "batches"),
                            ("batched", "batch_purity"), ("batched", "left_over")):
            meta = inst.get_latest_materialization_event(K([layer, name])).asset_materialization.metadata
            rows = warehouse.count(con, layer, name)
            assert meta["dagster/row_count"].value == rows
            assert re.search(rf"{layer}\.{name} +{rows:,d} rows", out)
    # the per-source reports recomputed beta's row alone, and agree with a count over every filtered table
    how = inst.get_latest_materialization_event(K(["marts", "filter_report"])).asset_materialization.metadata
    assert how["materialized"].text == "incremental: filtered.beta"
    assert report == truth
    assert main(["run", "--full-refresh", "--select", "key:marts/filter_report"]) == 0
    how = inst.get_latest_materialization_event(K(["marts", "filter_report"])).asset_materialization.metadata
    assert how["materialized"].text == "whole"
    with warehouse.connect(read_only=True) as con:
        assert con.execute("select source, pairs, kept from marts.filter_report order by source").fetchall() == truth


def test_the_instance_is_dagsters_own_storage_and_upgrades_only_a_config_kalm_wrote(tmp_path, monkeypatch):
    """dagster.yaml: Dagster's own storage (public configuration only); the event-log class an earlier kalm wrote
    into it (over the same files) is taken out and its history read; a config a user wrote is left alone."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    inst = runner.instance()
    assert (home / "dagster.yaml").read_text() == runner.INSTANCE_CONFIG
    inst.report_runless_asset_event(dg.AssetMaterialization("x"))
    assert (home / "history" / "runs").is_dir()  # Dagster's files, where the earlier class kept them too
    earlier = runner.INSTANCE_CONFIG + ("event_log_storage:\n  module: dagster_project.event_log\n"
                                        "  class: KalmSqliteEventLogStorage\n  config:\n"
                                        f"    base_dir: \"{tmp_path / 'elsewhere' / 'history' / 'runs'}/\"\n")
    (home / "dagster.yaml").write_text(earlier)  # written by an earlier kalm, for a home since moved
    assert runner.instance().get_latest_materialization_event(K("x")) is not None  # history kept
    assert (home / "dagster.yaml").read_text() == runner.INSTANCE_CONFIG
    edited = "retention:\n  schedule:\n    purge_after_days: 7\n"
    (home / "dagster.yaml").write_text(earlier + edited)  # and edited by hand: only the old block goes
    assert runner.instance().get_latest_materialization_event(K("x")) is not None
    assert (home / "dagster.yaml").read_text() == runner.INSTANCE_CONFIG + edited
    mine = "telemetry:\n  enabled: true\n"
    (home / "dagster.yaml").write_text(mine)
    runner.instance()
    assert (home / "dagster.yaml").read_text() == mine  # a user's own config is theirs


def test_a_missing_file_fails_its_source_only(env, capsys):
    cat = yaml.safe_load(env["catalog"].read_text())
    cat["sources"].append({"name": "ghost", "uri": "sources/missing.jsonl"})
    env["catalog"].write_text(yaml.safe_dump(cat))
    assert main(["run"]) == 1
    captured = capsys.readouterr()
    assert "source 'ghost': no file matches" in captured.err and "missing.jsonl" in captured.err
    with warehouse.connect(read_only=True) as con:
        for name in ("alpha", "beta", "gamma"):
            assert warehouse.exists(con, "staged", name)
        assert not warehouse.exists(con, "raw", "ghost")


def test_a_source_with_every_row_rejected_fails_its_blocking_check(env, capsys):
    write_jsonl(env["dir"] / "sources" / "a.jsonl", [{"query": "same", "pos": ["same"]}])
    assert main(["run"]) == 1
    assert "check failed: staged/alpha not_empty" in capsys.readouterr().out
    with warehouse.connect(read_only=True) as con:
        assert not warehouse.exists(con, "marts", "training_pairs")  # blocked downstream


def test_select_runs_a_subset(env, capsys):
    assert main(["run", "--select", "key:raw/gamma or key:staged/gamma"]) == 0
    out = capsys.readouterr().out
    assert "staged.gamma" in out and "raw.alpha" not in out


def test_a_source_filtered_to_nothing_fails_its_check_by_name(env, capsys, monkeypatch):
    from dataclasses import replace

    from kalm_core.config import PROFILES, FilterConfig

    strict = replace(PROFILES["tiny"], name="strict", filter=FilterConfig(top_k=0, window=(0, 1)))
    monkeypatch.setitem(PROFILES, "strict", strict)
    assert main(["run", "--profile", "strict"]) == 1
    out = capsys.readouterr().out
    assert "check failed: filtered/alpha kept_some" in out and "check failed: filtered/beta kept_some" in out
    with warehouse.connect(read_only=True) as con:
        assert con.execute('select count(*) filter (kept), count(*) from filtered."alpha"').fetchall()[0] == (0, 2)
        assert not warehouse.exists(con, "marts", "training_pairs")


def test_a_rebuild_reencodes_nothing_it_has_seen(env, capsys):
    assert main(["run", "--select", "+key:filtered/alpha"]) == 0
    inst = runner.instance()
    first = inst.get_latest_materialization_event(K(["filtered", "alpha"])).asset_materialization.metadata
    assert first["texts_encoded"].value > 0
    assert main(["run", "--select", "key:filtered/alpha"]) == 0
    again = inst.get_latest_materialization_event(K(["filtered", "alpha"])).asset_materialization.metadata
    assert again["texts_encoded"].value == 0 and again["kept"].value == first["kept"].value


def test_the_whole_dag_trains_evaluates_and_runs_without_an_llm(env, capsys, monkeypatch):
    for var in ("KALM_LLM_BASE_URL", "KALM_LLM_MODEL", "KALM_LLM_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    assert main(["run"]) == 0
    inst = runner.instance()
    with warehouse.connect(read_only=True) as con:
        assert warehouse.count(con, "synthetic", "examples") == 0 and warehouse.count(con, "filtered", "synthetic") == 0
        run = con.sql("select * from training.runs").pl()
        n_batches = con.execute("select count(distinct batch_id) from batched.batches").fetchall()[0][0]
        assert run.height == 1 and run["steps"][0] == min(2, n_batches) >= 1 and run["final_loss"][0] > 0
        results = con.sql("select * from evaluation.mteb_results where metric = 'ndcg_at_10'").pl()
        skipped = con.sql("select * from evaluation.skipped_tasks").pl()
    assert sorted(set(zip(results["role"], results["dim"]))) == [("base", 64), ("base", 384), ("trained", 64),
                                                                 ("trained", 384)]
    assert set(results["task_name"]) == {"KalmHeldOut"} and results["score"].is_between(0, 1).all()
    assert skipped["task_name"].to_list() == ["SciFact"] and "HF_HUB_OFFLINE" in skipped["reason"][0]
    with warehouse.connect(read_only=True) as con:
        summary = con.sql("select * from marts.mteb_summary").pl()
    assert set(summary["task_name"]) == {"KalmHeldOut", "(average)"} and set(summary["task_type"]) == {"Retrieval"}
    full = summary.filter((pl.col("task_name") == "KalmHeldOut") & (pl.col("dim") == 384))
    ndcg = results.filter((pl.col("dim") == 384) & (pl.col("role") == "trained"))["score"].item()
    assert abs(full["trained"].item() - ndcg) < 1e-12 and abs(full["gain"].item() - (ndcg - full["base"].item())) < 1e-12
    model_dir = Path(run["model_path"][0])
    prompts = json.loads((model_dir / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["SciFact-query"].startswith("Instruct: Given a scientific claim") and "query" in prompts
    assert len(list((model_dir / "mteb").rglob("KalmHeldOut.json"))) == 4  # mteb's JSON: 2 roles x 2 dims
    examples = inst.get_latest_materialization_event(K(["synthetic", "examples"])).asset_materialization.metadata
    assert "KALM_LLM_BASE_URL" in examples["how_to_enable"].value
    trained_event = inst.get_latest_materialization_event(K(["training", "candidate"]))
    trained = trained_event.asset_materialization.metadata
    logs = [e.user_message for e in inst.all_logs(trained_event.run_id)]
    steps = run["steps"][0]  # the trainer's step lines, streamed into the run's log through Dagster Pipes
    assert any(m.startswith(f"step {steps}/{steps} loss") for m in logs)
    assert trained["loss_curve"].value.startswith("![plot](data:image/png;base64,")
    evaluated = inst.get_latest_materialization_event(K(["evaluation", "mteb_results"])).asset_materialization.metadata
    assert "score_vs_dim" in evaluated and "trained_minus_base_full_dim" in evaluated


def status(defs, inst, key):
    from dagster_project.staleness import statuses

    return statuses(defs, inst, [key])[key]


def test_a_profile_picked_at_launch_is_validated_used_and_versioned(env, tmp_path):
    """The launchpad's `resources.settings.config.profile`: the run uses it, its tables carry the code version of
    that profile (so the UI shows them stale against the location's), and an unknown one fails before any step."""
    from dataclasses import asdict, replace

    from dagster_project.automation import ALL_JOB
    from tests.conftest import TINY

    alpha = K(["filtered", "alpha"])
    assert main(["run", "--select", "+key:filtered/alpha"]) == 0
    defs, inst = build_defs(), runner.instance()
    defined = defs.resolve_asset_graph().get(alpha).code_version
    job = defs.resolve_job_def(ALL_JOB)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(asdict(replace(TINY, name="other", filter=replace(TINY.filter, top_k=3)))))

    def launch(profile=None):
        config = {**runner.QUIET, "resources": {"settings": {"config": {"profile": profile}}}} if profile else \
            runner.QUIET
        return job.execute_in_process(instance=inst, asset_selection=[alpha], run_config=config, raise_on_error=False)

    def latest():
        return inst.get_latest_materialization_event(alpha).asset_materialization

    assert launch(str(other)).success
    event = latest()
    assert event.tags["kalm/profile"] == "other"  # the run used the launch profile
    assert event.tags["dagster/code_version"] != defined and event.tags["dagster/data_version_is_user_provided"]
    # stale, as the UI shows it: built with another profile than the location's
    assert status(defs, inst, alpha).causes == ("has a new code version",)
    assert launch().success  # the location's own profile again: Dagster's own versions
    assert latest().tags["dagster/code_version"] == defined and latest().tags["kalm/profile"] == "tiny"
    assert status(defs, inst, alpha).state == "fresh"
    before = inst.get_latest_materialization_event(alpha).timestamp
    bad = launch("nope")
    assert not bad.success and inst.get_latest_materialization_event(alpha).timestamp == before
    errors = [e for e in bad.all_events if e.is_failure]
    assert any("unknown profile 'nope'" in str(e.event_specific_data) for e in errors), errors
