"""Evaluation the way mteb runs it: task and benchmark names, BEIR folders, per-task prompts, mteb's own scores."""

import json

import polars as pl
import pytest
from sentence_transformers import SentenceTransformer

from kalm_core.config import BUNDLED_MINILM, ModelConfig, resolve_model_path
from kalm_core.evaluation import (BeirFolderError, UnknownTask, beir_task, evaluate_model, model_prompts,
                                  resolve_task_names, write_beir)
from kalm_core.model import Embedder
from kalm_core.prompts import eval_task_prompts

DOCS = {
    "sort": "sorted(iterable) returns a new list with the items in ascending order",
    "open": "open(path) opens a file and returns a file object for reading or writing",
    "json": "json.loads parses a JSON string into Python dicts and lists",
    "zip": "zip pairs up items from several iterables into tuples",
    "sum": "sum adds up the numbers of an iterable",
    "path": "pathlib.Path joins, splits and inspects file system paths",
    "time": "time.sleep pauses the program for a number of seconds",
    "re": "re.search finds the first match of a regular expression in a string",
}
QUERIES = {"sort": "order a list", "open": "read a text file", "json": "decode json text", "sum": "add numbers",
           "path": "build a file path", "re": "find a pattern in text"}


@pytest.fixture(scope="module")
def minilm_with_prompts(tmp_path_factory):
    """The bundled MiniLM saved our way, with a training instruction and per-task prompts."""
    path = tmp_path_factory.mktemp("model") / "model"
    emb = Embedder.from_pretrained(ModelConfig(query_max_len=64, passage_max_len=128))
    prompts = eval_task_prompts(("SciFact", "STSBenchmark", "Banking77Classification"))
    emb.save(path, query_instruction="Retrieve the documentation of a Python function", task_prompts=prompts)
    return path


def _beir(folder):
    (folder / "qrels").mkdir(parents=True)
    pl.DataFrame({"_id": list(DOCS), "title": [""] * len(DOCS), "text": list(DOCS.values())}).write_ndjson(
        folder / "corpus.jsonl")
    pl.DataFrame({"_id": [f"q-{k}" for k in QUERIES], "text": list(QUERIES.values())}).write_ndjson(
        folder / "queries.jsonl")
    pl.DataFrame({"query-id": [f"q-{k}" for k in QUERIES], "corpus-id": list(QUERIES), "score": [1] * len(QUERIES)}
                 ).write_csv(folder / "qrels" / "test.tsv", separator="\t")
    return folder


def test_task_and_benchmark_names_resolve_and_an_unknown_name_is_an_error():
    names = resolve_task_names(("SciFact", "NanoBEIR", "SciFact"))
    assert names[0] == "SciFact" and names.count("SciFact") == 1 and "NanoArguAnaRetrieval" in names
    with pytest.raises(UnknownTask, match="'SciFactt' is neither.*Did you mean: 'SciFact'"):
        resolve_task_names(("SciFactt",))


def test_a_saved_model_carries_each_tasks_kalm_prompt(minilm_with_prompts):
    from mteb import get_task
    from mteb.models.abs_encoder import get_prompt
    from mteb.types import PromptType

    prompts = SentenceTransformer(str(minilm_with_prompts), device="cpu").prompts
    assert prompts == model_prompts(str(minilm_with_prompts))
    scifact, sts, banking = (get_task(n).metadata for n in ("SciFact", "STSBenchmark", "Banking77Classification"))
    assert get_prompt(prompts, scifact, PromptType.query) == (
        "Instruct: Given a scientific claim, retrieve documents that support or refute the claim \n Query: ")
    assert not get_prompt(prompts, scifact, PromptType.document)  # documents get no instruction
    assert get_prompt(prompts, sts, None) == ""  # KaLM gives STS none
    assert get_prompt(prompts, banking, None).startswith("Instruct: Given an online banking query")  # KaLM's own
    assert prompts["query"] == "Instruct: Retrieve the documentation of a Python function \n Query: "


def test_a_beir_folder_scores_what_mteb_itself_scores(tmp_path, minilm_with_prompts):
    import mteb

    folder = _beir(tmp_path / "TinyDocs")
    mcfg = ModelConfig(query_max_len=64, passage_max_len=128)
    rows = pl.DataFrame(evaluate_model("trained", str(minilm_with_prompts), mcfg, (384, 128), [beir_task(folder)],
                                       results_dir=tmp_path / "results"))
    ours = rows.filter((pl.col("dim") == 384) & (pl.col("metric") == "ndcg_at_10"))["score"].item()
    # mteb's own run: SentenceTransformer(path) with the prompts saved in it, no code of ours in the encoding
    theirs = mteb.evaluate(SentenceTransformer(str(minilm_with_prompts), device="cpu"), beir_task(folder), cache=None,
                           show_progress_bar=False).task_results[0].scores["test"][0]
    assert abs(ours - theirs["ndcg_at_10"]) <= 1e-6 and 0 < ours <= 1
    # and the same vectors: the training instruction ("query" prompt) on queries, nothing on documents
    from mteb.types import PromptType

    from kalm_core.evaluation import make_encoder

    enc = make_encoder(Embedder.from_pretrained(mcfg, str(minilm_with_prompts)), "x", model_prompts(str(minilm_with_prompts)))
    st = SentenceTransformer(str(minilm_with_prompts), device="cpu")
    meta = beir_task(folder).metadata
    for kind, st_kwargs in ((PromptType.query, {"prompt_name": "query"}), (PromptType.document, {})):
        got = enc.encode([{"text": ["order a list"]}], task_metadata=meta, hf_split="test", hf_subset="default",
                         prompt_type=kind)
        assert abs(got - st.encode(["order a list"], **st_kwargs)).max() < 1e-5
    assert abs(enc.cache[(True, st.prompts["query"], "order a list")] - st.encode(["order a list"])).max() > 1e-3
    main = rows.filter(pl.col("metric") == "main_score")
    assert set(main["task_type"]) == {"Retrieval"} and sorted(main["dim"]) == [128, 384]
    # mteb's result JSON, one experiment per dim, as its tooling reads it
    written = sorted((tmp_path / "results").rglob("TinyDocs.json"))
    assert len(written) == 2
    scores = {json.loads(p.read_text())["scores"]["test"][0]["ndcg_at_10"] for p in written}
    assert any(abs(s - ours) <= 1e-9 for s in scores)


def test_the_held_out_pairs_become_a_beir_folder_and_a_broken_folder_is_named(tmp_path):
    pairs = pl.DataFrame({"query": ["a", "b", "a"], "positive": ["x", "y", "z"]})
    task = beir_task(write_beir(pairs, tmp_path / "held"), "Held")
    task.load_data()
    split = task.dataset["default"]["test"]
    assert split["queries"].num_rows == 2 and split["corpus"].num_rows == 3
    assert {q: sorted(d) for q, d in split["relevant_docs"].items()} == {"q0": ["d0", "d2"], "q1": ["d1"]}
    (tmp_path / "held" / "qrels" / "test.tsv").unlink()
    with pytest.raises(BeirFolderError, match="missing qrels/<split>.tsv"):
        beir_task(tmp_path / "held")
    assert resolve_model_path(BUNDLED_MINILM)  # the bundled model the other tests use is there
