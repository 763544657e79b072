"""Row-level unit tests of sql/staged/stg_source.sql: given raw rows, the expected dispositions."""

import unicodedata

import polars as pl
import pytest

from kalm_core.catalog import Source
from kalm_core.config import ModelConfig
from kalm_core.extract import load_frame_source
from kalm_core.staging import accounting, stage_source


def _raw(con, name, pairs, **kw):
    src = Source(name=name, kind="python-docs", packages=["x"], **kw)
    frame = pl.DataFrame(
        {"ordinal": list(range(1, len(pairs) + 1)), "query": [p[0] for p in pairs],
         "positives": [[p[1]] for p in pairs], "negatives": [p[2] if len(p) > 2 else [] for p in pairs],
         "record_id": [None] * len(pairs)},
        schema={"ordinal": pl.Int64, "query": pl.Utf8, "positives": pl.List(pl.Utf8),
                "negatives": pl.List(pl.Utf8), "record_id": pl.Utf8},
    )
    load_frame_source(con, src, frame)
    return src


CASES = [
    ("  how to sort  ", " sorted(xs) ", ["  reversed(xs) ", ""]),  # kept, trimmed, empty negative dropped
    ("how to sort", "sorted(xs)"),  # duplicate of row 1 after trimming
    (None, "orphan positive"),  # empty query
    ("no answer", "   "),  # empty positive
    ("echo", "echo"),  # query equals positive
    ("neg is pos", "the answer", ["the answer"]),  # negative equals positive
    ("too long", "x" * 50),  # over the passage limit (27 tokens; 4 windows of 3 tokens: 12)
    (unicodedata.normalize("NFD", "café menu"), "a list of dishes"),  # NFD in, NFC out
]


def test_dispositions_and_reasons(con):
    src = _raw(con, "s", CASES, instruction="Find it", task_type="retrieval")
    stats = stage_source(con, src, model=ModelConfig(passage_max_len=3))
    assert (stats.rows_in, stats.kept, stats.rejected, stats.duplicates) == (8, 2, 5, 1)
    assert stats.balanced and accounting(con, "s") == {"rows_in": 8, "kept": 2, "rejected": 5, "duplicates": 1}
    assert stats.reasons == {"empty query": 1, "empty positive": 1, "query equals positive": 1,
                             "negative equals positive": 1, "positive over length limit": 1}
    kept = con.sql('select * from staged."s" order by row_number').pl()
    assert kept["query"].to_list() == ["how to sort", unicodedata.normalize("NFC", "café menu")]
    assert kept["positive"][0] == "sorted(xs)" and kept["negatives"][0].to_list() == ["reversed(xs)"]
    assert kept["instruction"].to_list() == ["Find it"] * 2 and not kept["is_held_out"].any()
    dup = con.sql("select * from staged.rejects where status = 'duplicate'").pl()
    assert dup["row_number"].to_list() == [2] and dup["duplicate_of"][0] == kept["pair_id"][0]


def test_pair_id_is_a_stable_content_hash(con):
    stage_source(con, _raw(con, "one", [("q", "p"), ("r", "s")]))
    stage_source(con, _raw(con, "two", [("r", "s"), ("q", "p")]))
    one = dict(con.execute('select query, pair_id from staged."one"').fetchall())
    two = dict(con.execute('select query, pair_id from staged."two"').fetchall())
    assert one == two and len(set(one.values())) == 2


def test_restaging_replaces_only_that_sources_rejects(con):
    stage_source(con, _raw(con, "a", [("x", "x")]))
    stage_source(con, _raw(con, "b", [("y", "y"), ("z", "z")]))
    stage_source(con, _raw(con, "a", [("x", "x")]))
    counts = dict(con.execute("select source, count(*) from staged.rejects group by source").fetchall())
    assert counts == {"a": 1, "b": 2}


