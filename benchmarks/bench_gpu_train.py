"""GPU benchmark of the kalm-mini recipe: a Qwen2-0.5B-sized model (random init), bf16, seq 512, per-device
batch 48, group 8 (1 positive + 7 hard negatives), GradCache + gradient checkpointing, 20 steps.

    python benchmarks/bench_gpu_train.py [--steps 20] [--chunk 48] [--peak-tflops 989]

Prints tokens/s and model FLOPs utilisation against the H100 dense bf16 peak (989 TFLOP/s). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402
import torch  # noqa: E402

from kalm_core.config import PROFILES  # noqa: E402
from kalm_core.trainer import train  # noqa: E402


def qwen2_05b(path: Path) -> Path:
    """Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, FFN 4864), random weights, and a byte-level
    tokenizer whose vocabulary is padded to Qwen2's 151,936 rows."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2Model(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def snapshot(path: Path, steps: int, batch: int, group: int, seq: int) -> Path:
    """Texts of exactly ~seq tokens for this tokenizer (one byte-level token per character block)."""
    rows = []
    for b in range(steps):
        for p in range(batch):
            k = b * batch + p
            text = lambda tag: f"{tag}{k} " + "abcdefgh " * seq  # at least seq tokens; truncated to seq  # noqa: E731
            rows.append({"batch_id": b, "position": p, "query": text("q"), "instruction": "Retrieve the passage",
                         "positive": text("p"), "negatives": [text(f"n{j}_") for j in range(group - 1)],
                         "task_type": "retrieval"})
    pl.DataFrame(rows).write_parquet(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=48, help="GradCache chunk (texts per forward/backward)")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_train needs a CUDA GPU; none is visible here")
    mini = PROFILES["kalm-mini"]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = qwen2_05b(Path(tmp) / "qwen2-0.5b")
        profile = replace(mini, model=replace(mini.model, base_model=str(model_dir), query_max_len=args.seq,
                                              passage_max_len=args.seq),
                          batch=replace(mini.batch, per_device_batch=args.batch),
                          train=replace(mini.train, max_steps=args.steps, checkpoint_every=0,
                                        grad_cache_chunk=args.chunk, warmup_ratio=0.0))
        snap = snapshot(Path(tmp) / "b.parquet", args.steps, args.batch, profile.train.group_size, args.seq)
        records = []
        train(profile, snap, Path(tmp) / "out", log=records.append)
        from transformers import AutoModel

        model = AutoModel.from_pretrained(model_dir)
        n_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    steps = [r for r in records if r["event"] == "step"]
    steady = steps[len(steps) // 4:]  # skip warm-up steps (allocator, kernels)
    tok_s = sum(r["tokens_per_s"] for r in steady) / len(steady)
    flops_per_token = 6 * n_params  # forward + backward, non-embedding weights; GradCache's extra forward not counted
    mfu = tok_s * flops_per_token / (args.peak_tflops * 1e12)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "params_non_embedding": n_params, "steps": len(steps),
                      "per_device_batch": args.batch, "group": profile.train.group_size, "seq": args.seq,
                      "final_loss": steps[-1]["loss"], "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}))
    print(f"tokens/s = {tok_s:,.0f}")
    print(f"MFU = {mfu:.1%} of {args.peak_tflops:.0f} TFLOP/s (6 x {n_params / 1e6:.0f}M params per token)")


if __name__ == "__main__":
    main()
