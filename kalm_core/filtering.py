"""filtered/<source>: one source's pass of ranking-consistency filtering and hard-negative mining.

Encode the source's queries and corpus (through the embedding cache), rank each positive
(kalm_core.ranking_consistency), keep or drop the pair, and mine its negatives (kalm_core.mining).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from kalm_core.config import FilterConfig, ModelConfig
from kalm_core.embedding_cache import EmbeddingCache
from kalm_core.mining import mine_negatives
from kalm_core.prompts import instructed_query
from kalm_core.warehouse import columns
from kalm_core.ranking_consistency import Ranked, Window, keep_decision, rank_positives

if TYPE_CHECKING:
    from kalm_core.model import Embedder


@dataclass
class CachedEncoder:
    """An Embedder behind the embedding cache; counts what it truly encoded and what it truncated. `model` may be a
    loader, called on the first text the cache misses: a rebuild whose texts are all cached never loads a model."""

    model: Embedder | Callable[[], Embedder]
    cache: EmbeddingCache
    batch_size: int = 64
    show_progress: bool = False
    encoded: int = 0
    truncated: int = 0

    @classmethod
    def load(cls, model_path: str, embedder_config, cache_root: str | Path, **kw) -> "CachedEncoder":
        """On the GPU in bf16/fp16 with token-budget batches when there is one (kalm_core/device.py)."""

        def model() -> Embedder:  # torch and transformers: imported when a text misses the cache
            from kalm_core.model import Embedder

            return Embedder.for_inference(embedder_config, model_path)

        return cls(model, EmbeddingCache(cache_root, model_path, embedder_config), **kw)

    @property
    def embedder(self) -> Embedder:
        if not hasattr(self.model, "encode"):  # the loader, not called yet
            self.model = self.model()
        return self.model

    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        from kalm_core.device import token_budget

        out, truncated = self.embedder.encode(texts, is_query=is_query, batch_size=self.batch_size,
                                              show_progress=self.show_progress,
                                              max_tokens=token_budget(self.embedder.device), return_truncated=True)
        self.truncated += truncated
        return out

    def queries(self, texts: list[str]) -> np.ndarray:
        out, n = self.cache.encode(texts, "query", lambda t: self._encode(t, True))
        self.encoded += n
        return out

    def passages(self, texts: list[str]) -> np.ndarray:
        out, n = self.cache.encode(texts, "passage", lambda t: self._encode(t, False))
        self.encoded += n
        return out


PAIR_CHUNK = 50_000  # pairs ranked and mined at once: bounds the candidates' arrays and Python objects


@dataclass
class FilterStats:
    pairs: int
    kept: int
    corpus_size: int
    window: Window
    median_pos_rank: float | None
    filled_rows: int
    margin_dropped: int

    @property
    def dropped(self) -> int:
        return self.pairs - self.kept


def filter_source(pairs: pl.DataFrame, encoder: CachedEncoder, cfg: FilterConfig,
                  pool: pl.Series | list[str] | None = None, template: str = ModelConfig.query_template,
                  instructed: bool = False, *, n_negatives: int) -> tuple[pl.DataFrame, FilterStats]:
    """pairs: staged rows (pair_id, query, positive, negatives, task_type, instruction, ...) -> the same rows with
    pos_rank, pos_score, kept, reason, the final negatives and mining counts, as one frame (filter_results over
    the frame, which the filtered asset runs over the lake and streams to disk)."""
    con = duckdb.connect()
    con.register("pairs", pairs.with_row_index("row").to_arrow())
    parts: list[pl.DataFrame] = []
    stats = filter_results(con, "pairs", encoder, cfg, parts.append, pool, template, instructed,
                           n_negatives=n_negatives, carry=("row",))
    results = pl.concat(parts).sort("row").drop("row")
    return pairs.drop("negatives").hstack(results), stats


def filter_results(con, pairs: str, encoder: CachedEncoder, cfg: FilterConfig,
                   sink: Callable[[pl.DataFrame], None], pool: pl.Series | list[str] | None = None,
                   template: str = ModelConfig.query_template, instructed: bool = False, *,
                   n_negatives: int, carry: tuple[str, ...] = ()) -> FilterStats:
    """Rank every pair's positive against the source's corpus, keep or drop it, mine its negatives. `pairs`: a
    relation of `con` (pair_id, query, positive, negatives, task_type, instruction and the `carry` columns);
    `sink` gets the results PAIR_CHUNK rows at a time, in no set order: the `carry` columns (keys, or whole rows),
    negatives, pos_rank, pos_score, kept, reason and the mining counts. With `instructed`, each query is ranked as
    the trainer will see it: with its instruction in the template, by the one instruction policy
    (kalm_core.prompts); that wants a filter model trained with instructions. `n_negatives`: what a training group
    holds (Profile.n_negatives = train.group_size - 1), never set apart from it.

    Streams (#23 item 6): DuckDB hands the rows over a chunk at a time, three times: for the corpus (each text
    once, sorted, so a text's id is the same whatever order rows come in), for each query's positives, then to rank
    and mine. Python holds the corpus texts, their embedding matrix and one chunk. Ranks are exact and mining is
    seeded per pair, so neither the chunks nor the order change a row."""
    scan = lambda columns: con.execute(f"select {columns} from {pairs}").to_arrow_reader(PAIR_CHUNK)  # noqa: E731
    texts = [pl.Series(pool if pool is not None else [], dtype=pl.Utf8).drop_nulls().unique()]
    for batch in scan("positive, negatives"):  # 1. the corpus: each text once, sorted, so ids do not depend on order
        chunk = pl.from_arrow(batch)
        texts.append(pl.concat([chunk["positive"], chunk["negatives"].cast(pl.List(pl.Utf8)).explode()])
                     .drop_nulls().unique())
    corpus = _distinct(texts).sort().alias("text")  # sorting a string view series moves views, not texts
    window = Window.for_corpus(len(corpus), cfg)
    c_emb = encoder.passages(corpus) if cfg.enabled else None  # (C, D)
    # 2. each query's positives, which never count as its competitors, keyed by the query's 64-bit hash: the
    # queries' texts held again cost 0.36 GB at a million pairs (two queries sharing a hash would share exclusions)
    qkey = lambda texts: texts.hash(seed=0).alias("qkey")  # noqa: E731
    positives_of = [pl.DataFrame([qkey(f["query"]), pl.Series("pos_id", _find(f["positive"], corpus))])
                    for f in map(pl.from_arrow, scan("query, positive"))]
    positives_of = (pl.concat(positives_of) if positives_of else pl.DataFrame(
        schema={"qkey": pl.UInt64, "pos_id": pl.Int64})).group_by("qkey").agg(query_positives=pl.col("pos_id").unique())
    optional = [c if c in columns(con, pairs) else f"null::varchar as {c}" for c in ("task_type", "instruction")]
    rows = scan(", ".join(dict.fromkeys([*carry, "pair_id", "query", "positive", "negatives", *optional])))
    ranks, height, kept_n, filled, margin_dropped = [], 0, 0, 0, 0
    for batch in _batches(rows):  # 3. a chunk at a time: rank, keep or drop, mine
        chunk = pl.from_arrow(batch)
        chunk = chunk.with_columns(qkey(chunk["query"])).join(positives_of, on="qkey", how="left",
                                                               maintain_order="left")
        n = chunk.height
        height += n
        pos_ids, self_ids = _find(chunk["positive"], corpus), _find(chunk["query"], corpus)
        if (pos_ids < 0).any():  # staging guarantees a positive; a relation without one cannot be ranked
            raise ValueError(f"{int((pos_ids < 0).sum())} pairs of {pairs} have no positive text")
        excluded = [set(p) | ({q} if q >= 0 else set()) for p, q in
                    zip(chunk["query_positives"].to_list(), self_ids.tolist())]
        if cfg.enabled:
            asked = chunk["query"] if not instructed else chunk.select(pl.struct("query", "task_type", "instruction")
                .map_elements(lambda r: instructed_query(r["query"], r["task_type"], r["instruction"], template),
                              return_dtype=pl.Utf8)).to_series()
            unique_q = asked.unique(maintain_order=True)
            q_emb = encoder.queries(unique_q)[_index(asked, unique_q)]
            ranked = rank_positives(q_emb, c_emb, pos_ids, excluded, depth=window.hi,
                                    chunk=cfg.query_chunk)
            kept, reasons = keep_decision(ranked.ranks, window.top_k)
            ranks.append(ranked.ranks)
        else:  # filter.enabled false: every pair kept, unranked; its given negatives, then random fill
            ranked = Ranked.unranked(n)
            kept, reasons = np.ones(n, dtype=bool), [None] * n
        given = chunk["negatives"].cast(pl.List(pl.Utf8)).to_arrow()
        given = given.combine_chunks() if isinstance(given, pa.ChunkedArray) else given
        given_ids, offsets = _find(pl.Series(given.flatten(), dtype=pl.Utf8), corpus), given.offsets.to_numpy()
        mined = [mine_negatives(pid, given_ids[offsets[i]:offsets[i + 1]].tolist(),
                                ranked.window(i, window.lo, window.hi), ps, len(corpus), ex, n_negatives,
                                cfg.margin, cfg.seed)
                 for i, (pid, ps, ex) in enumerate(zip(chunk["pair_id"].to_list(), ranked.pos_scores.tolist(),
                                                       excluded))]
        sink(pl.DataFrame([
            *chunk.select(carry),
            _list_column("negatives", corpus, [m.negatives for m in mined]),
            pl.Series("pos_rank", ranked.ranks, dtype=pl.Int64) if cfg.enabled
            else pl.repeat(None, n, dtype=pl.Int64, eager=True).alias("pos_rank"),
            pl.Series("pos_score", ranked.pos_scores, dtype=pl.Float32) if cfg.enabled
            else pl.repeat(None, n, dtype=pl.Float32, eager=True).alias("pos_score"),
            pl.Series("kept", kept, dtype=pl.Boolean),
            pl.Series("reason", reasons, dtype=pl.Utf8),
            pl.Series("n_given_negatives", [m.n_given for m in mined], dtype=pl.Int32),
            pl.Series("n_mined_negatives", [m.n_mined for m in mined], dtype=pl.Int32),
            pl.Series("n_filled_negatives", [m.n_filled for m in mined], dtype=pl.Int32),
            pl.Series("n_window_candidates", [m.n_window for m in mined], dtype=pl.Int32),
            pl.Series("n_margin_dropped", [m.n_margin_dropped for m in mined], dtype=pl.Int32),
            pl.Series("is_filled", [m.n_filled > 0 for m in mined], dtype=pl.Boolean),
        ]))
        kept_n += int(kept.sum())
        filled += sum(m.n_filled > 0 for m in mined)
        margin_dropped += sum(m.n_margin_dropped for m in mined)
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    return FilterStats(pairs=height, kept=kept_n, corpus_size=len(corpus), window=window,
                       median_pos_rank=float(np.median(all_ranks)) if len(all_ranks) else None,
                       filled_rows=filled, margin_dropped=margin_dropped)


def _distinct(parts: list[pl.Series]) -> pl.Series:
    """The texts of `parts` (each distinct already) once each, keeping the first copy; `parts` is emptied. Only a part
    that holds a later copy is filtered, one at a time: Series.unique over all of them held the texts twice (a
    million pairs: 0.6 GB more at the filter's peak)."""
    first = pl.concat(parts, rechunk=False).is_first_distinct()
    out, offset = [], 0
    while parts:
        part = parts.pop(0)
        keep = first.slice(offset, len(part))
        offset += len(part)
        out.append(part if keep.all() else part.filter(keep))
    return pl.concat(out, rechunk=False) if out else pl.Series(dtype=pl.Utf8)


def _batches(reader):
    """The record batches of `reader`; one empty batch when there are none, so the sink always gets a part."""
    empty = True
    for batch in reader:
        empty = False
        yield batch
    if empty:
        yield pa.RecordBatch.from_pylist([], schema=reader.schema)


def _index(texts: pl.Series, unique: pl.Series) -> np.ndarray:
    """For each text, its row in `unique` (which holds every text once), -1 where it is not there: a hash join."""
    rows = unique.alias("text").to_frame().with_row_index("row")
    return (texts.alias("text").to_frame().join(rows, on="text", how="left", maintain_order="left")["row"]
            .fill_null(-1).cast(pl.Int64).to_numpy())


def _find(texts: pl.Series, corpus: pl.Series) -> np.ndarray:
    """For each text, its id in the sorted `corpus`, -1 where it is not there: a binary search. A hash join built a
    table over the whole corpus for every chunk (a million pairs: 0.6 GB more while the positives were read)."""
    if corpus.is_empty():
        return np.full(len(texts), -1, dtype=np.int64)
    at = corpus.search_sorted(texts).cast(pl.Int64).clip(0, len(corpus) - 1)
    hit = (corpus.gather(at) == texts).fill_null(False)
    return np.where(hit.to_numpy(), at.to_numpy(), -1)


def _list_column(name: str, corpus: pl.Series, rows: list[list[int]]) -> pl.Series:
    """A list-of-strings column of corpus ids' texts, gathered in one Arrow take (no Python string per text)."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    flat = np.fromiter((x for r in rows for x in r), dtype=np.int64, count=int(offsets[-1]))
    values = corpus.gather(flat).cast(pl.Utf8).to_arrow().cast(pa.large_string())
    return pl.Series(name, pa.LargeListArray.from_arrays(pa.array(offsets), values)).cast(pl.List(pl.Utf8))
