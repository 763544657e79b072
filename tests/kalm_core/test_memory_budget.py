"""A GradCache step's memory: the kept-graph budget's arithmetic, the out-of-memory retreat (kept graphs, then chunk
size), and a trainer whose steps do not change when chunks keep their graph or a step is retried."""

import json
from dataclasses import asdict

import pytest
import torch

from kalm_core.config import PROFILES, ModelConfig, Profile, TrainConfig, profile_from_dict
from kalm_core.memory_budget import MemoryBudget, fit_tokens
from tests.conftest import batch_snapshot

GIB = 2**30


def test_fit_tokens_keeps_what_fits_beside_weights_optimizer_and_gradients():
    # an 80 GiB card at 80 %: 64 GiB, less 8 held and 2 of gradients, at 1 MiB per token -> 54 Ki tokens
    assert fit_tokens(80 * GIB, 8 * GIB, 2 * GIB, 2**20, 0.8) == 54 * 1024
    assert fit_tokens(16 * GIB, 12 * GIB, 2 * GIB, 2**20, 0.8) == 0  # nothing to spare: plain GradCache
    assert fit_tokens(80 * GIB, 8 * GIB, 2 * GIB, 0, 0.8) == 0  # nothing measured


def test_a_budget_is_a_number_of_tokens_or_auto_and_auto_is_none_off_cuda():
    cpu = torch.device("cpu")
    assert MemoryBudget(4096, cpu).keep_tokens == 4096
    auto = MemoryBudget("auto", cpu)
    auto.step_started()
    auto.backward_done()
    assert auto.keep_tokens == 0 and auto.step_done(largest_chunk=512) is None
    for bad in (-1, "all", 1.5):
        with pytest.raises(ValueError, match="keep_graph_tokens"):
            MemoryBudget(bad, cpu)


def test_auto_measures_step_one_on_a_card(monkeypatch):
    from types import SimpleNamespace

    # step 1 on an 80 GiB card: 4 GiB of weights before it, a peak of 30 GiB for a largest chunk of 24 Ki tokens,
    # 6 GiB after the backward (2 of gradients), 12 GiB held after the optimizer step (+ Adam's moments)
    allocated = iter([4 * GIB, 6 * GIB, 12 * GIB])
    for name, fn in {"synchronize": lambda d: None, "reset_peak_memory_stats": lambda d: None,
                     "memory_allocated": lambda d: next(allocated), "max_memory_allocated": lambda d: 30 * GIB,
                     "get_device_properties": lambda d: SimpleNamespace(total_memory=80 * GIB)}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    budget = MemoryBudget("auto", torch.device("cuda", 0))
    assert budget.keep_tokens == 0  # step 1 runs as plain GradCache
    budget.step_started()
    budget.backward_done()
    event = budget.step_done(largest_chunk=24 * 1024)
    # 24 GiB of activations for 24 Ki tokens: 1 MiB per token; 85 % of the card, less 12 held and 2 of gradients
    assert event["activation_bytes_per_token"] == 2**20 and event["grads_gib"] == 2
    assert budget.keep_tokens == (68 - 12 - 2) * 1024 == event["keep_graph_tokens"]  # two 24 Ki chunks, not three
    assert budget.step_done(largest_chunk=24 * 1024) is None  # measured once


def test_out_of_memory_gives_back_kept_graphs_then_chunk_size_then_says_what_to_change():
    oom = torch.OutOfMemoryError("CUDA out of memory")
    budget = MemoryBudget(1000, torch.device("cpu"), chunk_tokens=800)
    sizes, longest = [200, 200, 300], 100  # padded tokens of the step's chunks; its longest text
    steps = [budget.shrink(oom, sizes, longest) for _ in range(6)]
    assert [(e["keep_graph_tokens"], e["chunk_tokens"]) for e in steps] == [
        (500, 800), (250, 800), (0, 800),  # kept graphs first, none once below the smallest chunk
        (0, 400), (0, 200), (0, 100)]  # then the chunk size, down to the longest text
    with pytest.raises(torch.OutOfMemoryError, match="gradient_checkpointing") as raised:
        budget.shrink(oom, [100, 100, 100], longest)  # one text per chunk, nothing kept: nothing left to give
    assert raised.value.__cause__ is oom
    with pytest.raises(torch.OutOfMemoryError, match="under DDP"):  # another rank could be inside a collective
        MemoryBudget(1000, torch.device("cpu"), distributed=True).shrink(oom, sizes, longest)


