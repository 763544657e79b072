"""GPU benchmark of the kalm-mini recipe against the sentence-transformers peer, the same work in one run.

    python benchmarks/bench_gpu_train.py [--steps 8] [--runs 3] [--warmup 3] [--shape both] [--levers [WORD ...]]
                                         [--json F]
    python benchmarks/bench_gpu_train.py --tiny      # a tiny Qwen2 on the CPU: checks the arithmetic, not the speed

A Qwen2-0.5B-shaped model (random init; 358M non-embedding parameters), per-device batch 48, group 8 (1 positive +
7 hard negatives), bf16 autocast over fp32 weights, InfoNCE at tau 0.01, Matryoshka 896/512/256/128/64.
- ours: kalm_core.trainer.train with the kalm-mini profile's training settings (GradCache over token-budget chunks,
  the chunks that fit in memory keeping their graph, compiled layers, no gradient checkpointing); `--levers` also
  times each lever alone, one added at a time;
- the peer: sentence-transformers' MatryoshkaLoss(CachedMultipleNegativesRankingLoss(scale 100, mini-batch 48)),
  forward under bf16 autocast as accelerate does in its Trainer, no gradient checkpointing (as measured in
  ../shared/gpu/st_peer_gpu.py).
Two shapes: `fixed` (every text 512 tokens) and `mixed` (queries 8-64 tokens, passages 32-512, log-uniform), where
padding is what costs. Both sides are timed alike (benchmarks/timing.py): per-step end stamps after the loss is
synced, steady state after `--warmup` steps, the median of `--runs` runs; tokens are real (non-padding) tokens.
Every run also prints its step-1 loss (same seed and data: equal up to bf16 rounding) and peak GPU memory.
Last two lines: `MFU = X %` (ours, fixed shape, 6 x non-embedding params per token against `--peak-tflops`, 989
for the H100/H200 dense bf16 peak) and `RATIO gpu train tokens/s ours/sentence-transformers = X` (fixed shape).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402
import torch  # noqa: E402

from benchmarks.timing import median_rate, steady_rate  # noqa: E402
from kalm_core.config import PROFILES  # noqa: E402
from kalm_core.trainer import train  # noqa: E402


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def qwen2_05b(path: Path, tiny: bool = False) -> Path:
    """Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, FFN 4864), random weights, and a byte-level
    tokenizer whose vocabulary is padded to Qwen2's 151,936 rows; `tiny`: 2 layers of 64 for a CPU check."""
    from transformers import Qwen2Config, Qwen2Model

    tok = _tokenizer()
    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512) if tiny else
             dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936))
    cfg = Qwen2Config(max_position_embeddings=32768, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **shape)
    Qwen2Model(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _text(tag: str, n_tokens: int) -> str:
    return f"{tag} " + "abcdefgh " * n_tokens  # at least n_tokens tokens; the trainer truncates to the max length


def snapshot(path: Path, steps: int, batch: int, group: int, seq: int, mixed: bool = False, seed: int = 0) -> Path:
    """`fixed`: every text `seq` tokens. `mixed`: queries 8-64 tokens, passages 32-`seq` (log-uniform)."""
    rng = random.Random(seed)
    span = lambda lo, hi: int(math.exp(rng.uniform(math.log(lo), math.log(hi))))  # noqa: E731
    q_len = (lambda: span(8, 64)) if mixed else (lambda: seq)
    p_len = (lambda: span(32, seq)) if mixed else (lambda: seq)
    rows = []
    for b in range(steps):
        for p in range(batch):
            k = b * batch + p
            rows.append({"batch_id": b, "position": p, "query": _text(f"q{k}", q_len()),
                         "instruction": "Retrieve the passage", "positive": _text(f"p{k}", p_len()),
                         "negatives": [_text(f"n{k}_{j}", p_len()) for j in range(group - 1)],
                         "task_type": "retrieval"})
    pl.DataFrame(rows).write_parquet(path)
    return path


def ours(profile, snap: Path, out: Path, warmup: int) -> dict:
    """One run of our trainer: steady tokens/s, step 1's loss (the same seed and data give the same loss whatever
    the levers, up to bf16 rounding), peak GPU memory."""
    records: list[dict] = []
    _fresh_memory_stats()
    train(profile, snap, out, log=records.append, save=False)
    steps = [r for r in records if r["event"] == "step"]
    kept = [r["keep_graph_tokens"] for r in records if r["event"] == "memory_budget"]
    return {"tokens_per_s": steady_rate([r["t"] for r in steps], [r["tokens"] for r in steps], warmup),
            "first_loss": steps[0]["loss"], "peak_gib": _peak_gib(),
            "keep_graph_tokens": kept[-1] if kept else profile.train.keep_graph_tokens}


def _fresh_memory_stats() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def peer(model_dir: Path, snap: Path, batch: int, group: int, seq: int, dims: list[int], weights: list[float],
         warmup: int) -> dict:
    """sentence-transformers' own model and losses on the same texts, pre-tokenised as our trainer does."""
    from sentence_transformers import SentenceTransformer, losses, models

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rows = pl.read_parquet(snap).sort("batch_id", "position")
    cols = {"anchor": [f"Instruct: {i} \n Query: {q}" for i, q in zip(rows["instruction"], rows["query"])],
            "positive": rows["positive"].to_list()}
    negatives = rows["negatives"].to_list()
    for j in range(group - 1):
        cols[f"negative_{j + 1}"] = [n[j] for n in negatives]
    tr = models.Transformer(str(model_dir), max_seq_length=seq)
    model = SentenceTransformer(modules=[tr, models.Pooling(tr.auto_model.config.hidden_size, "mean"),
                                         models.Normalize()], device=dev)
    inner = losses.CachedMultipleNegativesRankingLoss(model, scale=100.0, mini_batch_size=batch)
    loss = losses.MatryoshkaLoss(model, inner, matryoshka_dims=dims, matryoshka_weights=weights)
    if dev == "cuda":  # as accelerate does under the Trainer's bf16=True: GradCache's re-forward runs in bf16 too
        model.forward = torch.autocast("cuda", dtype=torch.bfloat16)(model.forward)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    n_steps = rows["batch_id"].n_unique()
    steps = []
    for s in range(n_steps):
        feats = [{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in model.tokenize(texts[s * batch:(s + 1) * batch]).items()}
                 for texts in cols.values()]
        steps.append((feats, sum(int(f["attention_mask"].sum()) for f in feats)))
    model.train()
    _fresh_memory_stats()
    stamps, tokens, first = [], [], None
    for feats, n_tokens in steps:
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            value = loss(feats, None)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = value.item()  # the host sync our trainer does every step too
        stamps.append(time.perf_counter())
        tokens.append(n_tokens)
        first = value if first is None else first
    return {"tokens_per_s": steady_rate(stamps, tokens, warmup), "first_loss": first, "peak_gib": _peak_gib()}


# the levers, one added at a time (each row keeps the ones above it; the kalm-mini profile adds the kept graphs),
# then one variant of the profile
LEVERS = {
    "GradCache 48 texts + checkpointing (before)": dict(grad_cache_chunk=48, chunk_tokens=None, keep_graph_tokens=0,
                                                        gradient_checkpointing=True, compile=False),
    "- gradient checkpointing": dict(grad_cache_chunk=48, chunk_tokens=None, keep_graph_tokens=0,
                                     gradient_checkpointing=False, compile=False),
    "+ token-budget chunks": dict(keep_graph_tokens=0, gradient_checkpointing=False, compile=False),
    "+ torch.compile of the layers": dict(keep_graph_tokens=0),
    "kalm-mini, but chunks of 49,152 tokens": dict(chunk_tokens=49152),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3, help="runs of each side (0: only the --levers runs)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--shape", choices=["fixed", "mixed", "both"], default="both")
    ap.add_argument("--levers", nargs="*", metavar="WORD",
                    help="also time each lever alone (one run each) for the table; with words, only the levers "
                         "whose name holds one of them (e.g. --levers compile)")
    ap.add_argument("--budget-s", type=float, default=float("inf"), help="skip the lever runs past this many seconds")
    ap.add_argument("--json", type=Path, help="write every run's numbers here as they come")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100/H200: 989)")
    ap.add_argument("--tiny", action="store_true", help="a tiny Qwen2, small batches, CPU allowed")
    args = ap.parse_args()
    began = time.perf_counter()
    if args.tiny:
        args.batch, args.seq, args.steps = 4, 32, max(args.warmup + 2, 5)
    elif not torch.cuda.is_available():
        sys.exit("bench_gpu_train needs a CUDA GPU (or --tiny to check it on the CPU)")
    mini = PROFILES["kalm-mini"]
    dims = [64, 32, 16, 8, 4] if args.tiny else list(mini.train.dims)
    shapes = ["fixed", "mixed"] if args.shape == "both" else [args.shape]
    log: dict = {"runs": []}

    def record(**row) -> None:
        log["runs"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(log, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = qwen2_05b(Path(tmp) / "qwen2", tiny=args.tiny)
        from transformers import AutoModel

        n_params = sum(p.numel() for n, p in AutoModel.from_pretrained(model_dir).named_parameters()
                       if "embed_tokens" not in n)
        train_cfg = replace(mini.train, dims=tuple(dims), max_steps=args.steps, checkpoint_every=0, warmup_ratio=0.0,
                            bf16=torch.cuda.is_available())
        if args.tiny:  # the profile's budgets scaled to the tiny texts ("auto" keeps no graph off CUDA)
            train_cfg = replace(train_cfg, grad_cache_chunk=4, chunk_tokens=4 * args.seq,
                                keep_graph_tokens=8 * args.seq)
        profile = replace(mini, model=replace(mini.model, base_model=str(model_dir), query_max_len=args.seq,
                                              passage_max_len=args.seq),
                          batch=replace(mini.batch, per_device_batch=args.batch), train=train_cfg)
        log["setup"] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                        "params_non_embedding": n_params, "steps": args.steps, "warmup_steps": args.warmup,
                        "per_device_batch": args.batch, "group": train_cfg.group_size, "seq": args.seq,
                        "ours": {k: getattr(train_cfg, k) for k in ("grad_cache_chunk", "chunk_tokens",
                                                                      "keep_graph_tokens", "gradient_checkpointing",
                                                                      "compile")}}
        snaps = {shape: snapshot(Path(tmp) / f"{shape}.parquet", args.steps, args.batch, train_cfg.group_size,
                                 args.seq, mixed=shape == "mixed") for shape in shapes}
        results: dict[str, tuple[float, float]] = {}
        for shape in shapes:
            ours_runs, peer_runs = [], []
            for r in range(args.runs):  # interleaved, so drift hurts both sides alike
                row = ours(profile, snaps[shape], Path(tmp) / f"out-{shape}-{r}", args.warmup)
                record(shape=shape, trainer="ours", run=r, **row)
                ours_runs.append(row["tokens_per_s"])
                row = peer(model_dir, snaps[shape], args.batch, train_cfg.group_size, args.seq, dims,
                           list(train_cfg.dim_weights), args.warmup)
                record(shape=shape, trainer="sentence-transformers", run=r, **row)
                peer_runs.append(row["tokens_per_s"])
            if args.runs:
                results[shape] = (median_rate(ours_runs), median_rate(peer_runs))
        levers: dict[tuple[str, str], float] = {}
        chosen = {n: o for n, o in LEVERS.items() if not args.levers or any(w in n for w in args.levers)}
        for shape in shapes if args.levers is not None else []:
            for name, overrides in chosen.items():
                if shape == "fixed" and name == "+ token-budget chunks":
                    continue  # every text is `seq` tokens: the same chunks as 48 texts
                if time.perf_counter() - began > args.budget_s:
                    print(f"skipped lever {name!r} ({shape}): past --budget-s", flush=True)
                    continue
                lever = replace(profile, train=replace(train_cfg, **overrides))
                if args.tiny and "chunk_tokens" in overrides:
                    lever = replace(lever, train=replace(lever.train, chunk_tokens=8 * args.seq))
                row = ours(lever, snaps[shape], Path(tmp) / f"lever-{shape}-{len(levers)}", args.warmup)
                record(shape=shape, trainer="ours", lever=name, run=0, **row)
                levers[(shape, name)] = row["tokens_per_s"]

    print(f"\n{'shape':6s} {'trainer':66s} {'tokens/s':>10s} {'vs ST':>6s}")
    for (s, name), rate in levers.items() if not results else []:
        print(f"{s:6s} {'ours: ' + name:66s} {rate:>10,.0f}")
    for shape, (o, p) in results.items():
        for (s, name), rate in levers.items():
            if s == shape:
                print(f"{shape:6s} {'ours: ' + name:66s} {rate:>10,.0f} {rate / p:>6.2f}")
        print(f"{shape:6s} {'ours: kalm-mini profile (median of runs)':66s} {o:>10,.0f} {o / p:>6.2f}")
        print(f"{shape:6s} {'sentence-transformers (median of runs)':66s} {p:>10,.0f} {1:>6.2f}")
    print(json.dumps(log["setup"]))
    if not results:
        return
    if "mixed" in results:
        o, p = results["mixed"]
        print(f"RATIO gpu train tokens/s ours/sentence-transformers (mixed lengths) = {o / p:.2f}")
    shape = "fixed" if "fixed" in results else shapes[-1]
    o, p = results[shape]
    print(f"MFU = {100 * o * 6 * n_params / (args.peak_tflops * 1e12):.2f} % ({shape} shape, 6 x {n_params / 1e6:.0f}M "
          f"params per token, {args.peak_tflops:.0f} TFLOP/s peak)")
    print(f"RATIO gpu train tokens/s ours/sentence-transformers = {o / p:.2f}")


if __name__ == "__main__":
    main()
