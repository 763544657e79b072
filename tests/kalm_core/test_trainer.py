"""The trainer: bad input refused before training, resume after kill -9, non-finite loss, a Qwen2 decoder."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import polars as pl
import torch
from sentence_transformers import SentenceTransformer

from kalm_core.config import PROFILES, ModelConfig, Profile, TrainConfig
from kalm_core.model import Embedder
from kalm_core.trainer import EXIT_BAD_INPUT, EXIT_NON_FINITE, main
from tests.conftest import batch_snapshot

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, model_dir, **train) -> Path:
    settings = {"group_size": 4, "dims": (32, 16), "dim_weights": (1.0, 0.3), "lr": 1e-3, "checkpoint_every": 2,
                "bf16": False, "length_chunk": 4, **train}
    tcfg = TrainConfig(**settings)
    profile = Profile(name="test", model=ModelConfig(base_model=str(model_dir), query_max_len=16,
                                                     passage_max_len=32), train=tcfg)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(asdict(profile), default=list))
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_bad_input_is_refused_before_training(tmp_path, tiny_bert_dir, capsys):
    snap = batch_snapshot(tmp_path / "ok.parquet")
    cfg = config(tmp_path, tiny_bert_dir)
    out = tmp_path / "out"
    cases = {
        "does not exist or holds no config.json": ["--snapshot", snap, "--config", cfg, "--output", out,
                                                   "--model-path", tmp_path / "missing-model"],
        "batch file .* does not exist": ["--snapshot", tmp_path / "none.parquet", "--config", cfg, "--output", out],
    }
    (tmp_path / "bad.parquet").write_text("not parquet")
    cases["not a readable parquet file"] = ["--snapshot", tmp_path / "bad.parquet", "--config", cfg, "--output", out]
    pl.read_parquet(snap).head(0).write_parquet(tmp_path / "empty.parquet")
    cases["holds no rows"] = ["--snapshot", tmp_path / "empty.parquet", "--config", cfg, "--output", out]
    dup = pl.read_parquet(snap).with_columns(pl.lit("the same passage").alias("positive"))
    dup.write_parquet(tmp_path / "dup.parquet")
    cases["same positive passage twice"] = ["--snapshot", tmp_path / "dup.parquet", "--config", cfg, "--output", out]
    cases["changed or was damaged since"] = ["--snapshot", snap, "--sha256", "0" * 64, "--config", cfg,
                                             "--output", out]
    for message, args in cases.items():
        code, text = run(args, capsys)
        assert code == EXIT_BAD_INPUT and __import__("re").search(message, text), (message, text)

    big = config(tmp_path, tiny_bert_dir, dims=(64, 16), dim_weights=(1.0, 0.3))
    code, text = run(["--snapshot", snap, "--config", big, "--output", out], capsys)
    assert code == EXIT_BAD_INPUT and "larger than the model's hidden size 32" in text
    short = config(tmp_path, tiny_bert_dir, dims=(32, 16), dim_weights=(1.0,))
    code, text = run(["--snapshot", snap, "--config", short, "--output", out], capsys)
    assert code == EXIT_BAD_INPUT and "one weight per dim" in text
    assert not (out / "model").exists() and not (out / "checkpoints").exists()


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_resume_after_kill_gives_the_same_losses(tmp_path, tiny_bert_dir):
    snap = batch_snapshot(tmp_path / "b.parquet", n_batches=8)
    cfg = config(tmp_path, tiny_bert_dir)
    cmd = [sys.executable, "-m", "kalm_core.trainer", "--snapshot", str(snap), "--config", str(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(cmd + ["--output", str(straight)], check=True, env=env, cwd=ROOT, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--output", str(killed)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    for line in proc.stdout:
        if '"step": 5,' in line:  # checkpoint at 4 exists, step 5 done and logged
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "model").exists()
    assert (killed / "checkpoints" / "step-000004.pt").exists()
    # a new run (its own directory, as the training asset makes one per run) resumes from the interrupted one's
    # checkpoint, tokenising each step as the data loader reaches it
    new = tmp_path / "new"
    resumed = subprocess.run(cmd + ["--output", str(new), "--resume-from", str(killed)], check=True, env=env,
                             cwd=ROOT, capture_output=True, text=True)
    assert '"event": "resumed", "step": 4' in resumed.stdout
    a, b = _losses(straight), _losses(new)
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6, (a, b)
    assert (new / "model" / "modules.json").exists()
    # once the model is saved no checkpoint is left (keep_checkpoints 0): neither its own nor the interrupted run's
    assert not (new / "checkpoints").exists() and not (killed / "checkpoints").exists()
    assert (straight / "model" / "modules.json").exists() and not (straight / "checkpoints").exists()
    # run alone, the trainer computes the evaluation tasks' prompts itself (the profile's default MTEB tasks)
    prompts = json.loads((new / "model" / "config_sentence_transformers.json").read_text())["prompts"]
    assert {"SciFact-query", "NFCorpus-query"} <= prompts.keys()


def test_a_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, tiny_bert_dir, capsys):
    snap = batch_snapshot(tmp_path / "b.parquet")
    cfg = config(tmp_path, tiny_bert_dir, temperature=1e-45)  # logits overflow to inf: the loss is nan
    code, text = run(["--snapshot", snap, "--config", cfg, "--output", tmp_path / "out"], capsys)
    assert code == EXIT_NON_FINITE and "the loss is nan at step 1" in text and "Last good checkpoint" in text
    assert not (tmp_path / "out" / "model").exists()


def test_kalm_mini_recipe_on_a_tiny_qwen2(tmp_path, tiny_qwen2_dir, capsys):
    mini = PROFILES["kalm-mini"]
    profile = replace(mini, model=replace(mini.model, base_model=str(tiny_qwen2_dir), query_max_len=32,
                                          passage_max_len=32),
                      # compiled layers are checked against eager in their own test below
                      train=replace(mini.train, dims=(64, 32, 16, 8, 4), checkpoint_every=0, compile=False,
                                    gradient_checkpointing=True))
    assert (profile.train.temperature, profile.train.group_size, profile.model.pooling) == (0.01, 8, "mean")
    assert mini.train.bf16 and mini.train.compile and mini.train.chunk_tokens
    cfg = tmp_path / "mini.json"
    cfg.write_text(json.dumps(asdict(profile), default=list))
    snap = batch_snapshot(tmp_path / "b.parquet", n_batches=2, negatives=7)
    given = tmp_path / "prompts.json"  # as the training asset passes them: saved as given, nothing recomputed
    given.write_text(json.dumps({"Mine-query": "Instruct: find mine \n Query: "}))
    code, text = run(["--snapshot", snap, "--config", cfg, "--output", tmp_path / "out", "--max-steps", 2,
                      "--task-prompts", given], capsys)
    assert code == 0, text
    prompts = json.loads((tmp_path / "out" / "model" / "config_sentence_transformers.json").read_text())["prompts"]
    assert "Mine-query" in prompts and not any(k.startswith(("SciFact", "NFCorpus")) for k in prompts)
    steps = [json.loads(x) for x in text.splitlines() if x.startswith('{"event": "step"')]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    model_dir = tmp_path / "out" / "model"
    reloaded = Embedder.from_pretrained(profile.model, str(model_dir))
    ours = reloaded.encode(["sort a list", "open a file"])
    st = SentenceTransformer(str(model_dir), device="cpu").encode(["sort a list", "open a file"])
    assert ours.shape == (2, 64) and abs(ours - st).max() <= 1e-5


def test_a_bf16_checkpoint_trains_with_fp32_master_weights_that_move(tmp_path, tiny_qwen2_dir):
    from kalm_core.batch_data import load_batches
    from kalm_core.trainer import build_model, train

    bf16_dir = tmp_path / "bf16"
    Embedder.from_pretrained(ModelConfig(), str(tiny_qwen2_dir)).model.to(torch.bfloat16).save_pretrained(bf16_dir)
    for f in tiny_qwen2_dir.iterdir():
        if "token" in f.name or f.name.endswith(".txt") or f.name == "vocab.json" or f.name == "merges.txt":
            (bf16_dir / f.name).write_bytes(f.read_bytes())
    assert json.loads((bf16_dir / "config.json").read_text())["dtype"] == "bfloat16"
    mcfg = ModelConfig(base_model=str(bf16_dir), query_max_len=16, passage_max_len=16)
    tcfg = TrainConfig(group_size=4, dims=(64, 16), dim_weights=(1.0, 0.3), lr=1e-5, warmup_ratio=0.0, bf16=True, max_steps=1,
                       checkpoint_every=0, length_chunk=4)
    model = build_model(mcfg, tcfg, None, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    assert {p.dtype for p in before.values()} == {torch.float32}
    snap = batch_snapshot(tmp_path / "b.parquet", n_batches=1, negatives=3)
    assert load_batches(snap, 4)  # a valid snapshot for the group size
    out = tmp_path / "out"
    train(Profile(name="t", model=mcfg, train=tcfg), snap, out, log=lambda r: None)
    after = Embedder.from_pretrained(mcfg, str(out / "model"), dtype=torch.float32).model
    moved = [n for n, p in after.named_parameters() if not torch.equal(p, before[n])]
    # at lr 1e-5 a bf16 weight (8 bits of mantissa) would not move; fp32 master weights do
    assert len(moved) > 0.5 * len(before), f"{len(moved)} of {len(before)} tensors moved"


def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_qwen2_dir):
    from kalm_core.grad_cache import prepare
    from kalm_core.trainer import compile_layers

    mcfg = ModelConfig(base_model=str(tiny_qwen2_dir), query_max_len=16, passage_max_len=16)
    texts = ["sort a list of numbers", "open a file and read it", "attention layer pooling", "vector index table"]
    results = []
    for compiled in (False, True):
        emb = Embedder.from_pretrained(mcfg)
        emb.tokenizer.padding_side = "right"
        if compiled:
            assert compile_layers(emb.model) == 2  # the two decoder layers, found without naming them
        chunks, _, _ = prepare(emb.tokenizer(texts)["input_ids"], emb.tokenizer.pad_token_id, 8, "cpu")
        out = emb(*chunks[0])
        out.pow(2).sum(-1).mul(torch.arange(4.0)).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in emb.named_parameters() if p.grad is not None}))
    (eager, g_eager), (comp, g_comp) = results
    assert torch.allclose(eager, comp, atol=1e-5) and g_eager.keys() == g_comp.keys()
    assert max((g_eager[k] - g_comp[k]).abs().max().item() for k in g_eager) <= 1e-4


def test_false_negative_masking_reaches_the_loss_and_is_counted_per_step(tmp_path, tiny_bert_dir, capsys):
    """A margin of -2 masks every in-batch candidate but the positive (cosines are above the positive - 2): the
    loss is exactly 0 and each step logs B * (B * G - 1) masked; +2 masks none."""
    snap = batch_snapshot(tmp_path / "b.parquet")
    logged = {}
    for margin in (-2.0, 2.0):
        cfg = config(tmp_path, tiny_bert_dir, mask_false_negatives=margin, checkpoint_every=0)
        out = tmp_path / f"out{margin}"
        code, text = run(["--snapshot", snap, "--config", cfg, "--output", out, "--max-steps", 2], capsys)
        assert code == 0, text
        logged[margin] = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    for step in logged[-2.0]:
        assert step["loss"] == 0.0 and step["masked_false_negatives"] == step["pairs"] * (step["pairs"] * 4 - 1)
    assert all(s["loss"] > 0 and s["masked_false_negatives"] == 0 for s in logged[2.0])


def test_a_new_run_finds_the_interrupted_run_with_its_snapshot_and_settings(tmp_path):
    from kalm_core import checkpoint

    profile = PROFILES["demo"]
    key = checkpoint.resume_key("abc", profile)
    assert checkpoint.resume_key("abd", profile) != key  # another snapshot
    assert checkpoint.resume_key("abc", replace(profile, train=replace(profile.train, lr=1.0))) != key

    def run(name, key, model=False, ckpt=True):
        d = tmp_path / name
        (d / "checkpoints").mkdir(parents=True)
        (d / checkpoint.RESUME_KEY).write_text(key)
        if ckpt:
            (d / "checkpoints" / "step-000010.pt").write_bytes(b"x")
        if model:
            (d / "model").mkdir()
        return d

    run("20261201-000000-a", key)  # interrupted, older
    newest = run("20261202-000000-b", key)  # interrupted, the one to resume
    run("20261203-000000-c", key, model=True)  # finished
    run("20261204-000000-d", checkpoint.resume_key("other", profile))  # another snapshot
    run("20261205-000000-e", key, ckpt=False)  # killed before its first checkpoint
    current = run("20261206-000000-f", key, ckpt=False)
    assert checkpoint.interrupted_run(tmp_path, key, exclude=current) == newest
    assert checkpoint.prune(newest / "checkpoints", 0) == 1 and not (newest / "checkpoints").exists()
    assert checkpoint.interrupted_run(tmp_path, key, exclude=current) == tmp_path / "20261201-000000-a"
