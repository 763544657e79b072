"""Training checkpoints: model, optimizer, scheduler, every RNG and the data position, written atomically."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

KEEP = 2  # checkpoints kept on disk while a run trains; older ones are removed


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, step: int, model: torch.nn.Module, optimizer, scheduler, losses: list[float]) -> Path:
    """Write checkpoints/step-XXXXXX.pt (temp file + rename, so a kill never leaves half a checkpoint)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:06d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), "losses": losses}, tmp)
    tmp.replace(path)
    prune(directory, KEEP)
    return path


def prune(directory: Path, keep: int) -> int:
    """Delete all but the last `keep` checkpoints (and the directory when none is left); returns how many went."""
    found = sorted(directory.glob("step-*.pt")) if directory.exists() else []
    gone = found[:len(found) - keep] if keep else found
    for old in gone:
        old.unlink()
    if directory.exists() and not any(directory.iterdir()):
        directory.rmdir()
    return len(gone)


RESUME_KEY = "resume_key.txt"  # in a run directory: what a later run must match to resume from its checkpoints


def resume_key(snapshot_sha256: str, profile) -> str:
    """Runs with equal keys train the same steps: the same snapshot, model and training settings."""
    import hashlib
    import json
    from dataclasses import asdict

    settings = {"snapshot": snapshot_sha256, "model": asdict(profile.model), "train": asdict(profile.train)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def interrupted_run(models_dir: Path, key: str, exclude: Path | None = None) -> Path | None:
    """The latest run directory with this key that never saved its model but holds a checkpoint."""
    runs = sorted(models_dir.glob(f"*/{RESUME_KEY}")) if models_dir.exists() else []
    for marker in reversed(runs):  # run ids start with their UTC start time: the latest first
        run = marker.parent
        if run != exclude and marker.read_text().strip() == key and not (run / "model").exists() \
                and latest(run / "checkpoints") is not None:
            return run
    return None


def latest(directory: Path) -> Path | None:
    found = sorted(directory.glob("step-*.pt")) if directory.exists() else []
    return found[-1] if found else None


def load(path: Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[int, list[float]]:
    """Restore everything; returns (the step the checkpoint was taken after, the loss history)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["step"], state["losses"]
