import pytest
import torch
import torch.nn.functional as F

from kalm_core.losses import InfoNCELoss, MatryoshkaLoss


def emb(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_info_nce_targets_each_querys_own_positive():
    q, p = emb(3, 8, 0), emb(6, 8, 1)  # group size 2: rows 0, 2, 4 are the positives
    loss = InfoNCELoss(temperature=0.1).compute_loss_from_embeddings(q, p)
    logits = q @ p.T / 0.1
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(3), torch.tensor([0, 2, 4])].mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    perfect = InfoNCELoss(0.01).compute_loss_from_embeddings(p[::2], p)  # queries equal to their positives
    assert perfect < 0.01


def test_matryoshka_is_the_weighted_sum_of_truncated_losses():
    q, p = emb(4, 16, 2), emb(8, 16, 3)
    inner = InfoNCELoss(0.05)
    mrl = MatryoshkaLoss(inner, dims=(16, 8, 4), weights=(1.0, 0.3, 0.2))
    expected = sum(w * inner.compute_loss_from_embeddings(F.normalize(q[:, :d], dim=-1), F.normalize(p[:, :d], dim=-1))
                   for d, w in ((16, 1.0), (8, 0.3), (4, 0.2)))
    assert torch.allclose(mrl.compute_loss_from_embeddings(q, p), expected, atol=1e-6)
    assert mrl.get_config_dict()["dims"] == [16, 8, 4]


def test_dims_are_sorted_with_their_weights():
    mrl = MatryoshkaLoss(InfoNCELoss(), dims=(64, 256, 128), weights=(0.1, 1.0, 0.3))
    assert mrl.dims == (256, 128, 64) and mrl.weights == (1.0, 0.3, 0.1)


@pytest.mark.parametrize("kwargs,message", [
    ({"dims": (), "weights": ()}, "at least one dimension"),
    ({"dims": (8, 4), "weights": (1.0,)}, "weights has 1 entries but dims has 2"),
    ({"dims": (8, 0), "weights": (1.0, 1.0)}, "must be positive"),
    ({"dims": (8, 8), "weights": (1.0, 1.0)}, "must not repeat"),
    ({"dims": (1024, 8), "weights": (1.0, 1.0), "hidden_size": 384}, "larger than the model's hidden size 384"),
    ({"dims": (8,), "weights": (-1.0,)}, "non-negative"),
])
def test_matryoshka_validates_up_front(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatryoshkaLoss(InfoNCELoss(), **kwargs)


def test_bad_temperature_and_groups_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)
    with pytest.raises(ValueError, match="do not split"):
        InfoNCELoss().compute_loss_from_embeddings(emb(3, 4, 0), emb(7, 4, 1))


def _float64_reference(q, p, dims, weights, tau):
    """MatryoshkaLoss(InfoNCE) written out in float64, no autocast."""
    q, p = q.double(), p.double()
    n, group = q.size(0), p.size(0) // q.size(0)
    total = 0.0
    for d, w in zip(dims, weights):
        logits = F.normalize(q[:, :d], dim=-1) @ F.normalize(p[:, :d], dim=-1).T / tau
        total = total + w * F.cross_entropy(logits, torch.arange(n) * group)
    return total


def test_the_scores_run_in_fp32_under_bf16_autocast_and_match_float64():
    """At tau = 0.01 a bf16 score matmul moves each logit by up to ~0.2: the loss and its gradient must come from
    fp32 scores even inside the trainer's bf16 autocast. Tolerance: 1e-4 relative on the loss, cosine 0.9999 on the
    gradient (with the bf16 matmul of before: 1.4e-3 and 0.9985 here)."""
    dims, weights, tau = (64, 32, 16), (1.0, 0.3, 0.2), 0.01
    # near-duplicate passages: scores close to each other, where rounding decides the softmax
    base = emb(16, 64, 4)
    q = (base + 0.05 * emb(16, 64, 5)).requires_grad_()
    p = torch.cat([base + 0.05 * emb(16, 64, 6 + k) for k in range(4)]).view(4, 16, 64).transpose(0, 1).reshape(64, 64)
    mrl = MatryoshkaLoss(InfoNCELoss(tau), dims=dims, weights=weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mrl.compute_loss_from_embeddings(q, p)
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, q)

    q64 = q.detach().double().requires_grad_()
    reference = _float64_reference(q64, p, dims, weights, tau)
    (grad64,) = torch.autograd.grad(reference, q64)
    assert abs(loss.item() - reference.item()) <= 1e-4 * reference.item()
    assert F.cosine_similarity(grad.double().flatten(), grad64.flatten(), dim=0) > 0.9999