def _train(tmp_path, model_dir, name, **overrides):
    from kalm_core.trainer import train

    mcfg = ModelConfig(base_model=str(model_dir), pooling="mean", query_max_len=16, passage_max_len=32)
    tcfg = TrainConfig(group_size=4, dims=(64, 16), dim_weights=(1.0, 0.3), lr=1e-3, bf16=False, checkpoint_every=0,
                       grad_cache_chunk=64, chunk_tokens=96, **overrides)
    records = []
    train(Profile(name="t", model=mcfg, train=tcfg), tmp_path / "b.parquet", tmp_path / name, log=records.append,
          save=False)
    return [r["loss"] for r in records if r["event"] == "step"], [r for r in records if r["event"] == "memory_budget"]


def test_kept_graphs_and_an_out_of_memory_retry_leave_every_step_unchanged(tmp_path, tiny_qwen2_dir, monkeypatch):
    import kalm_core.trainer as trainer

    batch_snapshot(tmp_path / "b.parquet", n_batches=3, negatives=3)
    real, calls = trainer.grad_cache_backward, []

    def out_of_memory_above(limit):
        def backward(encoder, *args):
            keep = args[-1]
            loss = real(encoder, *args)  # the gradients land before the failure, as on a card mid-pass
            norm = sum(p.grad.double().pow(2).sum() for p in encoder.parameters() if p.grad is not None) ** 0.5
            calls.append((keep, float(norm)))
            if keep > limit:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return loss
        return backward

    monkeypatch.setattr(trainer, "grad_cache_backward", out_of_memory_above(10**9))
    plain, _ = _train(tmp_path, tiny_qwen2_dir, "plain")
    kept, events = _train(tmp_path, tiny_qwen2_dir, "kept", keep_graph_tokens=10**6)
    assert len(plain) == 3 and events == []
    assert max(abs(a - b) for a, b in zip(plain, kept)) <= 1e-5 * max(plain)
    plain_norms = [n for _, n in calls[:3]]

    calls.clear()
    monkeypatch.setattr(trainer, "grad_cache_backward", out_of_memory_above(200))
    retried, events = _train(tmp_path, tiny_qwen2_dir, "retried", keep_graph_tokens=800)
    assert [e["keep_graph_tokens"] for e in events] == [400, 200] and {e["step"] for e in events} == {1}
    assert [k for k, _ in calls] == [800, 400, 200, 200, 200]  # step 1 retreats twice; then the smaller budget
    # each attempt starts from no gradients (the failed ones' are dropped): the norms and losses of the plain run
    got = [n for k, n in calls if k <= 200]
    assert max(abs(a - b) / b for a, b in zip(got, plain_norms)) <= 1e-4, (got, plain_norms)
    assert max(abs(a - b) for a, b in zip(plain, retried)) <= 1e-5 * max(plain)

    # a card too small for the profile's chunks: they halve until they fit, and the steps stay the same
    def out_of_memory_over_48_token_chunks(encoder, q_chunks, q_order, p_chunks, p_order, *rest):
        loss = real(encoder, q_chunks, q_order, p_chunks, p_order, *rest)
        if max(ids.numel() for ids, _ in (*q_chunks, *p_chunks)) > 48:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return loss

    monkeypatch.setattr(trainer, "grad_cache_backward", out_of_memory_over_48_token_chunks)
    smaller, events = _train(tmp_path, tiny_qwen2_dir, "smaller")
    assert [e["chunk_tokens"] for e in events] == [48] and events[0]["step"] == 1
    assert max(abs(a - b) for a, b in zip(plain, smaller)) <= 1e-4 * max(plain)  # other padding, same math


def test_kalm_mini_sizes_its_kept_graphs_by_itself():
    mini = PROFILES["kalm-mini"]
    assert mini.train.keep_graph_tokens == "auto" and mini.train.grad_cache_chunk
    sent = json.loads(json.dumps(asdict(mini), default=list))  # as the trainer's process receives it
    assert profile_from_dict(sent).train == mini.train
