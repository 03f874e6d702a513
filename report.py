"""What a run leaves behind for a person: metrics table, learning curves, predictions."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from fileio import atomic_write, rounded, write_text

METRIC_COLUMNS = ("epoch", "lr", "train_objective", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc",
                  "val_views", "gap_acc", "gap_loss")


def write_metrics_csv(path: str | Path, history: list[dict[str, float]]) -> Path:
    """One row per epoch; rewritten whole (atomically) so a resumed run continues the same table."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow(rounded(row))
    return write_text(path, buffer.getvalue())


def plot_curves(path: str | Path, history: list[dict[str, float]], title: str = "",
                bayes: dict[str, float] | None = None) -> Path:
    """Train vs validation loss and accuracy per epoch: a widening gap is the picture of memorisation.
    bayes: the exact likelihood-ratio classifier's validation log loss and accuracy (the built-in benchmark)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], ".-", label="train (log loss)")
    views = int(history[-1].get("val_views", 1)) if history else 1
    each = f" ({views} view{'s' * (views > 1)} per image)"
    ax_loss.plot(epochs, [r["val_loss"] for r in history], ".-", label="validation (log loss)" + each)
    ax_acc.plot(epochs, [r["train_acc"] for r in history], ".-", label="train")
    ax_acc.plot(epochs, [r["val_acc"] for r in history], ".-", label="validation" + each)
    for ax, key in ((ax_loss, "val_loss"), (ax_acc, "val_acc")):
        if bayes and key in bayes:
            ax.axhline(bayes[key], color="k", linestyle=":", label="Bayes limit (validation)")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("BCE"), ax_loss.legend()
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


def write_probabilities(path: str | Path, probabilities: np.ndarray, drift_flags: np.ndarray | None = None) -> Path:
    """CSV: sample index, probability of the new state (label 1), predicted label, and with drift_flags a 1
    where the sample lies outside the training data's range (drift.py)."""
    p = np.asarray(probabilities)
    if drift_flags is None:
        lines = ["index,probability,predicted_label"] + [f"{i},{v:.6f},{int(v > 0.5)}" for i, v in enumerate(p)]
    else:
        lines = ["index,probability,predicted_label,drift_flag"]
        lines += [f"{i},{v:.6f},{int(v > 0.5)},{int(f)}" for i, (v, f) in enumerate(zip(p, drift_flags))]
    return write_text(path, "\n".join(lines) + "\n")


# ---- figure helpers --------------------------------------------------------------------------------------

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


# ---- figures of one run's report (run_report.py) ---------------------------------------------------------

def plot_reliability(path: str | Path, panels: dict[str, dict[str, dict]]) -> Path:
    """Reliability diagrams: per panel (e.g. before / after calibration), per split, the frequency of state 1
    against the mean probability in each bin (metrics.reliability); on the diagonal when calibrated."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        ax.plot([0, 1], [0, 1], "k:", label="calibrated")
        for label, table in curves.items():
            filled = table["share"] > 0
            line, = ax.plot(table["probability"][filled], table["frequency"][filled], "-", alpha=0.5)
            # marker area follows the bin's share of samples: the middle bins of a good model hold few
            ax.scatter(table["probability"][filled], table["frequency"][filled], s=10 + 300 * table["share"][filled],
                       color=line.get_color(), label=label)
        ax.set_xlabel("predicted probability of state 1 (marker area: share of samples)")
        ax.set_ylabel("observed frequency of state 1")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_title(title), ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def roc_points(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-np.asarray(p), kind="mergesort")
    y = np.asarray(y)[order]
    tpr = np.concatenate([[0], np.cumsum(y) / max(y.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(1 - y) / max((1 - y).sum(), 1)])
    return fpr, tpr


def plot_roc_and_confusion(path: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> Path:
    """ROC curves (label: AUC) and, per split, the confusion matrix at 0.5; splits: name -> (p, y, auc)."""
    fig, axes = pyplot().subplots(1, 1 + len(splits), figsize=(4.5 * (1 + len(splits)), 4), squeeze=False)
    roc = axes[0][0]
    roc.plot([0, 1], [0, 1], "k:")
    for ax, (name, (p, y, auc)) in zip(axes[0][1:], splits.items()):
        roc.plot(*roc_points(p, y), label=f"{name} (AUC {auc:.4f})")
        predicted = (np.asarray(p) > 0.5).astype(int)
        matrix = np.array([[np.sum((y == t) & (predicted == q)) for q in (0, 1)] for t in (0, 1)])
        ax.imshow(matrix, cmap="Blues")
        for (t, q), n in np.ndenumerate(matrix):
            ax.text(q, t, str(n), ha="center", va="center", color="k" if n < matrix.max() / 2 else "w")
        ax.set_xticks([0, 1], ["0", "1"]), ax.set_yticks([0, 1], ["0", "1"])
        ax.set_xlabel("predicted state (p > 0.5)"), ax.set_ylabel("true state"), ax.set_title(f"{name} at 0.5")
    roc.set_xlabel("false positive rate"), roc.set_ylabel("true positive rate"), roc.set_title("ROC")
    roc.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_drift(path: str | Path, reference: dict, files: dict[str, list[float]], outside: dict[str, dict]) -> Path:
    """Left: radially averaged log-power per ring |k|, the training 0.1-99.9 % band and median, and each
    file's median. Right: the share of a file's samples outside each feature's training range (drift.py)."""
    fig, (ax, bars) = pyplot().subplots(1, 2, figsize=(12, 4.5))
    rings = reference["rings"]
    k = np.arange(1, len(rings["median"]) + 1)
    ax.fill_between(k, rings["low"], rings["high"], color="0.85", label="training 0.1-99.9 %")
    ax.plot(k, rings["median"], "k-", label="training median")
    for name, medians in files.items():
        ax.plot(k, medians, "--", label=f"{name} median")
    ax.set_xlabel("|k| (grid units)"), ax.set_ylabel("log power of log-density"), ax.legend(fontsize=8)
    ax.set_title("radially averaged power spectrum")
    names = list(outside)
    y = np.arange(len(names))
    bars.barh(y - 0.2, [outside[n]["below"] for n in names], 0.4, label="below the training range")
    bars.barh(y + 0.2, [outside[n]["above"] for n in names], 0.4, label="above the training range")
    bars.axvline(0.001, color="k", linestyle=":", label="expected: 0.1 % each side")
    bars.set_yticks(y, names, fontsize=8), bars.invert_yaxis(), bars.set_xlabel("share of samples")
    bars.set_title("outside the training 0.1-99.9 % range"), bars.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sensitivity(path: str | Path, maps: dict[str, np.ndarray], title: str) -> Path:
    """Sensitivity maps to the power of each Fourier mode (sensitivity.py), side by side, each on its own
    symmetric colour scale (log-odds per unit log-amplitude), k = 0 in the centre."""
    fig, axes = pyplot().subplots(1, len(maps), figsize=(5.2 * len(maps), 4.6), squeeze=False)
    grid = next(iter(maps.values())).shape[-1]
    extent = (-(grid // 2) - 0.5, grid - grid // 2 - 0.5, grid - grid // 2 - 0.5, -(grid // 2) - 0.5)
    for ax, (name, values) in zip(axes[0], maps.items()):
        scale = float(np.abs(values).max()) or 1.0
        image = ax.imshow(np.fft.fftshift(values), cmap="RdBu_r", vmin=-scale, vmax=scale, extent=extent)
        ax.set_xlabel("k (second axis)"), ax.set_ylabel("k (first axis)"), ax.set_title(name)
        fig.colorbar(image, ax=ax, fraction=0.046, label="d log-odds / d log amplitude")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
