"""The evaluation sets a profile names, as texts decontamination compares training with (kalm_core/evaluation_sets.py):
a BEIR folder's queries and relevant passages over every qrels split, an MTEB task's evaluation split from the
Hugging Face cache laid out as the hub serves it, and a task whose data is absent named with the fetch command."""

import shutil

import pytest

from kalm_core import evaluation_sets
from kalm_core.sources.mteb_source import task_data
from tests.kalm_core.test_beir_source import scifact  # noqa: F401 (a fixture)
from tests.kalm_core.test_mteb_source import banking77  # noqa: F401 (a fixture)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_beir_folder_gives_its_judged_queries_and_relevant_passages_over_every_split(con, scifact):  # noqa: F811
    (scifact / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n3\t7912\t2\n")  # a second split
    texts = evaluation_sets.beir_texts(con, scifact)
    assert sorted(texts.filter(texts["kind"] == "query")["text"]) == [
        "0-dimensional biomaterials show inductive properties.", "1,000 genomes project enables mapping.",
        "A query whose document is missing."]  # query 7 was judged only not relevant; query 8 has no text
    assert sorted(texts.filter(texts["kind"] == "relevant text")["text"]) == [
        "Dose response A study of doses.", "Induction of myelodysplasia.",
        "Integer ids Some corpora number their documents.",
        "Microstructural development Alterations of the architecture."]  # title and text, as mteb joins them


def test_an_mteb_task_in_the_cache_gives_its_evaluation_split_and_an_absent_one_is_named(con, banking77,  # noqa: F811
                                                                                        hub_cache, scifact):  # noqa: F811
    data = task_data("Banking77Classification")
    assert data.eval_splits == ("test",)
    shutil.copytree(banking77, hub_cache / f"datasets--{data.path.replace('/', '--')}" / "snapshots" / data.revision)
    texts, missing = evaluation_sets.read(con, (str(scifact),), ["Banking77Classification", "SciFact"])
    assert texts.filter(texts["source"] == "Banking77Classification").select("kind", "text").rows() == [
        ("query", "I am still waiting on my card?")]  # the test split's one text; no label name is a text
    assert set(texts["source"]) == {"scifact", "Banking77Classification"}
    assert list(missing) == ["SciFact"] and "kalm fetch --task SciFact" in missing["SciFact"]


def test_the_version_moves_with_a_folders_files_and_a_fetched_task(scifact, hub_cache, banking77):  # noqa: F811
    before = evaluation_sets.fingerprint((str(scifact),), ("Banking77Classification",))
    assert evaluation_sets.fingerprint((str(scifact),), ("Banking77Classification",)) == before
    (scifact / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t5836\t1\n")
    moved = evaluation_sets.fingerprint((str(scifact),), ("Banking77Classification",))
    assert moved != before
    data = task_data("Banking77Classification")
    shutil.copytree(banking77, hub_cache / f"datasets--{data.path.replace('/', '--')}" / "snapshots" / data.revision)
    assert evaluation_sets.fingerprint((str(scifact),), ("Banking77Classification",)) != moved