def test_malformed_raw_rows_are_quarantined_not_lost(con, tmp_path):
    from kalm_core.extract import load_file_source

    (tmp_path / "m.jsonl").write_bytes(b'{"query": "q", "pos": ["p"]}\nnot json\n\xff\xfe\n')
    src = Source(name="m", uri="m.jsonl")
    load_file_source(con, src, tmp_path)
    stats = stage_source(con, src)
    assert (stats.rows_in, stats.kept, stats.rejected) == (3, 1, 2)
    reasons = sorted(r for (r,) in con.execute("select reason from staged.rejects where source = 'm'").fetchall())
    assert all(r.startswith("malformed record") for r in reasons)
    raw = {r for (r,) in con.execute("select raw_record from staged.rejects where source = 'm'").fetchall()}
    assert "not json" in raw


@pytest.mark.parametrize("n", [0, 1, 50])
def test_accounting_holds_for_any_size(con, n):
    pairs = [(f"q{i % 7}", f"p{i % 5}") for i in range(n)]
    stats = stage_source(con, _raw(con, "acc", pairs))
    assert stats.balanced and stats.rows_in == n


def test_the_first_row_of_a_pair_is_kept_row_then_positive_order(con):
    """Duplicates resolve to the earliest (row_number, positive_index), within a record and across records; every
    Unicode space separator is trimmed, as DuckDB's trim does."""
    src = Source(name="d", kind="python-docs", packages=["x"])
    frame = pl.DataFrame({"ordinal": [1, 2, 3], "query": ["q", "\u00a0q\u3000", "r"],
                          "positives": [["b", "a"], ["a"], ["x", " x\u2003"]], "negatives": [[], [], []],
                          "record_id": [None] * 3},
                         schema={"ordinal": pl.Int64, "query": pl.Utf8, "positives": pl.List(pl.Utf8),
                                 "negatives": pl.List(pl.Utf8), "record_id": pl.Utf8})
    load_frame_source(con, src, frame)
    stats = stage_source(con, src)
    assert (stats.kept, stats.duplicates) == (3, 2) and stats.balanced
    kept = con.execute('select row_number, positive_index from staged."d" order by all').fetchall()
    assert kept == [(1, 1), (1, 2), (3, 1)]
    dups = con.execute("select row_number, positive_index from staged.rejects where status = 'duplicate' "
                       "order by all").fetchall()
    assert dups == [(2, 1), (3, 2)]


@pytest.mark.parametrize("text", [" a ", "\u00a0a", "a\u202f", "\u3000 a \u2000", "a b", "", " ", "\u00a0", "a\t"])
def test_kalm_clean_equals_nfc_of_duckdbs_trim(con, text):
    got, want = con.execute("select kalm_clean($t), nfc_normalize(trim(replace($t, chr(12288), ' ')))",
                            {"t": text}).fetchone()
    assert got == want


@pytest.mark.parametrize("text, cleaned", [
    ("什么是机器学习？", "什么是机器学习?"),  # a full-width question mark, as NFKC folds it
    ("ＧＰＴ－４　模型", "GPT-4 模型"),  # full-width letters, digits, hyphen and the ideographic space
    ("零\u200b宽\ufeff字符", "零宽字符"),  # zero-width characters carry nothing
    ("\u3000全角空格\u3000", "全角空格"),
    ("ｶﾀｶﾅ", "ｶﾀｶﾅ"),  # half-width katakana: outside the width folding kept here
])
def test_cjk_width_variants_clean_to_one_text(con, text, cleaned):
    assert con.execute("select kalm_clean($t)", {"t": text}).fetchone()[0] == cleaned


def test_cjk_variants_of_one_pair_dedup_as_one(con):
    src = _raw(con, "zh", [("什么是机器学习？", "机器学习是人工智能的一个分支。"),
                           ("什么是机器学习?", "机器学习是人工智能的一个分支。"),
                           ("什么是\u200b机器学习？", "机器学习是人工智能的一个分支。\u3000")], language="zh")
    stats = stage_source(con, src, model=ModelConfig())
    assert (stats.kept, stats.duplicates) == (1, 2) and stats.balanced
