"""Evaluation through mteb: real MTEB tasks by name or benchmark, local BEIR-format folders (the held-out split is
one), each task with the instruction mteb gives it (KaLM §4.1).

Each model is encoded once per (prompt, text); every Matryoshka dimension is then scored from the cached full
embeddings, truncated and re-normalised (KaLM §3.3, MRL). Prompts are the model's own sentence-transformers prompts,
resolved per task by mteb's `get_prompt` (`kalm_core.prompts` writes them into a trained model), so our scores are
mteb's: an untrained base has none and is scored bare; the trained model gets each task's KaLM instruction on its
queries and its training instruction on the held-out split's. Results go to rows of evaluation.mteb_results and, in
mteb's own result layout, to a `ResultCache` folder (`<trained model>/mteb`), where mteb's tooling reads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from kalm_core.config import ModelConfig

if TYPE_CHECKING:
    from kalm_core.model import Embedder

HELD_OUT_TASK = "KalmHeldOut"


class BeirFolderError(ValueError):
    """A BEIR-format folder that is missing a file or holds a malformed one."""


def write_beir(pairs: pl.DataFrame, folder: str | Path) -> Path:
    """(query, positive) pairs -> a BEIR-format folder: unique queries, unique positives as the corpus, one relevant
    document per pair, all in the `test` split."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    queries = list(dict.fromkeys(pairs["query"].to_list()))
    docs = list(dict.fromkeys(pairs["positive"].to_list()))
    qid = {q: f"q{i}" for i, q in enumerate(queries)}
    did = {d: f"d{i}" for i, d in enumerate(docs)}
    pl.DataFrame({"_id": list(qid.values()), "text": queries}).write_ndjson(folder / "queries.jsonl")
    pl.DataFrame({"_id": list(did.values()), "title": [""] * len(docs), "text": docs}).write_ndjson(
        folder / "corpus.jsonl")
    qrels = pl.DataFrame({"query-id": [qid[q] for q in pairs["query"]], "corpus-id": [did[d] for d in pairs["positive"]],
                          "score": [1] * pairs.height}).unique(maintain_order=True)
    qrels.write_csv(folder / "qrels" / "test.tsv", separator="\t")
    return folder


