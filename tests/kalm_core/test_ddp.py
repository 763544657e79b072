"""Two CPU processes on gloo: each query sees the other device's passages, and gradients match one process."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from kalm_core.losses import InfoNCELoss, MatryoshkaLoss

B, G, D = 3, 2, 8


def data():
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(2 * B, D, generator=g), dim=-1), F.normalize(torch.randn(2 * B * G, D, generator=g), dim=-1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    q_all, p_all = data()
    q = q_all[rank * B:(rank + 1) * B].clone().requires_grad_()
    p = p_all[rank * B * G:(rank + 1) * B * G].clone().requires_grad_()
    loss_fn = MatryoshkaLoss(InfoNCELoss(0.05), dims=(8, 4), weights=(1.0, 0.5))
    loss = loss_fn.compute_loss_from_embeddings(q, p)
    loss.backward()
    local_only = MatryoshkaLoss(InfoNCELoss(0.05, cross_device=False), dims=(8, 4), weights=(1.0, 0.5))
    out[rank] = (loss.item(), q.grad.clone(), p.grad.clone(), local_only.compute_loss_from_embeddings(q, p).item())
    dist.destroy_process_group()


def test_cross_device_negatives_match_the_global_batch():
    q_all, p_all = data()
    q_all.requires_grad_()
    p_all.requires_grad_()
    reference = MatryoshkaLoss(InfoNCELoss(0.05), dims=(8, 4), weights=(1.0, 0.5)).compute_loss_from_embeddings(q_all, p_all)
    reference.backward()

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        loss, q_grad, p_grad, local_only = results[rank]
        assert abs(loss / 2 - reference.item()) < 1e-5  # each rank holds world_size x the global loss
        assert abs(local_only - reference.item()) > 1e-3  # without gathering the loss is different
        # DDP averages over 2 ranks: rank grads / 2 must be the global gradient of this rank's slice
        assert torch.allclose(q_grad / 2, q_all.grad[rank * B:(rank + 1) * B], atol=1e-6)
        assert torch.allclose(p_grad / 2, p_all.grad[rank * B * G:(rank + 1) * B * G], atol=1e-6)


def test_the_trainer_runs_under_torchrun_with_two_processes(tmp_path, tiny_bert_dir):
    """Plain backward, then GradCache with kept graphs: the same losses, step for step."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import batch_snapshot
    from tests.kalm_core.test_trainer import config

    snap = batch_snapshot(tmp_path / "b.parquet", n_batches=2, batch=4)
    root = Path(__file__).resolve().parents[2]
    losses = []
    # the same chunks of at most 4 texts and 64 padded tokens, so dropout draws the same masks in both runs
    for name, train in (("plain", dict(chunk_tokens=64)),
                        ("grad_cache", dict(grad_cache_chunk=4, chunk_tokens=64, keep_graph_tokens=64))):
        (tmp_path / name).mkdir()
        cfg = config(tmp_path / name, tiny_bert_dir, **train)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "kalm_core.trainer", "--snapshot", str(snap), "--config", str(cfg), "--output", str(tmp_path / name / "out")]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        steps = [json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"event": "step"')]
        assert [s["step"] for s in steps] == [1, 2]  # rank 0 logs; one global batch per step
        assert steps[0]["pairs_per_s"] > 0 and all(s["loss"] > 0 for s in steps)
        assert (tmp_path / name / "out" / "model" / "modules.json").exists()
        losses.append([s["loss"] for s in steps])
    assert max(abs(a - b) for a, b in zip(*losses)) <= 1e-4 * max(losses[0]), losses


def _kept_graph_worker(rank: int, port: int, model_dir: str, out: dict):
    from kalm_core.config import ModelConfig
    from kalm_core.grad_cache import ChunkedEncoder, grad_cache_backward, prepare
    from kalm_core.model import Embedder

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    emb = Embedder.from_pretrained(ModelConfig(query_max_len=16, passage_max_len=32), model_dir)
    emb.tokenizer.padding_side = "right"
    emb.eval()
    for name, param in emb.model.named_parameters():
        if name.startswith("pooler."):
            param.requires_grad_(False)
    enc = torch.nn.parallel.DistributedDataParallel(ChunkedEncoder(emb))
    q_ids = emb.tokenizer([f"query {rank}.{i} on sorting" + " more" * i for i in range(3)])["input_ids"]
    # rank 1's passages are longer, so it runs more chunks (and more DDP forwards) than rank 0
    p_ids = emb.tokenizer([f"passage {rank}.{i} " + "words " * (i + 2 + 12 * rank) for i in range(6)])["input_ids"]
    pad, dev = emb.tokenizer.pad_token_id, torch.device("cpu")
    qc, qo, _ = prepare(q_ids, pad, 100, dev, max_tokens=40)
    pc, po, _ = prepare(p_ids, pad, 100, dev, max_tokens=40)
    loss_fn = MatryoshkaLoss(InfoNCELoss(0.05), dims=(32, 16), weights=(1.0, 0.3)).compute_loss_from_embeddings
    grads = {}
    for keep in (0, 10**6):
        enc.zero_grad(set_to_none=True)
        grad_cache_backward(enc, qc, qo, pc, po, loss_fn, dev, enc.no_sync, keep_tokens=keep)
        grads[keep] = {n: p.grad.clone() for n, p in emb.named_parameters() if p.grad is not None}
    out[rank] = (len(qc) + len(pc), grads)
    dist.destroy_process_group()


def test_kept_graphs_under_ddp_give_plain_grad_cache_gradients_on_every_rank(tiny_bert_dir):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_kept_graph_worker, args=(_free_port(), str(tiny_bert_dir), out), nprocs=2, join=True)
        results = dict(out)
    assert 2 < results[0][0] < results[1][0]  # uneven chunk counts
    for rank in (0, 1):
        n_chunks, grads = results[rank]
        assert grads[0].keys() == grads[10**6].keys() and len(grads[0]) > 10
        assert max((grads[0][k] - grads[10**6][k]).abs().max().item() for k in grads[0]) <= 1e-5
    # the last backward synced: both ranks hold the same (averaged) gradients
    assert max((results[0][1][0][k] - results[1][1][0][k]).abs().max().item() for k in results[0][1][0]) <= 1e-6
    assert max((results[0][1][10**6][k] - results[1][1][10**6][k]).abs().max().item()
               for k in results[0][1][0]) <= 1e-6
