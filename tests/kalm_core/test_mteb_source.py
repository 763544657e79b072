"""`kind: mteb` sources: the task's hub dataset and revision come from the installed mteb; the split is read by
`datasets` from a local copy laid out as the hub serves it (mteb/banking77's README configs and data/ shards, a
BEIR-layout retrieval set), and offline a split missing from the Hugging Face cache fails with the command to fetch it."""

import polars as pl
import pytest

from kalm_core.catalog import Source
from kalm_core.extract import SourceError
from kalm_core.sources.mteb_source import load_mteb_source, task_data
from kalm_core.staging import stage_source
from tests.kalm_core.test_beir_source import write_folder

BANKING_README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
dataset_info:
  features:
  - name: text
    dtype: string
  - name: label
    dtype: int64
  - name: label_text
    dtype: string
---
Banking77Classification
"""


@pytest.fixture
def banking77(tmp_path):
    """mteb/banking77 as the hub holds it: README configs, data/<split>-*.parquet, int64 label plus label_text."""
    root = tmp_path / "banking77"
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text(BANKING_README)
    train = {"text": ["I am still waiting on my card?", "How do I link a card?", "My card has not arrived",
                      "Can I top up by cheque?"], "label": [11, 12, 11, 60],
             "label_text": ["card_arrival", "card_linking", "card_arrival", "top_up_by_cash_or_cheque"]}
    pl.DataFrame(train).write_parquet(root / "data" / "train-00000-of-00001.parquet")
    pl.DataFrame({k: v[:1] for k, v in train.items()}).write_parquet(root / "data" / "test-00000-of-00001.parquet")
    return root


def test_the_task_names_its_dataset_revision_type_and_instruction():
    data = task_data("Banking77Classification")
    assert (data.path, data.task_type, data.language) == ("mteb/banking77", "classification", "en")
    assert len(data.revision) == 40 and data.instruction == "Given an online banking query, find the corresponding intents"
    assert task_data("T2Retrieval").language == "zh"


def test_a_classification_task_from_a_local_copy_laid_out_like_the_hub(con, banking77):
    src = Source(name="banking77", kind="mteb", task="Banking77Classification", uri=str(banking77),
                 task_type="classification")
    stats = load_mteb_source(con, src, banking77.parent)
    df = con.sql('select query, positive, negatives from raw."banking77" order by row_number').pl()
    assert stats.records == 4  # the train split only
    assert df["positive"].to_list() == ["card_arrival", "card_linking", "card_arrival", "top_up_by_cash_or_cheque"]
    assert sorted(df["negatives"][0]) == ["card_linking", "top_up_by_cash_or_cheque"]
    assert stage_source(con, src).kept == 4


def test_a_retrieval_task_reads_the_beir_layout(con, tmp_path):
    folder = write_folder(tmp_path / "scifact", [{"_id": "d1", "title": "T", "text": "Evidence."}],
                          [{"_id": "q1", "text": "A claim."}], [("q1", "d1", 1)])
    src = Source(name="scifact", kind="mteb", task="SciFact", uri=str(folder), task_type="retrieval")
    load_mteb_source(con, src, tmp_path)
    assert con.sql('select query, positive from raw."scifact"').pl().rows() == [("A claim.", "T Evidence.")]


def test_a_task_type_the_catalogue_gets_wrong_is_refused(con, banking77):
    src = Source(name="b", kind="mteb", task="Banking77Classification", uri=str(banking77), task_type="clustering")
    with pytest.raises(SourceError, match="is a classification task, the catalogue says clustering"):
        load_mteb_source(con, src, banking77.parent)


def test_offline_a_split_missing_from_the_cache_names_the_dataset_and_how_to_fetch_it(con, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    src = Source(name="banking77", kind="mteb", task="Banking77Classification", task_type="classification")
    with pytest.raises(SourceError, match=r"mteb/banking77@0fd18e25 \(MTEB Banking77Classification\) is not in the "
                                          r"Hugging Face cache.*kalm fetch --task Banking77Classification"):
        load_mteb_source(con, src, tmp_path)


def test_an_mteb_source_needs_its_task():
    with pytest.raises(ValueError, match="needs 'task'"):
        Source(name="x", kind="mteb")
    with pytest.raises(ValueError, match="needs min_score"):
        Source(name="x", kind="mteb", task="STSBenchmark", task_type="sts")
