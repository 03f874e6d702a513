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
