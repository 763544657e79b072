"""The embedding cache (kalm_core/embedding_cache.py): texts encoded once per model, written a chunk at a time, so an
encode killed midway resumes from its last written chunk (#23 item 6)."""

import numpy as np
import pytest

from kalm_core.embedding_cache import EmbeddingCache


def vectors(texts):
    return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)


def test_an_encode_killed_midway_resumes_from_its_last_written_chunk(tmp_path):
    texts = [f"text {'a' * i}" for i in range(10)]
    cache = EmbeddingCache(tmp_path, "model")
    cache.chunk_texts = 4
    seen = []

    def dies_on_the_third_chunk(batch):
        seen.append(len(batch))
        if len(seen) == 3:
            raise KeyboardInterrupt  # the run killed mid-encode
        return vectors(batch)

    with pytest.raises(KeyboardInterrupt):
        cache.encode(texts, "passage", dies_on_the_third_chunk)
    assert seen == [4, 4, 2] and len(cache.parts()) == 2  # two chunks written before the kill
    resumed = []
    matrix, new = EmbeddingCache(tmp_path, "model").encode(texts, "passage", lambda b: resumed.append(b) or vectors(b))
    assert new == 2 and resumed == [texts[8:]]  # only the chunk the kill lost
    np.testing.assert_array_equal(matrix, vectors(texts))


def test_repeats_and_order_follow_the_input_and_kinds_are_cached_apart(tmp_path):
    cache = EmbeddingCache(tmp_path, "model")
    texts = ["b", "a", "b", "aa"]
    matrix, new = cache.encode(texts, "query", vectors)
    assert new == 3 and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, vectors(texts))
    _, again = cache.encode(["aa", "a"], "query", vectors)
    _, as_passages = cache.encode(["aa", "a"], "passage", vectors)
    assert again == 0 and as_passages == 2