def beir_task(folder: str | Path, name: str | None = None, description: str = "A local BEIR-format folder."):
    """An mteb retrieval task over a BEIR-format folder: `corpus.jsonl` ({_id, title?, text}), `queries.jsonl`
    ({_id, text}) and `qrels/<split>.tsv` (query-id, corpus-id, score; one file per split). Reads nothing from the
    hub; the task is named after the folder unless `name` is given."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    folder = Path(folder)
    missing = [f for f in ("corpus.jsonl", "queries.jsonl") if not (folder / f).is_file()]
    splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
    if missing or not splits:
        raise BeirFolderError(f"{folder} is not a BEIR-format folder: missing "
                              f"{', '.join(missing + ([] if splits else ['qrels/<split>.tsv']))}")
    task_name = name or folder.name

    def read(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
        try:
            frame = pl.read_ndjson(path, infer_schema_length=None)
        except Exception as e:  # polars raises ComputeError/SchemaError on malformed lines
            raise BeirFolderError(f"{path}: not JSON lines ({str(e)[:200]})") from None
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise BeirFolderError(f"{path}: no field {', '.join(absent)} (has {', '.join(frame.columns)})")
        return frame.with_columns(pl.col("_id").cast(pl.Utf8))

    class BeirFolder(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=task_name, type="Retrieval", main_score="ndcg_at_10", category="t2t", modalities=["text"],
            description=description, reference=None, dataset={"path": str(folder), "revision": "local"},
            eval_splits=splits, eval_langs=["eng-Latn"], date=None, dialect=[], domains=None, task_subtypes=[],
            license="not specified", annotations_creators="derived", sample_creation="found", bibtex_citation="",
        )

        def load_data(self, num_proc=None, **kwargs) -> None:
            corpus = read(folder / "corpus.jsonl", ("_id", "text"))
            if "title" not in corpus.columns:
                corpus = corpus.with_columns(title=pl.lit(""))
            queries = read(folder / "queries.jsonl", ("_id", "text"))
            corpus_ds = Dataset.from_dict({"id": corpus["_id"].to_list(), "text": corpus["text"].to_list(),
                                           "title": corpus["title"].fill_null("").to_list()})
            self.dataset = {"default": {}}
            for split in splits:
                qrels = pl.read_csv(folder / "qrels" / f"{split}.tsv", separator="\t",
                                    schema_overrides={"query-id": pl.Utf8, "corpus-id": pl.Utf8})
                relevant: dict[str, dict[str, int]] = {}
                for q, d, score in qrels.select("query-id", "corpus-id", "score").iter_rows():
                    relevant.setdefault(q, {})[d] = int(score)
                split_queries = queries.filter(pl.col("_id").is_in(list(relevant)))
                self.dataset["default"][split] = RetrievalSplitData(
                    queries=Dataset.from_dict({"id": split_queries["_id"].to_list(),
                                               "text": split_queries["text"].to_list()}),
                    corpus=corpus_ds, relevant_docs=relevant, top_ranked=None)
            self.data_loaded = True

    return BeirFolder()


def heldout_task(pairs: pl.DataFrame, folder: str | Path, name: str = HELD_OUT_TASK):
    """The held-out split (marts.eval_pairs) written as a BEIR-format folder and loaded like any other."""
    return beir_task(write_beir(pairs, folder), name,
                     "Held-out split of the kalm warehouse (marts.eval_pairs): summary -> documentation.")


def model_prompts(model_path: str) -> dict[str, str]:
    """The sentence-transformers prompts saved with a model ({} for a model without any)."""
    config = Path(model_path) / "config_sentence_transformers.json"
    return dict(json.loads(config.read_text()).get("prompts") or {}) if config.is_file() else {}


def make_encoder(embedder: Embedder, name: str, prompts: dict[str, str], batch_size: int = 64):
    """An mteb encoder over our Embedder: the prompt of each (task, query/document) from `prompts` through mteb's
    own `get_prompt`; each (prompt, text) encoded once, then any dimension served from the cache."""
    from mteb.models.abs_encoder import AbsEncoder, get_prompt
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType

    from kalm_core.device import token_budget

    class KalmEncoder(AbsEncoder):
        def __init__(self):
            self.model = embedder
            self.model_prompts = prompts
            self.cache: dict[tuple[bool, str, str], np.ndarray] = {}
            self.set_dim(embedder.hidden_size)

        def set_dim(self, dim: int) -> None:
            self.dim = dim
            self.mteb_model_meta = ModelMeta.create_empty().model_copy(update={
                "name": f"kalm/{name}", "revision": "local", "similarity_fn_name": ScoringFunction.COSINE,
                "embed_dim": dim, "experiment_kwargs": {"dim": dim}})

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            is_query = prompt_type == PromptType.query
            prompt = get_prompt(prompts, task_metadata, prompt_type) or ""
            texts = [t for batch in inputs for t in batch["text"]]
            todo = list(dict.fromkeys(t for t in texts if (is_query, prompt, t) not in self.cache))
            if todo:
                out = embedder.encode([prompt + t for t in todo], is_query=is_query, batch_size=batch_size,
                                      max_tokens=token_budget(embedder.device))
                self.cache.update({(is_query, prompt, t): v for t, v in zip(todo, out)})
            full = np.stack([self.cache[(is_query, prompt, t)] for t in texts])
            cut = full[:, :self.dim]  # Matryoshka: the first `dim` coordinates, re-normalised
            return cut / np.linalg.norm(cut, axis=1, keepdims=True).clip(min=1e-12)

    return KalmEncoder()


@dataclass(frozen=True)
class Skipped:
    task_name: str
    reason: str


class UnknownTask(ValueError):
    """A name in EvalConfig.mteb_tasks that is neither an mteb task nor an mteb benchmark."""


def resolve_task_names(names: tuple[str, ...]) -> list[str]:
    """Task and benchmark names -> task names, in order, without repeats. A name mteb knows neither as a task nor as
    a benchmark raises UnknownTask with mteb's suggestion; nothing is loaded."""
    import mteb

    out: list[str] = []
    for name in names:
        try:
            out += [t.metadata.name for t in mteb.get_tasks(tasks=[name])]
            continue
        except KeyError as task_error:
            hint = str(task_error).strip("\"'")
        try:
            out += [t.metadata.name for t in mteb.get_benchmark(name).tasks]
        except KeyError:
            raise UnknownTask(f"eval.mteb_tasks: {name!r} is neither an MTEB task nor an MTEB benchmark ({hint})"
                              ) from None
    return list(dict.fromkeys(out))


