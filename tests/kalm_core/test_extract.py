import polars as pl
import pytest

from kalm_core.catalog import Source
from kalm_core.extract import SourceError, load_file_source
from tests.conftest import PAIRS_A, write_jsonl


def rows(con, name):
    return con.sql(f'select * from raw."{name}" order by row_number, positive_index').pl()


def test_flagembedding_jsonl_loads_without_a_mapping(con, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", PAIRS_A + [{"query": "q", "pos": ["p1", "p2"], "neg": ["n"]}])
    stats = load_file_source(con, Source(name="a", uri="a.jsonl"), tmp_path)
    df = rows(con, "a")
    assert stats.records == len(PAIRS_A) + 1 and stats.rows == len(PAIRS_A) + 2  # one row per positive
    last = df.filter(pl.col("row_number") == len(PAIRS_A) + 1)
    assert last["positive"].to_list() == ["p1", "p2"] and last["positive_index"].to_list() == [1, 2]
    assert df["negatives"][0].to_list() == ["use reversed()"]
    assert set(df.columns) >= {"source", "row_number", "content_hash", "loaded_at", "load_error"}
    assert df["source"].unique().to_list() == ["a"]


def test_csv_with_negatives_spread_over_columns(con, tmp_path):
    (tmp_path / "c.csv").write_text("q,p,n1,n2\nwhat,answer,bad1,bad2\nwho,someone,,bad3\n")
    src = Source(name="c", uri="c.csv", columns={"query": "q", "positive": "p", "negatives": ["n1", "n2"]})
    load_file_source(con, src, tmp_path)
    assert rows(con, "c")["negatives"].to_list() == [["bad1", "bad2"], ["bad3"]]


def test_parquet_with_scalar_columns_and_max_rows(con, tmp_path):
    pl.DataFrame({"a": ["q1", "q2", "q3"], "b": ["p1", "p2", "p3"], "id": [7, 8, 9]}).write_parquet(tmp_path / "p.parquet")
    src = Source(name="p", uri="p.parquet", max_rows=2, columns={"query": "a", "positive": "b", "negatives": None, "id": "id"})
    stats = load_file_source(con, src, tmp_path)
    df = rows(con, "p")
    assert stats.rows == 2 and set(df["record_id"]) <= {"7", "8", "9"} and df["negatives"].to_list() == [[], []]
    load_file_source(con, src, tmp_path)
    assert rows(con, "p")["record_id"].to_list() == df["record_id"].to_list()  # the same sample each time


def test_max_rows_samples_every_shard_not_the_first_records(con, tmp_path):
    """#23: `max_rows: 500` over three 400-row shards took 400 + 100 + 0; a cap is a sample of all of them."""
    (tmp_path / "shards").mkdir()
    for k in range(3):
        pl.DataFrame({"query": [f"q{k}-{i}" for i in range(400)], "positive": [f"p{k}-{i}" for i in range(400)]}
                     ).write_parquet(tmp_path / "shards" / f"part-{k}.parquet")
    src = Source(name="s", uri="shards/*.parquet", max_rows=500, columns={"negatives": None})
    assert load_file_source(con, src, tmp_path).rows == 500
    per_shard = rows(con, "s")["query"].str.slice(1, 1).value_counts()["count"].to_list()
    assert len(per_shard) == 3 and all(120 <= n <= 220 for n in per_shard)


def test_missing_file_names_the_source_and_the_uri(con, tmp_path):
    with pytest.raises(SourceError, match=r"'ghost'.*nothere\.jsonl"):
        load_file_source(con, Source(name="ghost", uri="nothere.jsonl"), tmp_path)


def test_missing_columns_lists_expected_and_available(con, tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(SourceError, match=r"missing mapped column.*query.*available columns: \['answer', 'question'\]"):
        load_file_source(con, Source(name="x", uri="x.jsonl"), tmp_path)
    with pytest.raises(SourceError, match=r"\['nope'\]"):
        load_file_source(con, Source(name="x", uri="x.jsonl", columns={"query": "question", "positive": "nope"}),
                         tmp_path)


def test_malformed_and_non_utf8_lines_are_kept_with_a_reason(con, tmp_path):
    good = b'{"query": "q1", "pos": ["p1"]}\n'
    (tmp_path / "bad.jsonl").write_bytes(good + b'{"query": "caf\xe9", "pos": ["x"]}\n' + b"{not json\n"
                                         + b'{"query": "q4", "pos": "p4"}\n')
    stats = load_file_source(con, Source(name="bad", uri="bad.jsonl"), tmp_path)
    df = rows(con, "bad")
    assert stats.records == 4 and stats.malformed == 2
    assert df["row_number"].to_list() == [1, 2, 3, 4]  # true line numbers, the bad lines in place
    errors = df["load_error"].to_list()
    assert errors[0] is None and errors[3] is None
    assert "ENCODING" in errors[1].upper() and errors[2] == "malformed json"
    assert df["raw_record"][2] == "{not json" and df["positive"][3] == "p4"


GOOD = b'{"query": "how to sort", "pos": ["use sorted"]}\n'
BAD_RECORDS = {
    # name: (the odd record's bytes, the reason its raw row carries)
    "over_long": (b'{"query": "big", "pos": ["' + b"x" * 2000 + b'"]}\n', "record over 1000 bytes"),
    "stray_cr": (b'{"query": "a", "pos": ["b"]}\r{"query": "c", "pos": ["d"]}\n', "stray CR inside the record"),
    "nul": (b'{"query": "a\x00", "pos": ["b"]}\n', "NUL byte in record"),
    "truncated_last": (b'{"query": "cut", "pos": ["of', "malformed json"),
    "list_query": (b'{"query": ["mn 21"], "pos": ["b"]}\n', "query is not text (ARRAY)"),
    "object_positive": (b'{"query": "a", "pos": [{"text": "b"}]}\n', "positive is not text"),
    "number_positive": (b'{"query": "a", "pos": 7}\n', "positive is not text (UBIGINT)"),
    "invalid_utf8": (b'{"query": "caf\xe9", "pos": ["b"]}\n', "Invalid unicode"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_each_odd_record_is_one_quarantined_row_and_the_rest_loads(con, tmp_path, monkeypatch, case):
    from kalm_core import records

    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 1000)
    odd, reason = BAD_RECORDS[case]
    body = GOOD + odd + (GOOD if odd.endswith(b"\n") else b"")
    (tmp_path / "f.jsonl").write_bytes(body)
    stats = load_file_source(con, Source(name="f", uri="f.jsonl"), tmp_path)
    df = rows(con, "f")
    n_lines = 3 if odd.endswith(b"\n") else 2
    assert stats.file_records == n_lines == stats.records == df["row_number"].n_unique()  # nothing lost
    bad = df.filter(pl.col("load_error").is_not_null())
    assert bad["row_number"].to_list() == [2] and reason in bad["load_error"][0], bad["load_error"][0]
    assert bad["raw_record"][0]  # the original text (or its start) is kept
    good = df.filter(pl.col("load_error").is_null())
    assert good["query"].to_list() == ["how to sort"] * (n_lines - 1) and good["row_number"].to_list() == \
        [1, 3][: n_lines - 1]


def test_crlf_lines_load_like_lf_lines(con, tmp_path):
    (tmp_path / "w.jsonl").write_bytes(GOOD.replace(b"\n", b"\r\n") * 2 + GOOD)
    stats = load_file_source(con, Source(name="w", uri="w.jsonl"), tmp_path)
    df = rows(con, "w")
    assert stats.file_records == 3 and df["load_error"].null_count() == 3 and df["query"].to_list() == ["how to sort"] * 3


def test_a_typed_list_query_column_is_a_load_error_per_row(con, tmp_path):
    pl.DataFrame({"query": [["a"], ["b"]], "pos": ["x", "y"]}).write_parquet(tmp_path / "l.parquet")
    load_file_source(con, Source(name="l", uri="l.parquet"), tmp_path)
    df = rows(con, "l")
    assert df["load_error"].to_list() == ["query is not text (VARCHAR[])"] * 2 and df["query"].null_count() == 2


def test_an_empty_file_is_a_clear_error(con, tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    with pytest.raises(SourceError, match="holds no records"):
        load_file_source(con, Source(name="e", uri="e.jsonl"), tmp_path)


CLEAN_FILES = {
    # lists of text, nulls, empty lists, an id, unmapped members, non-ASCII text
    "lists": [{"query": " naïve query ", "pos": ["p1", None, "p2"], "neg": ["n1", None], "id": "a", "meta": {"k": 1}},
              {"query": None, "pos": None, "neg": None, "id": "b"},
              {"query": "q3", "pos": [], "neg": [], "id": "c", "meta": [1, 2]},
              {"query": "q4", "pos": ["p4"], "id": "d"}],
    # scalar text members and a numeric id
    "scalars": [{"query": "q1", "pos": "p1", "neg": "n1", "id": 1}, {"query": "q2", "pos": None, "id": 2},
                {"query": "デ", "pos": "ベ", "neg": None, "id": 3}],
}


@pytest.mark.parametrize("case", sorted(CLEAN_FILES))
def test_the_typed_fast_path_writes_what_the_line_path_writes(con, tmp_path, monkeypatch, case):
    """A clean jsonl file loads through DuckDB's typed JSON reader; the rows equal the line path's, row for row."""
    from kalm_core.sources import jsonl

    write_jsonl(tmp_path / "f.jsonl", CLEAN_FILES[case])
    src = Source(name="fast", uri="f.jsonl", columns={"query": "query", "positive": "pos", "negatives": "neg",
                                                      "id": "id"})
    taken = []
    fast = jsonl.load_clean_jsonl
    monkeypatch.setattr(jsonl, "load_clean_jsonl", lambda *a: taken.append(fast(*a)) or taken[-1])
    fast_stats = load_file_source(con, src, tmp_path)
    assert taken[0] is not None  # the fast path loaded it
    monkeypatch.setattr(jsonl, "load_clean_jsonl", lambda *a: None)
    line_stats = load_file_source(con, src.model_copy(update={"name": "line"}), tmp_path)
    assert fast_stats == line_stats and fast_stats.records == len(CLEAN_FILES[case])
    cols = "row_number, positive_index, record_id, query, positive, negatives, load_error, raw_record, content_hash"
    fast_rows = con.execute(f"select {cols} from raw.fast order by all").fetchall()
    assert fast_rows == con.execute(f"select {cols} from raw.line order by all").fetchall()
    assert len(fast_rows) == fast_stats.rows


@pytest.mark.parametrize("body, malformed", [
    (GOOD + b"\n" + GOOD, 1), (GOOD + b'{"query": ["l"], "pos": ["b"]}\n', 1), (GOOD + b"[1]\n", 1),
    (GOOD + b'{"query": "a", "query": "b", "pos": ["c"]}\n', 0),  # the line path reads a duplicate key
])
def test_an_odd_line_sends_the_file_to_the_line_path(con, tmp_path, body, malformed):
    from kalm_core.sources import jsonl

    (tmp_path / "o.jsonl").write_bytes(body)
    assert jsonl.load_clean_jsonl(con, Source(name="o", uri="o.jsonl"), str(tmp_path / "o.jsonl")) is None
    assert not con.execute("select count(*) from information_schema.tables where table_name = 'o'").fetchall()[0][0]
    stats = load_file_source(con, Source(name="o", uri="o.jsonl"), tmp_path)
    assert stats.records == stats.file_records == body.count(b"\n") and stats.malformed == malformed  # kept, with its reason


def test_a_null_list_in_a_parquet_row_keeps_the_row(con, tmp_path):
    pl.DataFrame({"query": ["a", "b"], "pos": [["x"], None], "neg": [None, ["n"]]}).write_parquet(tmp_path / "n.parquet")
    stats = load_file_source(con, Source(name="n", uri="n.parquet"), tmp_path)
    df = rows(con, "n")
    assert stats.records == 2 and df["row_number"].to_list() == [1, 2] and df["positive"].to_list() == ["x", None]
    assert df["negatives"].to_list() == [[], ["n"]]


def test_file_facts_count_records_bytes_and_the_last_change(tmp_path):
    from kalm_core.extract import file_facts

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text("q,p\nx,y\nz,w\n")
    (tmp_path / "d" / "b.csv").write_text("q,p\nu,v\n")
    facts = file_facts(Source(name="c", uri="d/*.csv", columns={"query": "q", "positive": "p"}), tmp_path)
    assert facts["files"] == 2 and facts["records"] == 3 and facts["size_bytes"] == 20  # a header line per file
    headerless = Source(name="h", uri="d/*.csv", header=False, column_names=["q", "p"],
                        columns={"query": "q", "positive": "p"})
    assert file_facts(headerless, tmp_path)["records"] == 5
    pl.DataFrame({"q": ["a", "b", "c"]}).write_parquet(tmp_path / "r.parquet")
    assert file_facts(Source(name="r", uri="r.parquet"), tmp_path)["records"] == 3
    assert file_facts(Source(name="m", uri="none/*.jsonl"), tmp_path)["last_modified"] == "no file matches"
    assert file_facts(Source(name="w", uri="https://example.org/x.jsonl"), tmp_path) == {
        "location": "https://example.org/x.jsonl"}
