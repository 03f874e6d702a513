"""Figures of the evaluation grid (tools/compare_report.py): loss curves of many runs and forest plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from report import pyplot, save_figure


def plot_loss_curves(path: str | Path, runs: dict[str, list[dict[str, float]]], title: str = "") -> Path:
    """Train (solid) vs validation (dashed) log loss per epoch, one colour per run (e.g. per seed)."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for i, (label, history) in enumerate(runs.items()):
        epochs = [r["epoch"] for r in history]
        ax.plot(epochs, [r["train_loss"] for r in history], color=f"C{i}", label=f"{label} train")
        ax.plot(epochs, [r["val_loss"] for r in history], "--", color=f"C{i}", label=f"{label} validation")
    ax.set_xlabel("epoch"), ax.set_ylabel("log loss (BCE)"), ax.set_title(title)
    if runs:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_intervals(path: str | Path, labels: list[str], panels: dict[str, list[tuple[float, float]]],
                   references: dict[str, dict[str, float]]) -> Path:
    """A forest plot: per panel (title -> one (value, 95% half-width) per label), a dot and its interval per
    row, with labelled vertical reference lines per panel (e.g. the Bayes limit, or 0 for differences)."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels) + 2, 0.28 * len(labels) + 1.5),
                                  sharey=True, squeeze=False)
    y = np.arange(len(labels))[::-1]
    for ax, (title, pairs) in zip(axes[0], panels.items()):
        values, halves = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        ax.errorbar(values, y, xerr=np.nan_to_num(halves), fmt="o", markersize=3, capsize=2)
        for (label, x), style in zip(references.get(title, {}).items(), ("r--", "k:")):
            ax.axvline(x, color=style[0], linestyle=style[1:], label=label)
        ax.set_title(title, fontsize=9), ax.grid(axis="x", alpha=0.3)
        if references.get(title):
            ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_yticks(y, labels, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
