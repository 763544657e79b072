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
