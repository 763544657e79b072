"""The embedder: pooling, the query template, encode order, and sentence-transformers round trips."""

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from kalm_core.config import ModelConfig
from kalm_core.model import Embedder, format_query, pool

TEXTS = ["how to sort a list", "Return a new list containing all items from the iterable in ascending order.",
         "open a file", "x", "a much longer passage about reading files " * 12]


def test_query_template_matches_the_recipe():
    assert format_query("sort a list", "Find docs") == "Instruct: Find docs \n Query: sort a list"
    assert format_query("sort a list", None) == "sort a list"


def test_pooling_modes():
    h = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # (B, T, H)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(h, mask, "cls"), h[:, 0])
    assert torch.equal(pool(h, mask, "last_token"), torch.stack([h[0, 1], h[1, 2]]))
    assert torch.allclose(pool(h, mask, "mean")[0], h[0, :2].mean(0))
    with pytest.raises(ValueError, match="pooling"):
        pool(h, mask, "max")


@pytest.mark.parametrize("projection", [False, True])
def test_saved_model_gives_the_same_embeddings_in_sentence_transformers(tmp_path, projection):
    emb = Embedder.from_pretrained(ModelConfig(passage_max_len=32))
    if projection:
        emb.init_pca_projection(TEXTS * 20)
    ours = emb.encode(TEXTS, batch_size=2)
    emb.save(tmp_path / "m", query_instruction="Find docs")
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert np.abs(st.encode(TEXTS, batch_size=2) - ours).max() <= 1e-5
    queries = emb.encode(TEXTS[:2], is_query=True, instruction="Find docs")
    assert np.abs(st.encode(TEXTS[:2], prompt_name="query") - queries).max() <= 1e-5
    again = Embedder.from_pretrained(ModelConfig(passage_max_len=32), str(tmp_path / "m"))
    assert (again.projection is not None) == projection
    assert np.abs(again.encode(TEXTS) - ours).max() <= 1e-5


def test_pca_projection_keeps_full_dim_similarities_and_orders_variance():
    emb = Embedder.from_pretrained(ModelConfig(passage_max_len=32))
    before = emb.encode(TEXTS)
    emb.init_pca_projection(TEXTS * 20)
    after = emb.encode(TEXTS)
    assert np.abs(before @ before.T - after @ after.T).max() < 1e-4  # a rotation: cosines unchanged
    w = emb.projection.weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-4)
    raw = Embedder.from_pretrained(ModelConfig(passage_max_len=32, normalize=False))
    x = torch.from_numpy(raw.encode(TEXTS * 4)).double()
    var = ((x - x.mean(0)) @ w.double().T).var(0)
    assert var[:3].sum() > var[3:].sum()  # the leading axes hold the variance


def test_encode_returns_rows_in_input_order():
    emb = Embedder.from_pretrained(ModelConfig(passage_max_len=32))
    one_by_one = np.stack([emb.encode([t])[0] for t in TEXTS])
    assert np.abs(emb.encode(TEXTS, batch_size=2) - one_by_one).max() <= 1e-5
