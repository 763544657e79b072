"""`format: beir` sources (kalm_core/sources/beir.py) on folders laid out as BEIR and mteb publish them: corpus.jsonl
with _id/title/text (integer ids too), queries.jsonl, qrels/<split>.tsv with its header line."""

import json

import polars as pl
import pytest

from kalm_core.catalog import Source
from kalm_core.extract import SourceError
from kalm_core.sources.beir import load_beir_source
from kalm_core.staging import stage_source


def write_folder(root, corpus, queries, qrels, split="train"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                                 + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return root


@pytest.fixture
def scifact(tmp_path):
    corpus = [{"_id": "4983", "title": "Microstructural development", "text": "Alterations of the architecture."},
              {"_id": "5836", "title": "", "text": "Induction of myelodysplasia."},
              {"_id": "7912", "title": "Dose response", "text": "A study of doses."},
              {"_id": 9001, "title": "Integer ids", "text": "Some corpora number their documents."}]
    queries = [{"_id": "1", "text": "0-dimensional biomaterials show inductive properties."},
               {"_id": "3", "text": "1,000 genomes project enables mapping."},
               {"_id": "5", "text": "A query whose document is missing."},
               {"_id": "7", "text": "A query judged only not relevant."}]
    qrels = [("1", "4983", 1), ("1", "7912", 0), ("3", "5836", 1), ("3", "9001", 1), ("5", "404", 1),
             ("7", "7912", 0), ("8", "4983", 1)]
    return write_folder(tmp_path / "scifact", corpus, queries, qrels)


def test_a_beir_folder_joins_its_three_files_into_pairs(con, scifact):
    src = Source(name="scifact", uri="scifact", format="beir", split="train")
    stats = load_beir_source(con, src, scifact.parent)
    df = con.sql('select * from raw."scifact" order by row_number, positive_index').pl()
    assert stats.records == stats.file_records == 5 and stats.kept_out == 3
    pairs = df.filter(pl.col("kept_out").is_null())
    assert pairs.select("record_id", "query", "positive").rows() == [
        ("1", "0-dimensional biomaterials show inductive properties.",
         "Microstructural development Alterations of the architecture."),  # title + text, as mteb joins them
        ("3", "1,000 genomes project enables mapping.", "Induction of myelodysplasia."),  # no title
        ("3", "1,000 genomes project enables mapping.", "Integer ids Some corpora number their documents.")]  # int _id
    assert pairs["negatives"][0].to_list() == ["Dose response A study of doses."]  # judged not relevant
    out = df.filter(pl.col("kept_out").is_not_null())
    assert dict(zip(out["record_id"], out["kept_out"])) == {
        "5": "none of its relevant passages is in corpus.jsonl",
        "7": "no passage judged relevant (score > 0) in the qrels",
        "8": "query id 8 is not in queries.jsonl"}
    assert json.loads(out.filter(pl.col("record_id") == "5")["raw_record"][0])["corpus-ids"] == ["404"]
    staged = stage_source(con, src)
    assert staged.balanced and staged.kept == 3 and staged.rejected == 3


def test_a_missing_split_names_the_splits_there_are(con, scifact):
    with pytest.raises(SourceError, match=r"missing qrels/dev.tsv \(qrels splits there: train\)"):
        load_beir_source(con, Source(name="scifact", uri="scifact", format="beir", split="dev"), scifact.parent)


def test_the_evaluation_writer_and_the_source_reader_agree(con, tmp_path):
    """The held-out split goes out as a BEIR folder (kalm_core/evaluation.py) and comes back as the same pairs."""
    from kalm_core.evaluation import write_beir

    pairs = pl.DataFrame({"query": ["q1", "q2", "q2"], "positive": ["p1", "p2", "p3"]})
    folder = write_beir(pairs, tmp_path / "held")
    load_beir_source(con, Source(name="held", uri=str(folder), format="beir", split="test"), tmp_path)
    back = con.sql('select query, positive from raw."held" order by row_number, positive_index').pl()
    assert back.rows() == pairs.rows()


def test_a_chinese_beir_folder(con, tmp_path):
    """T2Retrieval's layout, Chinese text with full-width punctuation: the cleaned pair is what stages."""
    folder = write_folder(tmp_path / "t2", [{"_id": "d1", "title": "", "text": "机器学习是人工智能的一个分支。"}],
                          [{"_id": "q1", "text": "什么是机器学习？"}], [("q1", "d1", 2)])
    src = Source(name="t2", uri=str(folder), format="beir", split="train", language="zh")
    load_beir_source(con, src, tmp_path)
    stage_source(con, src)
    assert con.sql('select query, positive from staged."t2"').pl().rows() == [("什么是机器学习?",
                                                                               "机器学习是人工智能的一个分支。")]
