import json

from kalm_core.catalog import Source
from kalm_core.export import export_flagembedding
from kalm_core.extract import load_file_source
from kalm_core.staging import stage_source
from tests.conftest import PAIRS_A, write_jsonl


def _pairs(con, name):
    return sorted(con.execute(f'select query, positive, negatives from staged."{name}"').fetchall())


def test_export_then_load_as_a_source_gives_the_same_pairs(con, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", PAIRS_A)
    src = Source(name="a", uri="a.jsonl", instruction="Find the answer")
    load_file_source(con, src, tmp_path)
    stage_source(con, src)
    n = export_flagembedding(con, tmp_path / "out" / "pairs.jsonl", "staged", "a")
    lines = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert n == len(lines) == 2
    assert set(lines[0]) == {"query", "pos", "neg", "prompt", "type"} and lines[0]["prompt"] == "Find the answer"

    back = Source(name="back", uri="out/pairs.jsonl")
    load_file_source(con, back, tmp_path)
    stats = stage_source(con, back)
    assert stats.kept == n and stats.rejected == 0
    assert _pairs(con, "back") == _pairs(con, "a")


def test_an_sts_pair_is_exported_without_a_prompt(con, tmp_path):
    """The one instruction policy (kalm_core/prompts.py): what trains without an instruction exports none."""
    write_jsonl(tmp_path / "s.jsonl", PAIRS_A)
    src = Source(name="s", uri="s.jsonl", instruction="Retrieve similar text", task_type="sts")
    load_file_source(con, src, tmp_path)
    stage_source(con, src)
    export_flagembedding(con, tmp_path / "s_out.jsonl", "staged", "s")
    lines = [json.loads(x) for x in (tmp_path / "s_out.jsonl").read_text().splitlines()]
    assert lines and all(x["prompt"] is None and x["type"] == "sts" for x in lines)
