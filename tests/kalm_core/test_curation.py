"""Ranking consistency, mining, search and the embedding cache on small planted data."""

import numpy as np
import polars as pl
import pytest

from kalm_core.config import FilterConfig, ModelConfig, resolve_model_path
from kalm_core.embedding_cache import EmbeddingCache
from kalm_core.filtering import filter_source
from kalm_core.mining import mine_negatives
from kalm_core.model import Embedder, ModelLoadError
from kalm_core.ranking_consistency import Window
from kalm_core.search import count_above, topk_faiss, topk_torch

DIM = 32


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class PlantedEncoder:
    """Stands in for CachedEncoder: each text has a planted vector."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def queries(self, texts):
        return np.stack([self.vectors[t] for t in texts])

    passages = queries


def planted(n_docs=150, seed=0):
    """n_docs random documents; query i sits next to doc i, except the 'broad' query, which sits nowhere."""
    rng = np.random.default_rng(seed)
    docs = unit(rng.normal(size=(n_docs, DIM)))
    vectors = {f"doc {i}": docs[i] for i in range(n_docs)}
    queries = [f"query {i}" for i in range(10)]
    for i, q in enumerate(queries):
        vectors[q] = unit(docs[i] + 0.05 * rng.normal(size=DIM))
    vectors["broad query"] = unit(-docs[10] + 0.01 * rng.normal(size=DIM))  # its positive is the farthest doc
    pairs = pl.DataFrame({
        "pair_id": [f"p{i}" for i in range(11)],
        "query": queries + ["broad query"],
        "positive": [f"doc {i}" for i in range(11)],
        "negatives": [[f"doc {j}" for j in range(11, n_docs)]] + [[] for _ in range(10)],
    })
    return pairs, PlantedEncoder(vectors)


def test_a_far_positive_is_dropped_with_its_rank():
    pairs, enc = planted()
    out, stats = filter_source(pairs, enc, FilterConfig(), n_negatives=3)
    broad = out.filter(pl.col("query") == "broad query").row(0, named=True)
    assert not broad["kept"] and broad["pos_rank"] >= 50 and f"ranked {broad['pos_rank']}" in broad["reason"]
    assert broad["pos_rank"] > 140  # exact rank beyond the retrieved depth
    near = out.filter(pl.col("query") != "broad query")
    assert near["kept"].all() and (near["pos_rank"] == 0).all()
    assert stats.kept == 10 and stats.dropped == 1 and not stats.window.shrunk


def test_negatives_come_from_the_window_and_never_a_positive_or_the_query():
    pairs, enc = planted()
    out, _ = filter_source(pairs, enc, FilterConfig(), n_negatives=3)
    positives = set(pairs["positive"])
    for row in out.iter_rows(named=True):
        assert len(row["negatives"]) == 3
        assert row["positive"] not in row["negatives"] and row["query"] not in row["negatives"]
        if row["pair_id"] != "p0":  # p0 brings given negatives: they come first
            assert not positives & set(row["negatives"]) or row["n_filled_negatives"] == 0
    first = out.row(0, named=True)
    assert first["n_given_negatives"] == 3 and first["negatives"] == ["doc 11", "doc 12", "doc 13"]
    assert (out.filter(pl.col("pair_id") != "p0")["n_mined_negatives"] == 3).all()


def test_the_margin_excludes_a_near_duplicate_of_the_positive():
    texts = ["pos", "near dup", "far a", "far b", "far c", "query"]
    cands = [(1, 0.97), (2, 0.5), (3, 0.4), (4, 0.3)]  # the window: (corpus id, score), rank order; positive 1.0

    def mine(n, margin=None, seed=1, key="k"):  # (negatives as texts, Mined)
        m = mine_negatives(key, [], cands, 1.0, len(texts), {0, 5}, n=n, margin=margin, seed=seed)
        return [texts[i] for i in m.negatives], m
    (_, plain), (negatives, margin) = mine(2), mine(4, margin=0.95)
    assert margin.n_margin_dropped == 1 and "near dup" not in negatives
    assert margin.n_window == plain.n_window == 4  # the share the margin removed: 1 of 4 candidates
    assert margin.n_mined == 3 and margin.n_filled == 0  # not even the random fill brings it back
    assert plain.n_margin_dropped == 0 and set(mine(2)[0]) <= {"near dup", "far a", "far b", "far c"}
    always = [mine(4, seed=i, key=f"k{i}")[0] for i in range(5)]
    assert all("near dup" in negatives for negatives in always)  # without the margin it is mined


def test_a_short_row_is_filled_at_random_and_flagged():
    texts = ["pos", "q", "a", "b", "c", "d", "given"]
    m = mine_negatives("k", [6], [(2, 0.5)], 1.0, len(texts), {0, 1}, n=4, seed=0)
    negatives = [texts[i] for i in m.negatives]
    assert negatives[0] == "given" and m.n_given == 1 and m.n_mined == 1 and m.n_filled == 2
    assert not {"pos", "q"} & set(negatives) and len(set(negatives)) == 4


def test_a_small_corpus_shrinks_k_and_the_window():
    w = Window.for_corpus(20, FilterConfig(top_k=50, window=(50, 100)))
    assert w.shrunk and w.top_k == 10 and (w.lo, w.hi) == (10, 19)
    assert not Window.for_corpus(500, FilterConfig()).shrunk
    pairs, enc = planted(n_docs=12)
    out, stats = filter_source(pairs.with_columns(pl.Series("negatives", [[]] * 11, dtype=pl.List(pl.Utf8))), enc,
                               FilterConfig(), n_negatives=2)
    assert stats.window.shrunk and stats.corpus_size == 11
    assert (out["negatives"].list.len() == 2).all()


@pytest.mark.parametrize("n,c,k", [(7, 50, 5), (300, 1000, 100), (5, 3, 10)])
def test_faiss_equals_the_torch_reference(n, c, k):
    rng = np.random.default_rng(n)
    q, docs = unit(rng.normal(size=(n, DIM))), unit(rng.normal(size=(c, DIM)))
    fs, fi = topk_faiss(q, docs, k, chunk=64)
    ts, ti = topk_torch(q, docs, k, chunk=64)
    assert fi.shape == (n, min(k, c))
    np.testing.assert_allclose(fs, ts, atol=1e-5)
    assert (fi == ti).mean() > 0.999  # ties aside, the same ids
    above = count_above(q, docs, fs[:, -1].copy())  # the k-th item has k - 1 above it (ties within eps aside)
    assert (np.abs(above - (min(k, c) - 1)) <= 1).all() and (above == min(k, c) - 1).mean() > 0.9


def test_the_cache_encodes_each_text_once_per_model(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.stack([np.full(4, len(t), dtype=np.float32) for t in texts])

    cache = EmbeddingCache(tmp_path, "model-a")
    m1, n1 = cache.encode(["a", "bb", "a"], "passage", encode)
    m2, n2 = cache.encode(["bb", "ccc", "a"], "passage", encode)
    assert (n1, n2) == (2, 1) and calls == [["a", "bb"], ["ccc"]]
    assert m2[:, 0].tolist() == [2.0, 3.0, 1.0] and m1[2, 0] == 1.0
    _, n3 = EmbeddingCache(tmp_path, "model-b").encode(["a"], "passage", encode)
    _, n4 = cache.encode(["a"], "query", encode)
    assert n3 == 1 and n4 == 1  # another model, or the query side, is another key


def test_a_truncated_cache_part_is_named_set_aside_and_rebuilt(tmp_path, caplog):
    encode = lambda texts: np.stack([np.full(4, len(t), dtype=np.float32) for t in texts])  # noqa: E731
    cache = EmbeddingCache(tmp_path, "model-a")
    cache.encode(["a", "bb"], "passage", encode)
    (part,) = list(cache.dir.glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:40])  # what a killed writer without the rename would have left
    again = EmbeddingCache(tmp_path, "model-a")
    m, n = again.encode(["a", "bb"], "passage", encode)
    assert n == 2 and m[:, 0].tolist() == [1.0, 2.0]
    assert again.damaged == [part] and part.name in caplog.text and "damaged" in caplog.text
    assert not list(cache.dir.glob(".*tmp"))  # parts are renamed into place, never left half-written


def test_a_missing_filter_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Embedder.from_pretrained(ModelConfig(), str(tmp_path / "no-model"))


def test_truncation_is_counted_and_encode_counts_it_while_tokenizing_once():
    cfg = ModelConfig(passage_max_len=16)
    emb = Embedder.from_pretrained(cfg, resolve_model_path(cfg.base_model))
    assert emb.count_truncated(["short", "a much longer text " * 20], max_len=16) == 1
    # [CLS] + 14 words + [SEP] is exactly 16 tokens: it reaches the limit without being cut; 15 words are cut
    texts = ["short", "word " * 14, "word " * 15, "a much longer text " * 20]
    assert [len(x) for x in emb.tokenizer(texts)["input_ids"]][1:3] == [16, 17]
    out, truncated = emb.encode(texts, return_truncated=True)
    assert truncated == emb.count_truncated(texts, max_len=16) == 2
    assert np.allclose(out, emb.encode(texts), atol=1e-6)


def test_a_candidate_pool_joins_the_corpus_and_feeds_mining():
    pairs, enc = planted()
    rng = np.random.default_rng(5)
    pool = [f"pool {i}" for i in range(60)]
    for i, t in enumerate(pool):  # pool texts sit right behind query 1's positive
        enc.vectors[t] = unit(enc.vectors["doc 1"] + 0.3 * rng.normal(size=DIM))
    _, plain = filter_source(pairs, enc, FilterConfig(), n_negatives=3)
    out, stats = filter_source(pairs, enc, FilterConfig(window=(5, 60)), pool=pool, n_negatives=3)
    assert stats.corpus_size == plain.corpus_size + len(pool)
    row = out.filter(pl.col("pair_id") == "p1").row(0, named=True)
    assert any(n.startswith("pool ") for n in row["negatives"])


def test_a_rebuild_whose_texts_are_all_cached_never_loads_the_model(tmp_path):
    from kalm_core.filtering import CachedEncoder

    config, path = ModelConfig(), resolve_model_path(ModelConfig().base_model)
    loads = []

    def loader():
        loads.append(1)
        return Embedder.for_inference(config, path)

    first = CachedEncoder(loader, EmbeddingCache(tmp_path, path, config))
    vectors = first.passages(["alpha", "beta"])
    assert loads == [1] and first.encoded == 2
    again = CachedEncoder(loader, EmbeddingCache(tmp_path, path, config))
    assert np.allclose(again.passages(["beta", "alpha"]), vectors[::-1]) and again.encoded == 0
    assert loads == [1]  # everything came from the cache: the model was never loaded


def _reference_ranks(q, docs, pos_ids, excluded, depth):
    """The ranking rule written as the plain loop it is: walk the retrieved list, skip excluded ids, note where the
    positive stands; past the depth, count exactly."""
    from kalm_core.search import topk

    extra = max(len(e) for e in excluded)
    scores, ids = topk(q, docs, depth + extra)
    ranks, candidates = [], []
    for i in range(len(pos_ids)):
        kept, rank = [], None
        for cid, s in zip(ids[i].tolist(), scores[i].tolist()):
            if cid == pos_ids[i]:
                rank = len(kept)
            elif cid not in excluded[i]:
                kept.append((cid, s))
        if rank is None:
            pos = float(docs[pos_ids[i]] @ q[i])
            rank = sum(1 for c in range(len(docs)) if c not in excluded[i] and float(docs[c] @ q[i]) > pos + 1e-5)
        ranks.append(rank)
        candidates.append(kept[:depth])
    return ranks, candidates


@pytest.mark.parametrize("n_docs,depth", [(200, 20), (30, 25), (12, 50)])
def test_array_ranking_equals_the_plain_loop(n_docs, depth):
    from kalm_core.ranking_consistency import rank_positives

    rng = np.random.default_rng(n_docs)
    docs = unit(rng.normal(size=(n_docs, DIM)))
    pos_ids = rng.integers(0, n_docs, size=40)
    q = unit(docs[pos_ids] + rng.uniform(0.1, 3.0, size=(40, 1)) * rng.normal(size=(40, DIM)))  # near and far
    excluded = [{int(p)} | set(rng.integers(0, n_docs, size=rng.integers(0, 4)).tolist()) for p in pos_ids]
    got = rank_positives(q, docs, pos_ids, excluded, depth=depth)
    ranks, candidates = _reference_ranks(q, docs, pos_ids, excluded, depth)
    assert got.ranks.tolist() == ranks and (np.array(ranks) < 3).any()
    assert (np.array(ranks) >= depth).any() or n_docs < 10 * depth  # a large corpus: some counted past the depth
    for i, cands in enumerate(candidates):
        window = got.window(i, 0, depth)
        assert [c for c, _ in window] == [c for c, _ in cands]
        np.testing.assert_allclose([s for _, s in window], [s for _, s in cands], atol=1e-6)
        assert got.window(i, 3, 7) == window[3:7]


def test_mining_samples_distinct_window_positions_uniformly_and_reproducibly():
    import collections
    import random

    from kalm_core.mining import _rng, _sample

    rng = random.Random(0)
    counts = collections.Counter()
    for _ in range(6000):
        draw = _sample(rng, 10, 3)
        assert len(set(draw)) == 3 and all(0 <= i < 10 for i in draw)
        counts.update(draw)
    assert len(counts) == 10 and max(counts.values()) / min(counts.values()) < 1.15  # 1,800 each expected
    assert sorted(_sample(rng, 4, 4)) == [0, 1, 2, 3] and _sample(rng, 4, 0) == []
    assert _sample(_rng(0, "pair-1"), 50, 7) == _sample(_rng(0, "pair-1"), 50, 7)  # a pair draws alike every run


def test_a_source_with_no_pairs_filters_to_no_rows():
    class Zeros:
        def queries(self, texts):
            return np.zeros((len(texts), DIM), dtype=np.float32)

        passages = queries

    empty = planted()[0].head(0)
    out, stats = filter_source(empty, Zeros(), FilterConfig(), n_negatives=3)
    assert out.height == 0 and out.schema["negatives"] == pl.List(pl.Utf8) and "pos_rank" in out.columns
    assert stats.kept == 0 and stats.median_pos_rank is None


def test_the_negatives_report_shows_the_share_of_candidates_the_margin_removed(tmp_path, con):
    """Per row, the window's candidates and the margin's drops reach the filtered table; marts.negatives_report sums
    them per source (its invariant: no more dropped than seen)."""
    from kalm_core import warehouse
    from kalm_core.sql_models import discover, run_model

    pairs, enc = planted()
    pairs = pairs.with_columns(source=pl.lit("planted"))
    # planted documents are random (cosines near 0): a margin of 0.1 x the positive is what removes some here
    out, stats = filter_source(pairs, enc, FilterConfig(margin=0.1), n_negatives=3)
    plain, _ = filter_source(pairs, enc, FilterConfig(), n_negatives=3)
    assert int(out["n_margin_dropped"].sum()) == stats.margin_dropped
    assert (out["n_window_candidates"] == plain["n_window_candidates"]).all()
    assert int(plain["n_margin_dropped"].sum()) == 0
    warehouse.write(con, "filtered", "planted", out)
    model = next(m for m in discover() if m.name == "negatives_report")
    run_model(con, model, {"filtered": ["planted"]})
    row = con.execute("select window_candidates, margin_dropped, margin_dropped_fraction "
                      "from marts.negatives_report").fetchall()
    kept = out.filter(pl.col("kept"))
    assert 0 < int(kept["n_margin_dropped"].sum()) < int(kept["n_window_candidates"].sum())
    assert row == [(int(kept["n_window_candidates"].sum()), int(kept["n_margin_dropped"].sum()),
                    round(int(kept["n_margin_dropped"].sum()) / int(kept["n_window_candidates"].sum()), 4))]


def test_the_filter_ranks_the_query_string_the_trainer_trains_on(tmp_path):
    """One instruction policy: a retrieval query carries its instruction in the template, an STS one none, in the
    filter's encoding and in the trainer's batches alike."""
    from kalm_core.batch_data import load_batches

    rows = pl.DataFrame({
        "pair_id": ["a", "b"], "query": ["sort a list", "a cat sits"], "positive": ["use sorted()", "a cat is sitting"],
        "negatives": [["use reversed()"], ["a dog runs"]], "task_type": ["retrieval", "sts"],
        "instruction": ["Find the docs", "Retrieve similar text"],
    })
    seen: list[str] = []

    class Recording:
        def queries(self, texts):
            seen.extend(texts)
            return np.eye(4, DIM)[: len(texts)]

        def passages(self, texts):
            return np.eye(4, DIM)[[min(i, 3) for i in range(len(texts))]]

    filter_source(rows, Recording(), FilterConfig(), instructed=True, n_negatives=1)
    snapshot = tmp_path / "b.parquet"
    rows.drop("pair_id").with_columns(batch_id=pl.lit(0), position=pl.Series([0, 1])).write_parquet(snapshot)
    (batch,) = load_batches(snapshot, group_size=2, world_size=1, template=ModelConfig.query_template)
    assert seen == batch.queries == ["Instruct: Find the docs \n Query: sort a list", "a cat sits"]


def test_pairs_ranked_and_mined_a_chunk_at_a_time_give_the_same_rows(monkeypatch):
    """#23 item 6: the filter streams its pairs in chunks; where the chunks fall, and the order rows come in, change
    nothing."""
    from kalm_core import filtering

    pairs, enc = planted()
    whole, stats = filter_source(pairs, enc, FilterConfig(margin=0.99), n_negatives=3)
    monkeypatch.setattr(filtering, "PAIR_CHUNK", 4)
    chunked, chunked_stats = filter_source(pairs, enc, FilterConfig(margin=0.99), n_negatives=3)
    assert chunked.equals(whole) and chunked_stats == stats
    shuffled, _ = filter_source(pairs.sample(fraction=1.0, shuffle=True, seed=3), enc, FilterConfig(margin=0.99),
                                n_negatives=3)  # the lake hands rows over in storage order: it changes no row
    assert shuffled.sort("pair_id").equals(whole.sort("pair_id"))


def test_a_disabled_filter_keeps_every_pair_unranked_and_loads_no_model():
    class NoModel:
        def queries(self, texts):
            raise AssertionError("a disabled filter encodes nothing")

        passages = queries

    pairs, _ = planted()
    out, stats = filter_source(pairs, NoModel(), FilterConfig(enabled=False), n_negatives=3)
    assert out["kept"].all() and out["pos_rank"].is_null().all() and out["reason"].is_null().all()
    assert stats.kept == stats.pairs == 11 and stats.median_pos_rank is None
    assert (out["negatives"].list.len() == 3).all() and out.row(0, named=True)["n_given_negatives"] == 3
    assert (out.filter(pl.col("pair_id") != "p0")["n_filled_negatives"] == 3).all()  # no window: random fill
    for row in out.iter_rows(named=True):
        assert row["positive"] not in row["negatives"] and row["query"] not in row["negatives"]


def test_the_exact_search_scores_a_bounded_block_whatever_the_corpus(monkeypatch):
    """The score block of a search is capped (search.SCORES_PER_BLOCK): fewer queries at once, the same answers."""
    from kalm_core import search

    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(37, DIM)).astype(np.float32), rng.normal(size=(500, DIM)).astype(np.float32)
    thresholds = rng.normal(size=37).astype(np.float32)
    whole = search.count_above(q, c, thresholds), search.topk_torch(q, c, 5)
    monkeypatch.setattr(search, "SCORES_PER_BLOCK", 1_000)  # two queries per block
    assert search._rows(4096, 500) == 2
    assert (search.count_above(q, c, thresholds) == whole[0]).all()
    scores, ids = search.topk_torch(q, c, 5)
    assert (ids == whole[1][1]).all() and np.allclose(scores, whole[1][0], atol=1e-5)  # BLAS rounds per block size
