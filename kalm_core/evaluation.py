"""Evaluation through mteb: a held-out retrieval task built from marts.eval_pairs, plus real MTEB tasks.

Each model is encoded once; every Matryoshka dimension is then scored from the cached full embeddings, truncated
and re-normalised (KaLM §3.3, MRL). The base model is evaluated without an instruction, the trained model with the
instruction it was trained with: each the way it is meant to be used (an untrained base given an instruction scores
far lower: 0.659 -> 0.528 nDCG@10 on held-out docstrings in the project's reference measurements).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import polars as pl

from kalm_core.config import ModelConfig
from kalm_core.device import describe, token_budget
from kalm_core.model import Embedder

HELD_OUT_TASK = "KalmHeldOut"


def heldout_task(pairs: pl.DataFrame, name: str = HELD_OUT_TASK):
    """A custom mteb AbsTaskRetrieval over (query, positive) pairs: unique queries, unique positives as the
    corpus, one relevant document per pair. Reads nothing from the hub."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    queries = list(dict.fromkeys(pairs["query"].to_list()))
    docs = list(dict.fromkeys(pairs["positive"].to_list()))
    qid = {q: f"q{i}" for i, q in enumerate(queries)}
    did = {d: f"d{i}" for i, d in enumerate(docs)}
    qrels: dict[str, dict[str, int]] = {}
    for q, d in zip(pairs["query"].to_list(), pairs["positive"].to_list()):
        qrels.setdefault(qid[q], {})[did[d]] = 1

    class HeldOut(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=name, type="Retrieval", main_score="ndcg_at_10", category="t2t", modalities=["text"],
            description="Held-out split of the kalm warehouse (marts.eval_pairs): summary -> documentation.",
            reference="https://arxiv.org/abs/2501.01028", dataset={"path": "kalm/marts.eval_pairs", "revision": "local"},
            eval_splits=["test"], eval_langs=["eng-Latn"], date=("2025-01-01", "2026-12-31"), dialect=[],
            domains=["Programming"], task_subtypes=[], license="not specified", annotations_creators="derived",
            sample_creation="found", bibtex_citation="",
        )

        def load_data(self, num_proc=None, **kwargs) -> None:
            self.dataset = {"default": {"test": RetrievalSplitData(
                queries=Dataset.from_list([{"id": qid[q], "text": q} for q in queries]),
                corpus=Dataset.from_list([{"id": did[d], "text": d, "title": ""} for d in docs]),
                relevant_docs=qrels, top_ranked=None)}}
            self.data_loaded = True

    return HeldOut()


def make_encoder(embedder: Embedder, name: str, instruction: str | None, batch_size: int = 64):
    """An mteb encoder over our Embedder: encodes each text once, then serves any dimension from the cache."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType

    class KalmEncoder(AbsEncoder):
        def __init__(self):
            self.model = embedder
            self.dim = embedder.hidden_size
            self.cache: dict[tuple[bool, str], np.ndarray] = {}
            self.mteb_model_meta = ModelMeta.create_empty().model_copy(
                update={"name": f"kalm/{name}", "revision": "local", "similarity_fn_name": ScoringFunction.COSINE})

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            is_query = prompt_type == PromptType.query
            texts = [t for batch in inputs for t in batch["text"]]
            todo = list(dict.fromkeys(t for t in texts if (is_query, t) not in self.cache))
            if todo:
                out = embedder.encode(todo, is_query=is_query, instruction=instruction if is_query else None,
                                      max_tokens=token_budget(embedder.device),
                                      batch_size=batch_size)
                self.cache.update({(is_query, t): v for t, v in zip(todo, out)})
            full = np.stack([self.cache[(is_query, t)] for t in texts])
            cut = full[:, :self.dim]  # Matryoshka: the first `dim` coordinates, re-normalised
            return cut / np.linalg.norm(cut, axis=1, keepdims=True).clip(min=1e-12)

    return KalmEncoder()


@dataclass(frozen=True)
class Skipped:
    task_name: str
    reason: str


def load_real_tasks(names: tuple[str, ...]) -> tuple[list, list[Skipped]]:
    """Real MTEB tasks by name. Their data comes from the hub: offline (HF_HUB_OFFLINE=1) or unreachable, each is
    reported as skipped with the reason instead of failing the evaluation."""
    import mteb

    tasks, skipped = [], []
    for name in names:
        try:
            (task,) = mteb.get_tasks(tasks=[name])
        except Exception as e:  # an unknown name: mteb raises KeyError or ValueError depending on version
            skipped.append(Skipped(name, f"unknown MTEB task: {e}"))
            continue
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
                   instruction: str | None, batch_size: int = 64) -> list[dict]:
    """Score one model on `tasks` at every dim; rows of evaluation.mteb_results."""
    import mteb

    embedder = Embedder.for_inference(model_config, model_path)  # the GPU in bf16 when there is one
    device = describe(embedder.device, next(embedder.model.parameters()).dtype)
    name = os.path.basename(os.path.normpath(model_path)) or model_path
    encoder = make_encoder(embedder, f"{role}-{name}", instruction, batch_size)
    rows, now = [], datetime.now(timezone.utc).replace(tzinfo=None)
    for dim in sorted(dims, reverse=True):
        encoder.dim = dim
        result = mteb.evaluate(encoder, tasks, cache=None, show_progress_bar=False, overwrite_strategy="always")
        for tr in result.task_results:
            for split, entries in tr.scores.items():
                for entry in entries:
                    for metric in ("ndcg_at_10", "recall_at_10", "map_at_10", "mrr_at_10", "main_score"):
                        if metric in entry:
                            rows.append({"role": role, "model_name": encoder.mteb_model_meta.name,
                                         "model_path": model_path, "task_name": tr.task_name, "split": split,
                                         "dim": dim, "metric": metric, "score": float(entry[metric]),
                                         "mteb_version": mteb.__version__, "device": device,
                                         "evaluated_at": now})
    return rows
