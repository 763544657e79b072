"""How every training benchmark times both sides the same way: per-step end timestamps (after the step's loss is
synced to the host), the steady-state delta after the warm-up steps, the median of several runs."""

from __future__ import annotations

import statistics


def steady_rate(stamps: list[float], units: list[float], warmup: int) -> float:
    """Units per second over steps warmup+1..n: (sum of their units) / (their end stamp - step warmup's end stamp).

    stamps[i] is when step i+1 ended, units[i] what it processed (pairs or tokens)."""
    if len(stamps) != len(units) or len(stamps) < warmup + 2:
        raise ValueError(f"need at least {warmup + 2} timed steps for {warmup} warm-up steps, got {len(stamps)}")
    return sum(units[warmup + 1:]) / (stamps[-1] - stamps[warmup])


def median_rate(runs: list[float]) -> float:
    if len(runs) < 3:
        raise ValueError(f"report the median of at least 3 runs, got {len(runs)}")
    return statistics.median(runs)
