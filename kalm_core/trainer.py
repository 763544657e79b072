"""Fine-tune the embedder with InfoNCE + Matryoshka over the batch snapshot (KaLM §3.3).

Run by the training/embedder asset (assets/training.py), or by hand:

    python -m kalm_core.trainer --snapshot data/snapshots/batches-<hash>.parquet --config run/train_config.json \
        --output data/models/<run>
    torchrun --nproc_per_node 8 -m kalm_core.trainer ...    # DDP: cross-device negatives, one global batch per step

Each global batch of the snapshot is one optimisation step; device r takes rows [r*B, (r+1)*B) of it. Progress
goes to stdout as JSON lines (and to <output>/train_log.jsonl); checkpoints every N steps let a killed run resume
with the same per-step losses. The model is written as a sentence-transformers directory, <output>/model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from transformers import get_linear_schedule_with_warmup

from kalm_core import checkpoint
from kalm_core.batch_data import BatchFileError, load_batches
from kalm_core.config import ModelConfig, Profile, TrainConfig, bf16_supported, profile_from_dict
from kalm_core.grad_cache import ChunkedEncoder, grad_cache_backward, prepare
from kalm_core.memory_budget import MemoryBudget
from kalm_core.losses import InfoNCELoss, MatryoshkaLoss
from kalm_core.losses.same_text import same_text_mask
from kalm_core.model import Embedder, ModelLoadError
from kalm_core.prompts import eval_task_prompts

EXIT_NON_FINITE = 3
EXIT_BAD_INPUT = 2


class NonFiniteLoss(RuntimeError):
    pass


# -- setup ----------------------------------------------------------------------------------------------------------
def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); torchrun sets WORLD_SIZE, gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- model ----------------------------------------------------------------------------------------------------------
def build_model(mcfg: ModelConfig, tcfg: TrainConfig, model_path: str | None, device: torch.device) -> Embedder:
    # fp32 master weights whatever the checkpoint's dtype: Qwen2-0.5B is stored in bf16, where AdamW's updates at
    # lr 1e-5 mostly round away; bf16 is for the math only (autocast)
    embedder = Embedder.from_pretrained(mcfg, model_path, dtype=torch.float32)
    embedder.tokenizer.padding_side = "right"  # pooling reads the mask; right padding everywhere
    for name, param in embedder.model.named_parameters():
        if name.startswith("pooler."):  # BERT's pooler output is never used: frozen, so DDP expects no gradient
            param.requires_grad_(False)
    if tcfg.gradient_checkpointing:
        if hasattr(embedder.model, "activation_checkpointing_enable"):  # transformers 5 renamed it
            embedder.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            embedder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tcfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        embedder.model = get_peft_model(embedder.model, LoraConfig(r=tcfg.lora_rank, lora_alpha=2 * tcfg.lora_rank,
                                                                   target_modules="all-linear", lora_dropout=0.0))
    if tcfg.compile:
        compile_layers(embedder.model)
    return embedder.to(device)


def compile_layers(model: torch.nn.Module) -> int:
    """torch.compile every block of the model's layer stack in place (regional compilation): the blocks share one
    class, so one compiled graph serves all of them, and the compile costs seconds instead of minutes. It fuses
    what eager mode runs as separate memory-bound kernels: norms, rotary, SiLU-and-gate, residual adds."""
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1
              and len({type(c) for c in m}) == 1]
    if not stacks:
        raise ValueError(f"compile: no stack of identical layers found in {type(model).__name__}")
    layers = max(stacks, key=len)
    for layer in layers:
        layer.compile()
    return len(layers)


def build_loss(tcfg: TrainConfig, hidden_size: int) -> MatryoshkaLoss:
    """Validated before any step: dims within the hidden size, one weight per dim."""
    return MatryoshkaLoss(InfoNCELoss(tcfg.temperature, false_negative_margin=tcfg.mask_false_negatives),
                          tcfg.dims, tcfg.dim_weights, hidden_size=hidden_size)


# -- data -----------------------------------------------------------------------------------------------------------
class TokenizedSteps(torch.utils.data.Dataset):
    """Step i -> this device's (query ids, passage ids) of global batch i mod the batch count, tokenised when the
    data loader asks for it (a snapshot of millions of pairs starts training at once and holds only its texts), and
    the mask of the batch's repeated texts over the scores the loss computes (None when all are distinct):
    the global batch's when the loss gathers every device's embeddings, else this device's share."""

    def __init__(self, batches, tokenizer, mcfg: ModelConfig, rank: int, world: int, epochs: int = 1,
                 gathered: bool = True):
        self.batches, self.tok, self.mcfg, self.rank, self.world, self.epochs = (batches, tokenizer, mcfg, rank,
                                                                                 world, epochs)
        self.gathered = gathered or world == 1

    def __len__(self) -> int:
        return len(self.batches) * self.epochs

    def __getitem__(self, step: int) -> tuple[list, list]:
        b = self.batches[step % len(self.batches)]
        per = len(b.queries) // self.world
        group = len(b.passages) // len(b.queries)
        qs = b.queries[self.rank * per:(self.rank + 1) * per]
        ps = b.passages[self.rank * per * group:(self.rank + 1) * per * group]
        mask = same_text_mask(b.queries[:per * self.world], b.passages[:per * self.world * group]) \
            if self.gathered else same_text_mask(qs, ps)
        return (self.tok(qs, truncation=True, max_length=self.mcfg.query_max_len)["input_ids"],
                self.tok(ps, truncation=True, max_length=self.mcfg.passage_max_len)["input_ids"],
                None if mask is None else torch.from_numpy(mask))


