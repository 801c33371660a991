"""``training_loss.png``: the raw training loss, an exponentially smoothed curve, and eval loss when there is one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tooltune.atomic import atomic_path


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """TensorBoard-style exponential moving average; the weight grows with the series so short runs stay readable."""
    if not values:
        return []
    if weight is None:
        weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    smoothed, last = [], values[0]
    for value in values:
        last = last * weight + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def plot_loss(records: Sequence[dict[str, Any]], out_file: str | Path, title: str = "training loss") -> Path | None:
    """Draw from JSONL log records (``step`` + ``loss`` / ``eval_loss``). Returns None when nothing was logged."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="#1f77b4", alpha=0.35, label="train (raw)")
        ax.plot(steps, smooth(losses), color="#1f77b4", label="train (smoothed)")
    if evals:
        steps, losses = zip(*evals, strict=True)
        ax.plot(steps, losses, color="#d62728", marker="o", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_file = Path(out_file)
    with atomic_path(out_file) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_file
