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


@pytest.mark.parametrize("pooling", ["mean", "last_token"])
def test_encode_pads_on_the_tokenizers_side_and_copies_rows_back_in_order(tiny_qwen2_dir, pooling, monkeypatch):
    from kalm_core import model

    texts = [" ".join(TEXTS[: 1 + i % len(TEXTS)])[: 10 + 17 * i] for i in range(9)]  # many lengths
    emb = Embedder.from_pretrained(ModelConfig(pooling=pooling, passage_max_len=64), str(tiny_qwen2_dir))
    one_by_one = np.stack([emb.encode([t])[0] for t in texts])  # no padding at all
    emb.tokenizer.padding_side = "right"
    right = emb.encode(texts, batch_size=4)
    emb.tokenizer.padding_side = "left"
    monkeypatch.setattr(model, "COLLECT_ROWS", 2)  # copy back from the device every second batch
    left = emb.encode(texts, batch_size=2)
    assert np.abs(right - one_by_one).max() <= 1e-5 and np.abs(left - one_by_one).max() <= 1e-5


def test_inference_placement_falls_back_to_the_cpu_in_fp32(tiny_bert_dir):
    from kalm_core import device

    emb = Embedder.for_inference(ModelConfig(), str(tiny_bert_dir))
    if torch.cuda.is_available():  # the GPU path: bf16 (or fp16) on the card, batches by token budget
        assert emb.device.type == "cuda" and device.token_budget(emb.device) == device.GPU_TOKEN_BUDGET
    else:
        assert emb.device.type == "cpu" and next(emb.model.parameters()).dtype == torch.float32
        assert device.token_budget(emb.device) is None and device.describe(emb.device, torch.float32) == "cpu (float32)"
    assert not emb.training


def test_token_budget_batches_give_the_same_vectors_within_the_budget(tiny_bert_dir, monkeypatch):
    emb = Embedder.for_inference(ModelConfig(), str(tiny_bert_dir))
    texts = [" ".join(["word"] * n) for n in (1, 40, 3, 25, 7, 60, 2)]
    shapes = []
    real_forward = Embedder.forward

    def spy(self, input_ids, attention_mask):
        shapes.append(tuple(input_ids.shape))
        return real_forward(self, input_ids, attention_mask)

    fixed = emb.encode(texts, batch_size=2)
    monkeypatch.setattr(Embedder, "forward", spy)
    budget = emb.encode(texts, max_tokens=80)
    assert np.abs(fixed - budget).max() <= 1e-5
    assert all(b * t <= 80 for b, t in shapes) and len(shapes) < len(texts)  # big batches of short texts


def test_the_embedding_cache_key_covers_every_setting_that_changes_a_vector(tiny_bert_dir):
    from dataclasses import replace

    from kalm_core.embedding_cache import VECTOR_SETTINGS, encoder_id

    base = ModelConfig()
    key = encoder_id(str(tiny_bert_dir), base)
    changed = {"pooling": "cls", "normalize": False, "query_max_len": 8, "passage_max_len": 9,
               "query_template": "Q: {query}", "projection": "pca"}
    assert set(changed) == set(VECTOR_SETTINGS)
    keys = {encoder_id(str(tiny_bert_dir), replace(base, **{k: v})) for k, v in changed.items()}
    assert key not in keys and len(keys) == len(changed)
    assert encoder_id(str(tiny_bert_dir), replace(base, base_model="other")) == key  # the path is given separately


def test_a_text_with_no_tokens_gets_a_zero_row_and_the_others_are_unchanged(tiny_qwen2_dir):
    from kalm_core.config import ModelConfig
    from kalm_core.model import Embedder

    emb = Embedder.from_pretrained(ModelConfig(base_model=str(tiny_qwen2_dir), passage_max_len=32))
    assert emb.tokenizer("")["input_ids"] == []  # Qwen2-style: no special tokens around a text
    alone = emb.encode(["sort a list", "open a file"])
    mixed = emb.encode(["", "sort a list", "", "open a file"], max_tokens=64)
    assert (mixed[[0, 2]] == 0).all() and abs(mixed[[1, 3]] - alone).max() < 1e-5
