"""Training plots: the loss curve with the original project's first/last-500 averages."""

from __future__ import annotations

import os
from pathlib import Path

from stableemote_utils.images import save_figure

ORIGINAL_WINDOW_STEPS = 500
# The original project's mean loss over its first and last 500 of 4,500 steps.
ORIGINAL_FIRST_LAST = (0.0678, 0.0644)


def window_means(
    losses: list[float], window: int = ORIGINAL_WINDOW_STEPS
) -> tuple[float, float, int]:
    """Mean loss over the first and last ``window`` steps (shrunk to half the run if shorter).

    Returns:
        ``(first_mean, last_mean, window_used)``.
    """
    if not losses:
        raise ValueError("no losses to average")
    w = max(1, min(window, len(losses) // 2))
    return sum(losses[:w]) / w, sum(losses[-w:]) / w, w


def save_loss_plot(
    losses: list[float], path: str | os.PathLike, title: str = "LoRA training loss"
) -> Path:
    """Plot per-step loss, a moving average, and first/last-window means; save as PNG."""
    import numpy as np
    from matplotlib.figure import Figure

    first, last, w = window_means(losses)
    arr = np.asarray(losses, dtype=float)
    smooth_w = max(1, min(50, len(arr) // 10))
    smooth = np.convolve(arr, np.ones(smooth_w) / smooth_w, mode="valid")
    # A bare Figure, not pyplot: saving must not change the notebook's plotting backend.
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.plot(np.arange(1, len(arr) + 1), arr, color="#bbb", lw=0.8, label="loss per step")
    ax.plot(
        np.arange(smooth_w, len(arr) + 1), smooth, color="C0", label=f"moving average ({smooth_w})"
    )
    ax.hlines(first, 1, w, colors="C1", lw=2, label=f"first {w}: {first:.4f}")
    ax.hlines(last, len(arr) - w + 1, len(arr), colors="C2", lw=2, label=f"last {w}: {last:.4f}")
    o1, o2 = ORIGINAL_FIRST_LAST
    ax.set_title(f"{title}  (original SD 1.5 run: first 500 {o1}, last 500 {o2})", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (noise prediction)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
