"""A folder of FlagEmbedding jsonl files as KaLM and FlagEmbedding release training data: one task per sub-folder,
rows with their own `prompt` and `type`, teacher `pos_scores` / `neg_scores`; every row keeps the file it came from."""

import json

import pytest

from kalm_core.catalog import Source
from kalm_core.extract import load_file_source
from kalm_core.staging import stage_source


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "kalm_release"
    write(root / "retrieval" / "msmarco.jsonl",
          [{"query": "what is a lake", "pos": ["a body of water"], "neg": ["a river"],
            "pos_scores": [0.92], "neg_scores": [0.31]}])
    write(root / "classification-no_in_batch_neg" / "banking.jsonl",
          [{"query": "card not arrived", "pos": ["card_arrival"], "neg": ["card_linking"],
            "prompt": "Given an online banking query, find the corresponding intents"}])
    write(root / "mixed" / "rows.jsonl",
          [{"query": "a cat sits", "pos": ["a cat is sitting"], "neg": [], "type": "sts", "prompt": ""},
           {"query": "a note", "pos": ["its answer"], "neg": []}])
    return root


def test_sub_folders_rows_and_teacher_scores_reach_staging(con, release):
    src = Source(name="kalm", uri=str(release / "**" / "*.jsonl"), folder_task_types=True,
                 instruction="Given a query, retrieve documents that answer the query")
    stats = load_file_source(con, src, release)
    assert stats.records == stats.file_records == 4
    staged = stage_source(con, src)
    assert staged.balanced and staged.kept == 4
    rows = {r[0]: r[1:] for r in con.execute(
        'select query, task_type, instruction, teacher_pos_score, teacher_neg_scores, file from staged."kalm"'
    ).fetchall()}
    assert rows["what is a lake"][:4] == ("retrieval", "Given a query, retrieve documents that answer the query",
                                          0.92, [0.31])
    assert rows["what is a lake"][4].endswith("retrieval/msmarco.jsonl")
    assert rows["card not arrived"][:2] == ("classification",  # the folder's name, its suffix ignored
                                            "Given an online banking query, find the corresponding intents")
    assert rows["a cat sits"][:2] == ("sts", "Given a query, retrieve documents that answer the query")  # own type
    assert rows["a note"][0] == "retrieval"  # `mixed` names no task type: the catalogue's


def test_without_folder_task_types_the_catalogue_decides(con, release):
    src = Source(name="kalm", uri=str(release / "**" / "*.jsonl"), task_type="retrieval")
    load_file_source(con, src, release)
    stage_source(con, src)
    types = dict(con.execute('select query, task_type from staged."kalm"').fetchall())
    assert types["card not arrived"] == "retrieval" and types["a cat sits"] == "sts"  # a row's own type still wins
