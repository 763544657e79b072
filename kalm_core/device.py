"""Where inference runs: the GPU when there is one (bf16, or fp16 where bf16 is missing), else the CPU in fp32.

Used by curation (the ranking-consistency filter's encoder) and evaluation; training has its own placement
(fp32 master weights under autocast, trainer.py).
"""

from __future__ import annotations

import torch

GPU_TOKEN_BUDGET = 64 * 1024  # padded tokens per GPU batch: long texts go in small batches, short ones in big
CPU_TOKEN_BUDGET = None  # on the CPU a fixed batch size is as fast and keeps memory flat


def inference_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def token_budget(device: torch.device) -> int | None:
    return GPU_TOKEN_BUDGET if device.type == "cuda" else CPU_TOKEN_BUDGET


def describe(device: torch.device, dtype: torch.dtype) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name} ({str(dtype).removeprefix('torch.')})"
