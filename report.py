"""What a run leaves behind for a person: metrics table, learning curves, predictions."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from fileio import atomic_write, write_text

METRIC_COLUMNS = ("epoch", "lr", "train_objective", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc",
                  "gap_acc", "gap_loss")


def write_metrics_csv(path: str | Path, history: list[dict[str, float]]) -> Path:
    """One row per epoch; rewritten whole (atomically) so a resumed run continues the same table."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return write_text(path, buffer.getvalue())


def plot_curves(path: str | Path, history: list[dict[str, float]], title: str = "") -> Path:
    """Train vs validation loss and accuracy per epoch: a widening gap is the picture of memorisation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train (log loss)")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="validation (log loss)")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("BCE"), ax_loss.legend()
    ax_acc.plot(epochs, [r["train_acc"] for r in history], label="train")
    ax_acc.plot(epochs, [r["val_acc"] for r in history], label="validation")
    ax_acc.set_xlabel("epoch"), ax_acc.set_ylabel("accuracy"), ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


def write_predictions(path: str | Path, probabilities: np.ndarray) -> Path:
    """The scientist's contract: one 0 or 1 per line, in the order of the input file."""
    labels = (np.asarray(probabilities) > 0.5).astype(int)
    return write_text(path, "".join(f"{v}\n" for v in labels))


def write_probabilities(path: str | Path, probabilities: np.ndarray) -> Path:
    """CSV: sample index, probability of the new state (label 1), predicted label."""
    lines = ["index,probability,label"]
    lines += [f"{i},{p:.6f},{int(p > 0.5)}" for i, p in enumerate(np.asarray(probabilities))]
    return write_text(path, "\n".join(lines) + "\n")


# ---- figures for comparisons of many runs (compare.py) ---------------------------------------------------

def pyplot():
    """matplotlib with the file-only backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    pyplot().close(fig)
    return Path(path)


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


def plot_bars(path: str | Path, groups: list[str], series: dict[str, list[tuple[float, float]]],
              references: dict[str, float], ylabel: str) -> Path:
    """Grouped bars of (mean, std) with error bars, one bar per series in each group, plus labelled
    horizontal reference lines (e.g. a goal and a theoretical limit)."""
    fig, ax = pyplot().subplots(figsize=(max(7, 1.1 * len(groups) + 2), 4))
    width = 0.8 / max(len(series), 1)
    for i, (label, pairs) in enumerate(series.items()):
        x = np.arange(len(groups)) + (i - 0.5 * (len(series) - 1)) * width
        ax.bar(x, [p[0] for p in pairs], width, yerr=[p[1] for p in pairs], capsize=3, label=label)
    for (label, y), style in zip(references.items(), ("k:", "r--", "b-.")):
        ax.axhline(y, color=style[0], linestyle=style[1:], label=label)
    ax.set_xticks(np.arange(len(groups)), groups, rotation=20)
    ax.set_ylabel(ylabel), ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)
