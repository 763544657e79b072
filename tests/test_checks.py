"""Every blocking check can fail, and what it guards does not run when it does."""

from dataclasses import replace

import dagster as dg
import pytest

from dagster_project import runner
from dagster_project.cli import main
from dagster_project.definitions import build_defs
from kalm_core import warehouse
from kalm_core.config import PROFILES, BatchConfig, EvalConfig
from tests.llm_server import ScriptedLLM

K = dg.AssetKey


def run_checks(*checks: dg.AssetCheckKey):
    """Execute only these checks against the current lake; returns {check name: passed}."""
    only = dg.define_asset_job("only_checks", selection=dg.AssetSelection.checks(*checks))
    defs = dg.Definitions.merge(build_defs(), dg.Definitions(jobs=[only]))
    result = defs.resolve_job_def("only_checks").execute_in_process(instance=runner.instance(), raise_on_error=False)
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}, result


def test_the_data_mix_check_fails_when_a_weighted_source_gets_nothing_and_a_zero_weight_leaves_one_out(
        env, monkeypatch, capsys):
    """#23 item 1: a source meant to be present contributes pairs; `weight: 0` leaves one out on purpose."""
    import yaml

    from kalm_core.config import MixConfig

    monkeypatch.setitem(PROFILES, "starved", replace(PROFILES["tiny"], name="starved", mix=MixConfig(total=1)))
    monkeypatch.setenv("KALM_PROFILE", "starved")
    assert main(["run", "--select", "*batched/batches"]) != 0  # blocking: nothing is batched from a broken mix
    mix = dg.AssetCheckKey(K(["marts", "data_mix"]), "every_weighted_source_sampled")
    assert run_checks(mix)[0] == {"every_weighted_source_sampled": False}
    with warehouse.connect(read_only=True) as con:
        assert not con.execute("select count(*) from information_schema.tables where table_name = 'batches'"
                               ).fetchall()[0][0]
    monkeypatch.setenv("KALM_PROFILE", "tiny")
    catalog = yaml.safe_load(env["catalog"].read_text())
    catalog["sources"][1]["weight"] = 0  # beta
    env["catalog"].write_text(yaml.safe_dump(catalog))
    assert main(["run", "--select", "*batched/batches"]) == 0
    with warehouse.connect(read_only=True) as con:
        assert {s for (s,) in con.execute("select distinct source from batched.batches").fetchall()} == {"alpha"}
        assert con.execute("select sampled from marts.data_mix where source = 'beta'").fetchall() == [(0,)]
    assert run_checks(mix)[0] == {"every_weighted_source_sampled": True}


def test_file_accounting_fails_when_raw_lost_a_record(env, capsys):
    assert main(["run", "--select", "key:raw/alpha"]) == 0
    check = dg.AssetCheckKey(K(["raw", "alpha"]), "file_accounting")
    assert run_checks(check)[0] == {"file_accounting": True}
    with warehouse.connect() as con:
        con.execute("delete from raw.alpha where row_number = 3")
    assert run_checks(check)[0] == {"file_accounting": False}


def test_the_batch_checks_pass_at_a_ratio_below_one_and_fail_on_drift_or_a_vanished_source(env, monkeypatch, capsys):
    mixed = replace(PROFILES["tiny"], name="mixed", batch=BatchConfig(per_device_batch=2, group_by="source", ratio=0.5))
    monkeypatch.setitem(PROFILES, "mixed", mixed)
    monkeypatch.setenv("KALM_PROFILE", "mixed")
    assert main(["run", "--select", "*batched/batches"]) == 0
    check = dg.AssetCheckKey(K(["batched", "batch_purity"]), "purity_matches_ratio")
    assert run_checks(check)[0] == {"purity_matches_ratio": True}
    with warehouse.connect() as con:  # batches far purer than the ratio asks for
        con.execute("update batched.batch_purity set purity = 1.0, expected_purity = 0.1")
    assert run_checks(check)[0] == {"purity_matches_ratio": False}
    sources = dg.AssetCheckKey(K(["batched", "batches"]), "every_source_batched")
    assert run_checks(sources)[0] == {"every_source_batched": True}  # one check of the step, alone
    with warehouse.connect() as con:  # a source with kept pairs loses all of its rows from the batches
        con.execute("delete from batched.batches where source = (select min(source) from batched.batches)")
    assert run_checks(check, sources)[0] == {"purity_matches_ratio": False, "every_source_batched": False}


