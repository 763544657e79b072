"""GradCache gives the full-batch gradients, with or without kept graphs; length chunking gives the full-batch
embeddings."""

import pytest
import torch

from kalm_core.config import ModelConfig
from kalm_core.grad_cache import ChunkedEncoder, grad_cache_backward, kept_chunks, length_chunks, prepare
from kalm_core.losses import InfoNCELoss, MatryoshkaLoss
from kalm_core.model import Embedder


def _setup(tiny_bert_dir):
    emb = Embedder.from_pretrained(ModelConfig(passage_max_len=32, query_max_len=16), str(tiny_bert_dir))
    emb.tokenizer.padding_side = "right"
    texts_q = [f"query number {i} about sorting lists" + " and more" * (i % 3) for i in range(6)]
    texts_p = [f"passage {i} " + "documentation words " * (i % 5 + 1) for i in range(12)]
    q_ids = emb.tokenizer(texts_q)["input_ids"]
    p_ids = emb.tokenizer(texts_p)["input_ids"]
    loss = MatryoshkaLoss(InfoNCELoss(0.05), dims=(32, 16), weights=(1.0, 0.3))
    return emb, q_ids, p_ids, loss


def _grads(emb):
    return {n: p.grad.clone() for n, p in emb.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("keep_tokens", [0, 60, 10**6])  # plain GradCache, some chunks kept, every chunk kept
def test_grad_cache_equals_the_full_batch_gradient(tiny_bert_dir, keep_tokens):
    emb, q_ids, p_ids, loss_fn = _setup(tiny_bert_dir)
    emb.train()  # dropout on: GradCache must replay the same masks
    enc = ChunkedEncoder(emb)
    dev = torch.device("cpu")
    pad = emb.tokenizer.pad_token_id

    torch.manual_seed(7)
    qc, qo, _ = prepare(q_ids, pad, 2, dev)
    pc, po, _ = prepare(p_ids, pad, 2, dev)
    q, p = enc(qc + pc, qo + [len(qo) + i for i in po]).split([len(q_ids), len(p_ids)])
    full = loss_fn.compute_loss_from_embeddings(q, p)
    full.backward()
    reference = _grads(emb)
    emb.zero_grad(set_to_none=True)

    torch.manual_seed(7)
    sizes = [ids.numel() for ids, _ in qc + pc]
    kept = kept_chunks(sizes, keep_tokens)
    expected = {0: range(0, 1), 60: range(1, len(sizes)), 10**6: range(len(sizes), len(sizes) + 1)}[keep_tokens]
    assert len(kept) in expected and sum(sizes[k] for k in kept) <= keep_tokens
    cached = grad_cache_backward(enc, qc, qo, pc, po, loss_fn.compute_loss_from_embeddings, dev, keep_tokens=keep_tokens)
    got = _grads(emb)
    assert abs(float(cached) - float(full.detach())) < 1e-6
    assert reference.keys() == got.keys() and len(got) > 10
    worst = max((reference[k] - got[k]).abs().max().item() for k in got)
    assert worst <= 1e-5, worst


def test_length_chunks_change_padding_not_embeddings(tiny_bert_dir):
    emb, q_ids, _, _ = _setup(tiny_bert_dir)
    emb.eval()
    enc = ChunkedEncoder(emb)
    pad = emb.tokenizer.pad_token_id
    with torch.no_grad():
        one_chunk = enc(*prepare(q_ids, pad, 100, "cpu")[:2])
        small = enc(*prepare(q_ids, pad, 2, "cpu")[:2])
        direct = emb.encode(emb.tokenizer.batch_decode(q_ids, skip_special_tokens=True), batch_size=3)
    assert torch.allclose(one_chunk, small, atol=1e-5)
    assert torch.allclose(small, torch.from_numpy(direct), atol=1e-5)


def test_token_budget_chunks_hold_every_text_once_within_the_budget():
    lengths = [3, 40, 7, 7, 12, 90, 5, 33, 200, 1, 64, 64]
    ids = [[1] * n for n in lengths]
    chunks = length_chunks(ids, chunk=100, max_tokens=128)
    assert sorted(i for c in chunks for i in c) == list(range(len(ids)))
    for c in chunks:
        longest = max(lengths[i] for i in c)
        assert len(c) * longest <= 128 or len(c) == 1  # a text longer than the budget gets a chunk of its own
    assert len(chunks[0]) > 4 and len(chunks[-1]) == 1  # short texts share a chunk, the longest is alone
    assert all(len(c) <= 3 for c in length_chunks(ids, chunk=3, max_tokens=10_000))  # the text cap still holds


def test_grad_cache_over_token_budget_chunks_equals_the_full_batch_gradient(tiny_bert_dir):
    emb, q_ids, p_ids, loss_fn = _setup(tiny_bert_dir)
    emb.eval()
    enc = ChunkedEncoder(emb)
    dev, pad = torch.device("cpu"), emb.tokenizer.pad_token_id
    qc, qo, _ = prepare(q_ids, pad, 100, dev)
    pc, po, _ = prepare(p_ids, pad, 100, dev)
    q, p = enc(qc + pc, qo + [len(qo) + i for i in po]).split([len(q_ids), len(p_ids)])
    loss_fn.compute_loss_from_embeddings(q, p).backward()
    reference = _grads(emb)
    emb.zero_grad(set_to_none=True)
    qc, qo, _ = prepare(q_ids, pad, 100, dev, max_tokens=40)
    pc, po, _ = prepare(p_ids, pad, 100, dev, max_tokens=40)
    assert len(pc) > 2  # the budget really split the passages
    grad_cache_backward(enc, qc, qo, pc, po, loss_fn.compute_loss_from_embeddings, dev)
    got = _grads(emb)
    assert max((reference[k] - got[k]).abs().max().item() for k in got) <= 1e-5


def test_kept_chunks_are_the_first_within_the_budget_and_never_the_last_under_ddp():
    sizes = [30, 30, 40, 20]
    assert kept_chunks(sizes, 0) == set()
    assert kept_chunks(sizes, 70) == {0, 1}  # the third would pass the budget; no gaps after it
    assert kept_chunks(sizes, 120) == {0, 1, 2, 3}
    assert kept_chunks(sizes, 120, distributed=True) == {0, 1, 2}  # the last chunk's backward is DDP's sync
    assert kept_chunks([50], 100, distributed=True) == set()
