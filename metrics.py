"""Scores of predicted probabilities against labels: log loss, accuracy at 0.5 and ROC AUC."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def log_loss(p: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y))


def accuracy(p: torch.Tensor, y: torch.Tensor) -> float:
    return float(((p > 0.5).float() == y).float().mean())


def roc_auc(p: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic, ties given average ranks."""
    p, y = p.double().cpu().numpy(), y.cpu().numpy()
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    if n0 == 0 or n1 == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def scores(p: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Log loss, accuracy at 0.5 and ROC AUC of probabilities `p` for labels `y`."""
    return {"loss": log_loss(p, y), "acc": accuracy(p, y), "auc": roc_auc(p, y)}