def test_a_dead_llm_backend_fails_the_synthesis_checks(env, monkeypatch, capsys):
    with ScriptedLLM(lambda body, seen: ("status", 500)) as server:
        monkeypatch.setenv("KALM_LLM_BASE_URL", server.url)
        monkeypatch.setenv("KALM_LLM_MODEL", "scripted")
        assert main(["run", "--select", "*filtered/synthetic"]) == 1
    out = capsys.readouterr().out
    assert "check failed: synthetic/instructions llm_failures_below_threshold" in out
    with warehouse.connect(read_only=True) as con:
        assert not warehouse.exists(con, "filtered", "synthetic")  # blocked: no empty layer passed off as done


def test_a_candidate_that_does_not_beat_its_base_is_not_promoted(env, monkeypatch, capsys):
    assert main(["run"]) == 0  # the tiny profile promotes whatever it trains
    with warehouse.connect(read_only=True) as con:
        promoted = con.execute("select model_path from training.embedder").fetchall()
    strict = replace(PROFILES["tiny"], name="strict", eval=EvalConfig(mteb_tasks=(), promote_min_gain=0.5))
    monkeypatch.setitem(PROFILES, "strict", strict)
    assert main(["run", "--profile", "strict", "--select", "key:training/candidate+ or key:training/embedder"]) == 1
    out = capsys.readouterr().out
    assert "check failed: evaluation/mteb_results candidate_beats_base" in out
    with warehouse.connect(read_only=True) as con:
        candidate = con.execute("select model_path from training.candidate").fetchall()
        assert con.execute("select model_path from training.embedder").fetchall() == promoted != candidate
    inst = runner.instance()
    ev = inst.get_latest_materialization_event(K(["training", "embedder"]))
    assert ev.asset_materialization.metadata["model_path"].value == promoted[0][0]
    from pathlib import Path

    assert Path(candidate[0][0]).is_dir()  # the failed candidate stays on disk, named in the check