def load_real_tasks(names: tuple[str, ...]) -> tuple[list, list[Skipped]]:
    """Real MTEB tasks by task or benchmark name (an unknown name raises UnknownTask). Their data comes from the hub:
    offline (HF_HUB_OFFLINE=1) or unreachable, each is reported as skipped with the reason instead of failing."""
    import mteb

    tasks, skipped = [], []
    for name in resolve_task_names(names):
        (task,) = mteb.get_tasks(tasks=[name])
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            skipped.append(Skipped(name, "HF_HUB_OFFLINE=1: its data lives on the Hugging Face hub"))
            continue
        try:
            task.load_data()
            tasks.append(task)
        except Exception as e:  # datasets/hub raise ConnectionError, OSError, LocalEntryNotFoundError...
            skipped.append(Skipped(name, f"data could not be loaded: {type(e).__name__}: {str(e)[:200]}"))
    return tasks, skipped


def evaluate_model(role: str, model_path: str, model_config: ModelConfig, dims: tuple[int, ...], tasks: list,
                   batch_size: int = 64, results_dir: str | Path | None = None) -> list[dict]:
    """Score one model on `tasks` at every dim with the prompts saved with it; rows of evaluation.mteb_results (every
    scalar metric mteb reports, `main_score` among them). With `results_dir`, mteb also writes its own result JSON
    there (a ResultCache: results/<model>/<revision>/<experiment dim=N>/<task>.json)."""
    import mteb

    from kalm_core.device import describe
    from kalm_core.model import Embedder  # torch and transformers: imported where a model runs

    embedder = Embedder.for_inference(model_config, model_path)  # the GPU in bf16 when there is one
    device = describe(embedder.device, next(embedder.model.parameters()).dtype)
    name = f"{role}-{os.path.basename(os.path.normpath(model_path)) or model_path}"
    encoder = make_encoder(embedder, name, model_prompts(model_path), batch_size)
    cache = mteb.ResultCache(results_dir) if results_dir else None
    types = {t.metadata.name: t.metadata.type for t in tasks}
    rows, now = [], datetime.now(timezone.utc).replace(tzinfo=None)
    for dim in sorted(dims, reverse=True):
        encoder.set_dim(dim)
        result = mteb.evaluate(encoder, tasks, cache=cache, show_progress_bar=False, overwrite_strategy="always")
        for tr in result.task_results:
            for split, entries in tr.scores.items():
                for entry in entries:
                    for metric, score in entry.items():
                        if isinstance(score, (int, float)) and not isinstance(score, bool):
                            rows.append({"role": role, "model_name": encoder.mteb_model_meta.name,
                                         "model_path": model_path, "task_name": tr.task_name,
                                         "task_type": types.get(tr.task_name), "split": split,
                                         "subset": entry.get("hf_subset", "default"), "dim": dim, "metric": metric,
                                         "score": float(score), "mteb_version": mteb.__version__, "device": device,
                                         "evaluated_at": now})
    return rows