def step_loader(steps: TokenizedSteps, start: int, total: int, device: torch.device):
    """Steps start..total-1 in order; on a GPU one worker process tokenises ahead of the step being trained."""
    workers = 1 if device.type == "cuda" else 0  # on the CPU a worker would only compete for the same cores
    # its own generator: an iterator draws a seed when it starts, which must not advance the global stream that a
    # resumed run restores from its checkpoint (dropout would then differ from the uninterrupted run)
    return torch.utils.data.DataLoader(steps, batch_size=None, sampler=range(start, total), num_workers=workers,
                                       prefetch_factor=4 if workers else None, generator=torch.Generator())


# -- the loop -------------------------------------------------------------------------------------------------------
def train(profile: Profile, snapshot: str | Path, output: str | Path, model_path: str | None = None,
          max_steps: int | None = None, log=print, snapshot_sha256: str | None = None, save: bool = True,
          task_prompts: dict[str, str] | None = None, resume_from: str | Path | None = None) -> dict:
    """Train; resume from this run's last checkpoint, else from `resume_from`'s (an interrupted run on the same
    snapshot and settings, whose checkpoints are deleted once this run has saved its model)."""
    rank, world, device = setup_distributed()
    tcfg, mcfg = profile.train, profile.model
    output = Path(output)
    seed_everything(tcfg.seed)
    batches = load_batches(snapshot, tcfg.group_size, world, mcfg.query_template, sha256=snapshot_sha256)
    embedder = build_model(mcfg, tcfg, model_path, device)
    loss_fn = build_loss(tcfg, embedder.hidden_size)
    if mcfg.projection == "pca" and embedder.projection is None:
        sample = [t for b in batches for t in (*b.queries, *b.passages)]
        sample = [sample[i] for i in np.random.default_rng(tcfg.seed).permutation(len(sample))[:4096]]
        embedder.init_pca_projection(sample)  # same seed and texts on every rank: identical initial weights
    elif mcfg.projection not in (None, "pca"):
        raise ValueError(f"projection {mcfg.projection!r} is not one of None, 'pca'")
    steps = TokenizedSteps(batches, embedder.tokenizer, mcfg, rank, world, tcfg.epochs,
                           gathered=loss_fn.inner.cross_device)
    total = min(len(steps), max_steps or tcfg.max_steps or len(steps))
    encoder = ChunkedEncoder(embedder)
    if world > 1:
        encoder = torch.nn.parallel.DistributedDataParallel(encoder, device_ids=[device] if device.type == "cuda" else None)
    # fused AdamW on CUDA: one kernel for the whole update instead of a few per parameter tensor
    optimizer = torch.optim.AdamW([p for p in embedder.parameters() if p.requires_grad], lr=tcfg.lr,
                                  weight_decay=tcfg.weight_decay, fused=device.type == "cuda")
    # LR schedule: 1) linear warmup over warmup_ratio of the steps, 2) linear decay to 0 at the last step
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(tcfg.warmup_ratio * total), total)

    ckpt_dir, losses, start = output / "checkpoints", [], 0
    log_path, earlier = output / "train_log.jsonl", output
    last = checkpoint.latest(ckpt_dir)
    if last is None and resume_from is not None and (last := checkpoint.latest(Path(resume_from) / "checkpoints")):
        earlier = Path(resume_from)
    if last is not None:
        start, losses = checkpoint.load(last, embedder, optimizer, scheduler)
        log({"event": "resumed", "step": start, "checkpoint": str(last)})
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        old_log = earlier / "train_log.jsonl"
        kept = [ln for ln in (old_log.read_text().splitlines() if old_log.exists() else [])
                if json.loads(ln)["step"] <= start]  # a resumed run rewrites the steps after its checkpoint
        log_path.write_text("".join(ln + "\n" for ln in kept))

    use_bf16 = bf16_supported() if tcfg.bf16 is None else tcfg.bf16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    pad_id = embedder.tokenizer.pad_token_id
    chunk = tcfg.grad_cache_chunk or tcfg.length_chunk
    budget = MemoryBudget(tcfg.keep_graph_tokens, device, tcfg.chunk_tokens, distributed=world > 1)
    t0, pairs_done, tokens_done = time.perf_counter(), 0, 0
    embedder.train()
    for step, (q_ids, p_ids, same_text) in enumerate(step_loader(steps, start, total, device), start):
        loss_fn.inner.same_text = same_text
        loss = None
        while loss is None:  # again only after an out-of-memory attempt, with less memory (memory_budget.py)
            q_chunks, q_order, q_tok = prepare(q_ids, pad_id, chunk, device, budget.chunk_tokens)
            p_chunks, p_order, p_tok = prepare(p_ids, pad_id, chunk, device, budget.chunk_tokens)
            sizes = [ids.numel() for ids, _ in (*q_chunks, *p_chunks)]
            if not tcfg.grad_cache_chunk:
                with autocast:
                    q, p = encoder(q_chunks + p_chunks, _merge_orders(q_order, p_order)).split([len(q_ids),
                                                                                                len(p_ids)])
                    loss = loss_fn.compute_loss_from_embeddings(q, p)
                break
            budget.step_started()
            try:
                with autocast:
                    loss = grad_cache_backward(encoder, q_chunks, q_order, p_chunks, p_order,
                                               loss_fn.compute_loss_from_embeddings, device,
                                               getattr(encoder, "no_sync", None), budget.keep_tokens)
            except torch.OutOfMemoryError as e:
                event = budget.shrink(e, sizes, max(map(len, (*q_ids, *p_ids))))  # or re-raises
                optimizer.zero_grad(set_to_none=True)  # the failed attempt's partial gradients
                if rank == 0:
                    log({**event, "step": step + 1})
            else:
                budget.backward_done()
            if loss is None and device.type == "cuda":
                torch.cuda.empty_cache()  # the failed attempt's blocks, free once its traceback is gone
        if not torch.isfinite(loss):
            good = checkpoint.latest(ckpt_dir)
            raise NonFiniteLoss(f"the loss is {loss.item()} at step {step + 1}; stopped without an update. "
                                f"Last good checkpoint: {good or 'none yet'}. Lower the learning rate or check "
                                f"the temperature ({tcfg.temperature}).")
        if not tcfg.grad_cache_chunk:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(embedder.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (measured := budget.step_done(max(sizes))) and rank == 0:
            log({**measured, "step": step + 1})

        value = loss.item() / (world if world > 1 else 1)  # the loss is scaled by the world size for DDP
        losses.append(value)
        pairs_done += len(q_ids) * world
        tokens_done += (q_tok + p_tok) * world
        elapsed = time.perf_counter() - t0
        # `t` (seconds since the loop started, after this step's sync) lets benchmarks time steady-state deltas;
        # the *_per_s fields are cumulative averages, warm-up included, for the progress line
        record = {"event": "step", "step": step + 1, "total": total, "loss": value, "lr": scheduler.get_last_lr()[0],
                  "t": elapsed, "pairs": len(q_ids) * world, "tokens": (q_tok + p_tok) * world,
                  "pairs_per_s": pairs_done / elapsed, "tokens_per_s": tokens_done / elapsed}
        if loss_fn.last_masked is not None:  # false negatives masked at full dimension (global batch under DDP)
            record["masked_false_negatives"] = int(loss_fn.last_masked)
        if same_text is not None:  # candidates repeating a query's own text or its positive's, masked
            record["masked_same_text"] = int(same_text.sum())
        if rank == 0:
            log(record)
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if tcfg.checkpoint_every and (step + 1) % tcfg.checkpoint_every == 0 and step + 1 < total:
                checkpoint.save(ckpt_dir, step + 1, embedder, optimizer, scheduler, losses)

    summary = {"event": "done", "steps": total, "final_loss": losses[-1] if losses else None,
               "pairs_per_s": pairs_done / max(time.perf_counter() - t0, 1e-9),
               "tokens_per_s": tokens_done / max(time.perf_counter() - t0, 1e-9), "model_path": str(output / "model")}
    if rank == 0 and save:
        if tcfg.lora_rank:
            embedder.model = embedder.model.merge_and_unload()
        instructions = Counter(pl.read_parquet(snapshot, columns=["instruction"])["instruction"].drop_nulls())
        top = instructions.most_common(1)  # saved as the model's "query" prompt, so mteb and ST apply it
        if task_prompts is None:  # the training asset passes them: mteb's metadata costs this process ~2.5 s
            task_prompts = eval_task_prompts(profile.eval.mteb_tasks, mcfg.query_template)
        embedder.save(output / "model", query_instruction=top[0][0] if top else None, task_prompts=task_prompts)
        (output / "train_config.json").write_text(json.dumps(asdict(profile), indent=2, default=list))
        # the model is saved: checkpoints beyond the last keep_checkpoints (optimizer states, ~3x the model each)
        # and the interrupted run's this one resumed from are no longer needed
        checkpoint.prune(ckpt_dir, tcfg.keep_checkpoints)
        if earlier != output:
            checkpoint.prune(earlier / "checkpoints", 0)
    if rank == 0:
        log(summary)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _merge_orders(q_order: list[int], p_order: list[int]) -> list[int]:
    """Orders of queries then passages as positions in one concatenated output."""
    return q_order + [len(q_order) + i for i in p_order]


ERROR_FILE = "train_error.txt"  # the last failure's message and traceback, in the run directory


def main(argv: list[str] | None = None, log=None, report_error=None) -> int:
    """The command line. Records go to `log` (default: stdout as JSON lines); a failure's message also goes to
    `report_error` and, with its traceback, to <output>/train_error.txt for whoever launched the trainer (the training
    asset launches it through Dagster Pipes: dagster_project/pipes_trainer.py)."""
    import traceback

    ap = argparse.ArgumentParser(prog="python -m kalm_core.trainer", description=__doc__.splitlines()[0])
    ap.add_argument("--snapshot", required=True, help="parquet batch snapshot (batched/batches export)")
    ap.add_argument("--sha256", help="the snapshot's recorded sha256: refuse a file that does not match it")
    ap.add_argument("--config", required=True, help="profile as JSON (written by the training asset)")
    ap.add_argument("--output", required=True, help="run directory: model/, checkpoints/, train_log.jsonl")
    ap.add_argument("--model-path", help="start from this model instead of the profile's base model")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--resume-from", help="an interrupted run directory on the same snapshot and settings: start from "
                                          "its last checkpoint when this run has none")
    ap.add_argument("--task-prompts", help="JSON {prompt name: prefix} saved with the model (default: computed from "
                    "the profile's MTEB tasks, kalm_core.prompts)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1"))))
    log = log or (lambda record: print(json.dumps(record), flush=True))

    def failed(e: BaseException, code: int | None) -> int:
        message = f"{type(e).__name__}: {e}"
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / ERROR_FILE).write_text(message + "\n\n" + traceback.format_exc())
        print(f"kalm trainer: {message}", file=sys.stderr)
        log({"event": "error", "message": str(e)})
        if report_error is not None:
            report_error(message)
        if code is None:
            raise e
        return code

    (Path(args.output) / ERROR_FILE).unlink(missing_ok=True)
    try:
        profile = profile_from_dict(json.loads(Path(args.config).read_text()))
        prompts = json.loads(Path(args.task_prompts).read_text()) if args.task_prompts else None
        train(profile, args.snapshot, args.output, args.model_path, args.max_steps, log, args.sha256,
              task_prompts=prompts, resume_from=args.resume_from)
    except (BatchFileError, ModelLoadError, ValueError) as e:
        return failed(e, EXIT_BAD_INPUT)
    except NonFiniteLoss as e:
        return failed(e, EXIT_NON_FINITE)
    except Exception as e:  # an OOM, a bug: the traceback is the failure's message, then the usual exit
        return failed(e, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