@pytest.mark.parametrize("argv,message", [
    (["run", "--profile", "nonexistent"], "unknown profile"),
    (["run", "--lake", "x.jsonl"], "a folder, not a file"),
    (["export", "--table", "a.b.c", "out.jsonl"], "layer.name"),
    (["export", "--table", "marts", "out.jsonl"], "layer.name"),
    (["run", "--select", "*key:raw/alpha or"], "invalid selection"),
    (["run", "--select", "key:raw/nothing"], "matches no asset"),
])
def test_odd_arguments_are_one_line_errors(env, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kalm: error:") and message in err and "Traceback" not in err


def test_an_unknown_mteb_task_or_a_broken_beir_folder_is_an_error_before_any_step(env, monkeypatch, capsys, tmp_path):
    from kalm_core.config import PROFILES, EvalConfig

    tiny = PROFILES["tiny"]
    monkeypatch.setitem(PROFILES, "typo", replace(tiny, name="typo", eval=EvalConfig(mteb_tasks=("SciFactt",))))
    monkeypatch.setitem(PROFILES, "nobeir", replace(tiny, name="nobeir", eval=EvalConfig(
        mteb_tasks=(), beir_folders=(str(tmp_path / "missing"),))))
    assert main(["run", "--profile", "typo"]) == 2
    err = capsys.readouterr().err
    assert "'SciFactt' is neither an MTEB task nor an MTEB benchmark" in err and "Did you mean: 'SciFact'" in err
    assert main(["run", "--profile", "nobeir"]) == 2
    assert "is not a BEIR-format folder" in capsys.readouterr().err
    assert main(["run", "--profile", "typo", "--select", "key:raw/alpha"]) == 0  # evaluation not selected
    with warehouse.connect(read_only=True) as con:
        assert not warehouse.exists(con, "staged", "alpha")  # the refused runs ran no step


def test_a_trainer_crash_is_the_failures_message_through_dagster_pipes(env, monkeypatch, capsys):
    tiny = PROFILES["tiny"]
    broken = replace(tiny, name="broken", train=replace(tiny.train, dims=(999, 64)))  # MiniLM has 384 dims
    monkeypatch.setitem(PROFILES, "broken", broken)
    assert main(["run", "--profile", "broken", "--select", "+key:training/candidate"]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "the trainer failed: ValueError" in text and "999" in text  # the trainer's own message, not "see the logs"
    inst = runner.instance()
    logs = [e.user_message for e in inst.all_logs(inst.get_runs(limit=1)[0].run_id)]
    assert not any(m.startswith("step ") for m in logs)  # it never reached a training step
    assert any("[pipes]" in m for m in logs)  # the trainer ran as a Pipes session of the run


def test_an_empty_source_file_or_no_sources_is_refused_before_any_step(env, capsys):
    (env["dir"] / "sources" / "a.jsonl").write_bytes(b"")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "source 'alpha'" in err and "is empty" in err and len(err.strip().splitlines()) == 1
    env["catalog"].write_text("sources: []\n")
    assert main(["run"]) == 2
    assert "lists no sources" in capsys.readouterr().err


def test_a_training_pair_that_is_an_evaluation_pair_is_left_out_of_training_with_its_reason(env, capsys):
    """Decontamination (#23 item 2): a held-out pair in a training source, in other case and spacing, never reaches
    the batches; marts.contamination names it and the held-out source it matches."""
    import yaml

    from tests.conftest import PAIRS_EVAL, write_jsonl

    leaked = " " + PAIRS_EVAL[0]["query"].upper() + "?"
    write_jsonl(env["dir"] / "sources" / "leak.jsonl",
                [{"query": leaked, "pos": PAIRS_EVAL[0]["pos"]},
                 {"query": "how do I train", "pos": ["call fit on the model"]},
                 {"query": "how do I predict", "pos": ["call predict on the fitted model"]}])
    catalog = yaml.safe_load(env["catalog"].read_text())
    catalog["sources"].append({"name": "leak", "uri": "sources/leak.jsonl"})
    env["catalog"].write_text(yaml.safe_dump(catalog))
    assert main(["run", "--select", "+key:batched/batches or key:marts/contamination"]) == 0
    with warehouse.connect(read_only=True) as con:
        got = con.execute("select source, query, reason, eval_source from marts.contamination").fetchall()
        trained = {q for (q,) in con.execute("select query from batched.batches").fetchall()}
    assert got == [("leak", leaked.strip(), "contaminated: query is a query of gamma", "gamma")]
    assert leaked.strip() not in trained and "how do I train" in trained
    overlap = dg.AssetCheckKey(K(["marts", "training_pairs"]), "no_eval_overlap")
    assert run_checks(overlap)[0] == {"no_eval_overlap": True}


def test_a_training_pair_from_an_evaluation_set_the_profile_names_is_left_out(env, monkeypatch, tmp_path):
    """Decontamination against the profile's evaluation sets, not only the held-out split: a BEIR folder the profile
    evaluates on (eval.beir_folders) holds alpha's first query and another's passage; both pairs are left out, named
    with the folder, the set absent from the cache (SciFact) is named in the metadata, and the guard check fails once
    a text of the set is put back into training."""
    import huggingface_hub.constants as c

    from tests.conftest import PAIRS_A, PAIRS_B, TINY
    from tests.kalm_core.test_beir_source import write_folder

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # SciFact is not present
    folder = write_folder(tmp_path / "mytask", [{"_id": "d1", "title": "", "text": PAIRS_B[0]["answer"] + "."}],
                          [{"_id": "q1", "text": PAIRS_A[0]["query"].title()}], [("q1", "d1", 1)], split="test")
    monkeypatch.setitem(PROFILES, "tiny", replace(TINY, eval=replace(TINY.eval, beir_folders=(str(folder),))))
    assert main(["run", "--select", "+key:marts/training_pairs or +key:marts/contamination"]) == 0
    with warehouse.connect(read_only=True) as con:
        got = con.execute("select source, reason from marts.contamination order by source").fetchall()
        trained = {q for (q,) in con.execute("select query from marts.training_pairs").fetchall()}
    assert got == [("alpha", "contaminated: query is a query of mytask"),
                   ("beta", "contaminated: positive is a relevant text of mytask")]
    assert PAIRS_A[0]["query"] not in trained and PAIRS_B[0]["question"] not in trained
    inst = runner.instance()
    meta = inst.get_latest_materialization_event(K(["marts", "evaluation_sets"])).asset_materialization.metadata
    assert meta["texts_per_set"].value == {"mytask": 2}
    assert "kalm fetch --task SciFact" in meta["not_present"].value["SciFact"]
    overlap = dg.AssetCheckKey(K(["marts", "training_pairs"]), "no_eval_overlap")
    assert run_checks(overlap)[0] == {"no_eval_overlap": True}
    with warehouse.connect() as con:
        con.execute("insert into marts.training_pairs by name select source, row_number, positive_index, pair_id, query, "
                    "positive from marts.contamination limit 1")
    assert run_checks(overlap)[0] == {"no_eval_overlap": False}


def test_flipping_held_out_moves_the_source_between_the_splits(env, capsys):
    import yaml

    assert main(["run", "--select", "+key:marts/training_pairs or +key:marts/eval_pairs"]) == 0
    catalog = yaml.safe_load(env["catalog"].read_text())
    for s in catalog["sources"]:
        s["held_out"] = s["name"] == "beta"  # gamma joins training, beta becomes the evaluation split
    env["catalog"].write_text(yaml.safe_dump(catalog))
    defs, inst = build_defs(), runner.instance()
    runner.observe_sources(defs, inst)
    stale = {k.to_user_string() for k in runner.stale_keys(defs, inst)}
    assert {"raw/beta", "raw/gamma", "marts/training_pairs", "marts/eval_pairs"} <= stale and "raw/alpha" not in stale
    assert main(["run", "--select", "+key:marts/training_pairs or +key:marts/eval_pairs"]) == 0
    with warehouse.connect(read_only=True) as con:
        train = {s for (s,) in con.execute("select distinct source from marts.training_pairs").fetchall()}
        evals = {s for (s,) in con.execute("select distinct source from marts.eval_pairs").fetchall()}
    assert train == {"alpha", "gamma"} and evals == {"beta"}


def test_evaluation_refuses_a_held_out_split_that_overlaps_what_the_candidate_trained_on(env, capsys):
    from tests.conftest import PAIRS_EVAL, write_jsonl

    assert main(["run"]) == 0
    with warehouse.connect(read_only=True) as con:
        query, positive = con.execute("select query, positive from batched.batches limit 1").fetchall()[0]
    # the held-out source now also holds a pair the candidate trained on
    write_jsonl(env["dir"] / "sources" / "evalset.jsonl", PAIRS_EVAL + [{"query": query, "pos": [positive]}])
    # the held-out chain and evaluation alone: training is not rebuilt (a rebuild would decontaminate it)
    assert main(["run", "--select", "key:raw/gamma or key:staged/gamma or key:marts/eval_pairs "
                 "or key:evaluation/mteb_results"]) == 1
    captured = capsys.readouterr()
    assert "FAIL evaluation__mteb_results" in captured.out
    assert "are in the batches the candidate trained on" in captured.out + captured.err


def test_the_marts_checks_run_alone_against_the_lake_and_fail_on_a_duplicate_key(env, capsys):
    assert main(["run", "--select", "+key:marts/training_pairs or +key:marts/eval_pairs"]) == 0
    unique = dg.AssetCheckKey(K(["marts", "training_pairs"]), "unique_pair_id")
    overlap = dg.AssetCheckKey(K(["marts", "training_pairs"]), "no_eval_overlap")
    passed, result = run_checks(unique, overlap)
    assert passed == {"unique_pair_id": True, "no_eval_overlap": True}
    assert not result.get_asset_materialization_events()  # checks alone build nothing
    with warehouse.connect() as con:
        con.execute("insert into marts.training_pairs select * from marts.training_pairs limit 1")
        con.execute("insert into marts.training_pairs by name select * from marts.eval_pairs limit 1")
    assert run_checks(unique, overlap)[0] == {"unique_pair_id": False, "no_eval_overlap": False}
