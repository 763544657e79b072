"""The GPU path (skipped without CUDA): training keeps fp32 master weights under bf16 autocast with compiled layers,
and inference runs on the GPU in bf16 with token-budget batches and matches fp32.

Self-contained (no conftest fixtures), so on a GPU machine whose image lacks the warehouse's packages it runs as
`python -m pytest --noconftest tests/gpu`.
"""

import json

import polars as pl
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _snapshot(path, n_batches=2, batch=4, negatives=3):
    from tests.models import WORDS

    rows = [{"batch_id": b, "position": p, "query": f"q{b}.{p} " + " ".join(WORDS[p:p + 6]),
             "instruction": "Find the docs", "positive": f"p{b}.{p} " + " ".join(WORDS[p:p + 25]),
             "negatives": [f"n{b}.{p}.{j} " + " ".join(WORDS[j:j + 15 + p]) for j in range(negatives)],
             "task_type": "retrieval"} for b in range(n_batches) for p in range(batch)]
    pl.DataFrame(rows).write_parquet(path)
    return path


def test_cuda_training_from_a_bf16_checkpoint_keeps_fp32_weights_and_compiled_layers_match_eager(tmp_path):
    from kalm_core.config import ModelConfig, Profile, TrainConfig
    from kalm_core.model import Embedder
    from kalm_core.trainer import train
    from tests.models import tiny_qwen2

    src = tiny_qwen2(tmp_path / "fp32")
    bf16 = tmp_path / "bf16"
    Embedder.from_pretrained(ModelConfig(), str(src)).model.to(torch.bfloat16).save_pretrained(bf16)
    for f in src.iterdir():
        if not f.name.startswith(("model", "config")):
            (bf16 / f.name).write_bytes(f.read_bytes())
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    mcfg = ModelConfig(base_model=str(bf16), query_max_len=32, passage_max_len=32)
    snap = _snapshot(tmp_path / "b.parquet")
    losses = {}
    for compiled in (False, True):
        tcfg = TrainConfig(group_size=4, dims=(64, 16), dim_weights=(1.0, 0.3), lr=1e-5, warmup_ratio=0.0, bf16=True,
                           checkpoint_every=0, grad_cache_chunk=64, chunk_tokens=256, compile=compiled)
        records = []
        train(Profile(name="t", model=mcfg, train=tcfg), snap, tmp_path / f"out{compiled}", log=records.append)
        losses[compiled] = [r["loss"] for r in records if r["event"] == "step"]
    assert len(losses[True]) == 2 and all(map(torch.isfinite, torch.tensor(losses[True])))
    assert abs(losses[True][0] - losses[False][0]) <= 2e-2 * abs(losses[False][0])  # bf16 rounding only
    before = Embedder.from_pretrained(mcfg, str(bf16), dtype=torch.float32).model
    after = Embedder.from_pretrained(mcfg, str(tmp_path / "outTrue" / "model"), dtype=torch.float32).model
    assert {p.dtype for p in after.parameters()} == {torch.float32}
    ref = dict(before.named_parameters())
    moved = [n for n, p in after.named_parameters() if not torch.equal(p, ref[n])]
    assert len(moved) > 0.5 * len(ref)  # lr 1e-5 updates survive in fp32; in bf16 most would round away


def test_cuda_inference_runs_in_bf16_with_token_budget_batches_and_matches_fp32(tmp_path):
    from kalm_core.config import ModelConfig
    from kalm_core.device import token_budget
    from kalm_core.model import Embedder
    from tests.models import WORDS, tiny_qwen2

    path = str(tiny_qwen2(tmp_path / "q"))
    mcfg = ModelConfig(base_model=path, query_max_len=64, passage_max_len=64)
    gpu = Embedder.for_inference(mcfg)
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).dtype == torch.bfloat16
    texts = [" ".join(WORDS[i % 30:i % 30 + 1 + i % 7] * (1 + i % 9)) for i in range(300)]
    got = gpu.encode(texts, max_tokens=token_budget(gpu.device))
    ref = Embedder.from_pretrained(mcfg, dtype=torch.float32).encode(texts, batch_size=16)
    cos = (torch.from_numpy(got) * torch.from_numpy(ref)).sum(-1)  # both L2-normalised
    assert got.shape == ref.shape and cos.min() > 0.99, cos.min()


def test_cuda_auto_budget_keeps_graphs_after_measuring_step_one_and_the_losses_do_not_change(tmp_path):
    from kalm_core.config import ModelConfig, Profile, TrainConfig
    from kalm_core.trainer import train
    from tests.models import tiny_qwen2

    mcfg = ModelConfig(base_model=str(tiny_qwen2(tmp_path / "q")), query_max_len=32, passage_max_len=32)
    snap = _snapshot(tmp_path / "b.parquet", n_batches=3)
    runs = {}
    for keep in (0, "auto"):
        tcfg = TrainConfig(group_size=4, dims=(64, 16), dim_weights=(1.0, 0.3), lr=1e-4, warmup_ratio=0.0, bf16=False,
                           checkpoint_every=0, grad_cache_chunk=64, chunk_tokens=64, keep_graph_tokens=keep,
                           compile=True)  # as kalm-mini runs it
        records = []
        train(Profile(name="t", model=mcfg, train=tcfg), snap, tmp_path / f"out{keep}", log=records.append, save=False)
        runs[keep] = records
    measured = [r for r in runs["auto"] if r["event"] == "memory_budget"]
    assert len(measured) == 1 and measured[0]["step"] == 1, measured
    # a tiny model on a large card: every chunk fits
    assert measured[0]["keep_graph_tokens"] > 10_000 and measured[0]["activation_bytes_per_token"] > 0
    losses = {k: [r["loss"] for r in v if r["event"] == "step"] for k, v in runs.items()}
    assert len(losses[0]) == 3 and max(abs(a - b) for a, b in zip(losses[0], losses["auto"])) <= 1e-4 * max(losses[0])
