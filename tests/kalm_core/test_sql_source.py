"""Sources that need more than one file or have no header: MS MARCO's id triples through the shipped SQL model
(catalog/sql/msmarco_triples.sql) on files laid out as MS MARCO publishes them, and a headerless tsv."""

import shutil
from pathlib import Path

import pytest

from kalm_core.catalog import Source
from kalm_core.extract import SourceError, file_fingerprint, load_file_source
from kalm_core.sources.sql_source import load_sql_source
from kalm_core.staging import stage_source

SHIPPED = Path(__file__).resolve().parents[2] / "catalog" / "sql" / "msmarco_triples.sql"


@pytest.fixture
def msmarco(tmp_path):
    d = tmp_path / "msmarco"
    d.mkdir()
    (d / "collection.tsv").write_text("0\tThe presence of communication amid scientific minds.\n"
                                      "1\tThe Manhattan Project and its atomic bomb.\n"
                                      '2\tA passage with "quotes" and a, comma.\n'
                                      "3\tAn unrelated passage about tea.\n")
    (d / "queries.train.tsv").write_text("121352\tdefine extreme\n634306\twhat does chattel mean\n")
    (d / "qidpidtriples.train.full.2.tsv").write_text("121352\t0\t3\n121352\t0\t1\n634306\t2\t3\n999\t1\t3\n")
    shutil.copy(SHIPPED, tmp_path / "msmarco_triples.sql")
    files = {"collection": "msmarco/collection.tsv", "queries": "msmarco/queries.train.tsv",
             "triples": "msmarco/qidpidtriples.train.full.2.tsv"}
    return tmp_path, Source(name="msmarco", kind="sql", sql="msmarco_triples.sql", files=files)


def test_msmarco_id_triples_join_into_pairs_with_their_negatives(con, msmarco):
    base, src = msmarco
    stats = load_sql_source(con, src, base)
    rows = con.sql('select record_id, query, positive, negatives from raw."msmarco" order by row_number').pl()
    assert stats.records == stats.file_records == 3
    assert rows.rows()[:2] == [
        ("121352:0", "define extreme", "The presence of communication amid scientific minds.",
         ["An unrelated passage about tea.", "The Manhattan Project and its atomic bomb."]),
        ("634306:2", "what does chattel mean", 'A passage with "quotes" and a, comma.',
         ["An unrelated passage about tea."])]
    assert rows.row(2)[:2] == ("999:1", None)  # a query id missing from queries.train.tsv keeps its record
    staged = stage_source(con, src)
    assert staged.balanced and staged.kept == 2 and staged.reasons == {"empty query": 1}


def test_the_sql_and_every_input_file_are_the_source_version(msmarco):
    base, src = msmarco
    before = file_fingerprint(src, base)
    (base / "msmarco" / "queries.train.tsv").write_text("121352\tdefine extreme!\n")
    assert file_fingerprint(src, base) != before
    changed = file_fingerprint(src, base)
    (base / "msmarco_triples.sql").write_text((base / "msmarco_triples.sql").read_text() + "\n-- edited\n")
    assert file_fingerprint(src, base) != changed


def test_a_sql_source_must_be_one_select_over_files_that_exist(con, msmarco):
    base, src = msmarco
    (base / "two.sql").write_text("select 1 as query; select 2 as query")
    with pytest.raises(SourceError, match="must hold one SELECT statement"):
        load_sql_source(con, src.model_copy(update={"sql": "two.sql"}), base)
    with pytest.raises(SourceError, match=r"input file\(s\) not found: \{'queries'"):
        load_sql_source(con, src.model_copy(update={"files": {**src.files, "queries": "nope.tsv"}}), base)


def test_a_headerless_tsv_counts_every_line_as_a_record(con, tmp_path):
    (tmp_path / "pairs.tsv").write_text("what is tea\ta drink\nwhat is rain\twater that falls\n")
    src = Source(name="t", uri="pairs.tsv", header=False, column_names=["q", "p"],
                 columns={"query": "q", "positive": "p", "negatives": None})
    stats = load_file_source(con, src, tmp_path)
    assert stats.records == stats.file_records == 2  # the first line is a record, not a header
    assert con.sql('select query from raw."t" order by row_number').pl()["query"].to_list() == ["what is tea",
                                                                                              "what is rain"]


def test_header_false_needs_column_names():
    with pytest.raises(ValueError, match="needs its column_names"):
        Source(name="t", uri="pairs.tsv", header=False)