def test_pooling_and_normalisation_run_in_fp32():
    from kalm_core.model import pool

    g = torch.Generator().manual_seed(7)
    hidden = (1 + 0.01 * torch.randn(2, 512, 48, generator=g)).to(torch.bfloat16)  # long rows of similar states
    mask = torch.ones(2, 512, dtype=torch.long)
    mask[1, 300:] = 0
    pooled = pool(hidden, mask, "mean")
    expected = torch.stack([hidden[0].double().mean(0), hidden[1, :300].double().mean(0)])
    assert pooled.dtype == torch.float32
    assert torch.allclose(pooled.double(), expected, rtol=1e-6, atol=0)


def test_false_negative_masking_removes_a_planted_false_negative_and_only_it():
    """Every query sits near its positive (cosine ~0.95). Query 1's positive is planted as a near copy of query 0:
    for query 0 it scores above query 0's own positive by more than the margin, so it leaves query 0's softmax, and
    no other candidate leaves any softmax."""
    p = emb(8, 32, 11).clone()  # group size 2: positives at rows 0, 2, 4, 6
    q = F.normalize(p[0::2] + 0.3 * emb(4, 32, 12), dim=-1)
    p[2] = F.normalize(q[0] + 0.01 * emb(1, 32, 13)[0], dim=0)  # the plant: query 1's positive answers query 0
    q[1] = F.normalize(p[2] + 0.3 * emb(1, 32, 14)[0], dim=0)
    scores = q @ p.T
    assert scores[0, 2] > scores[0, 0] + 0.02
    masked = InfoNCELoss(0.05, false_negative_margin=0.02)
    loss = masked.compute_loss_from_embeddings(q, p)
    assert int(masked.last_masked) == 1

    logits = scores / 0.05
    logits[0, 2] = float("-inf")  # exactly the plant, for query 0 only
    expected = F.cross_entropy(logits, torch.tensor([0, 2, 4, 6]))
    assert torch.allclose(loss, expected, atol=1e-6)
    assert not torch.allclose(InfoNCELoss(0.05).compute_loss_from_embeddings(q, p), expected, atol=1e-3)

    mrl = MatryoshkaLoss(InfoNCELoss(0.05, false_negative_margin=0.02), dims=(32, 16), weights=(1.0, 0.5))
    mrl.compute_loss_from_embeddings(q, p)
    assert int(mrl.last_masked) == 1  # counted at full dimension


def test_repeated_texts_leave_each_others_softmax_and_nothing_else_does():
    """A classification batch: queries a and b share the label positive L1; query c's own negative is the text of
    query a; query d asks a's question again with another positive."""
    from kalm_core.losses.same_text import same_text_mask

    queries = ["a", "b", "c", "a"]
    passages = ["L1", "n1", "L1", "n2", "L2", "a", "L3", "n4"]  # group size 2
    mask = same_text_mask(queries, passages)
    expected = {(0, 2), (0, 5), (0, 6),  # a: b's copy of its positive L1, its own text, its repeat's positive L3
                (1, 0),  # b: a's copy of L1
                (3, 0), (3, 2), (3, 5)}  # the repeated a: the first a's positive L1 (and b's copy), its own text
    assert {tuple(ij) for ij in torch.nonzero(torch.from_numpy(mask)).tolist()} == expected
    assert same_text_mask(["x", "y"], ["px", "nx", "py", "ny"]) is None  # all distinct: nothing to mask

    q, p = emb(4, 16, 21), emb(8, 16, 22)
    loss = InfoNCELoss(0.05)
    loss.same_text = torch.from_numpy(mask)
    logits = (q @ p.T) / 0.05
    for i, j in expected:
        logits[i, j] = float("-inf")
    assert torch.allclose(loss.compute_loss_from_embeddings(q, p),
                          F.cross_entropy(logits, torch.tensor([0, 2, 4, 6])), atol=1e-6)
    loss.same_text = torch.zeros(3, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="does not match the scores"):
        loss.compute_loss_from_embeddings(q, p)
