"""Small matplotlib figures as Markdown images (Dagster has no image metadata type: base64 PNG in Markdown)."""

from __future__ import annotations

import base64
import io


def _pyplot():
    """matplotlib on first use (its import is ~0.3 s of every `kalm` command otherwise), drawing off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _markdown(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"![plot](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def loss_curve(steps: list[int], losses: list[float]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(steps, losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE + MRL loss")
    ax.grid(alpha=0.3)
    return _markdown(fig)


def score_vs_dim(series: dict[str, dict[int, float]], metric: str = "nDCG@10") -> str:
    """series: role -> {dim: score}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for role, points in sorted(series.items()):
        dims = sorted(points)
        ax.plot(dims, [points[d] for d in dims], marker="o", label=role)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("embedding dim (Matryoshka truncation)")
    ax.set_ylabel(metric)
    ax.legend()
    ax.grid(alpha=0.3)
    return _markdown(fig)


def data_mix(sources: list[str], available: list[int], sampled: list[int]) -> str:
    """Pairs available and sampled per source, one bar pair each (the mix's effect at a glance)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(sources) + 1))
    y = range(len(sources))
    ax.barh([i + 0.2 for i in y], available, height=0.4, label="available")
    ax.barh([i - 0.2 for i in y], sampled, height=0.4, label="sampled")
    ax.set_yticks(list(y), sources)
    ax.set_xscale("symlog")
    ax.set_xlabel("pairs")
    ax.legend(loc="lower right")
    return _markdown(fig)
