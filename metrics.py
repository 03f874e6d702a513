"""Scores of probabilities of state 1 and their calibration sigmoid((z + c) / T), fitted on validation reweighted
to the mix of states the probabilities refer to (docs/evaluation.md)."""

import numpy as np
import torch

ECE_BINS = 15
TEMPERATURE_RANGE = (1e-3, 1e3)  # a model whose logits carry no information ends at the top: p = 0.5
OFFSET_RANGE = 50.0  # |c / T| at most: beyond it every probability is 0 or 1 anyway


def sigmoid(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """sigmoid(z / T) in float64 without overflow warnings: probabilities at temperature T."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, np.float64) / temperature))


def log_loss(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """(Weighted) mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    p, y = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7), np.asarray(y, np.float64)
    return float(np.average(-(y * np.log(p) + (1 - y) * np.log(1 - p)), weights=weights))


def roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve: the share of (state 1, state 0) pairs ranked right, ties half (NaN with one class)."""
    p, y = np.asarray(p, np.float64), np.asarray(y)
    negatives, positives = np.sort(p[y == 0]), p[y == 1]
    if len(negatives) == 0 or len(positives) == 0:
        return float("nan")
    below = np.searchsorted(negatives, positives, "left")
    ties = np.searchsorted(negatives, positives, "right") - below
    return float((below + ties / 2).sum() / (len(negatives) * len(positives)))


def scores(p: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Log loss, accuracy at 0.5 and ROC AUC of probabilities `p` for labels `y`, on any device."""
    p, y = p.double().cpu().numpy(), y.double().cpu().numpy()
    return {"loss": log_loss(p, y), "acc": float(np.mean((p > 0.5) == y)), "auc": roc_auc(p, y)}


def prior_weights(labels: np.ndarray, prior: float) -> np.ndarray:
    """Per-sample weights (mean 1) that turn the split's mix of states into `prior` (ones if a state is missing)."""
    y = np.asarray(labels, np.float64)
    share = y.mean()
    return np.ones_like(y) if share in (0.0, 1.0) else np.where(y == 1, prior / share, (1 - prior) / (1 - share))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                    offset: bool = False) -> tuple[float, float]:
    """(T, c) minimising the (weighted) log loss of sigmoid((logits + c) / T), c = 0 without offset: nested
    bisections on the derivatives in a = 1/T (log space) and b = c/T, in which the loss is jointly convex."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    w = np.ones_like(z) if weights is None else np.asarray(weights, np.float64)

    def bisect(slope, lo: float, hi: float) -> float:  # the root of an increasing function
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        return 0.5 * (lo + hi)

    def best_b(a: float) -> float:
        return bisect(lambda b: np.sum(w * (sigmoid(a * z + b) - y)), -OFFSET_RANGE, OFFSET_RANGE) if offset else 0.0

    def slope(log_a: float) -> float:
        a = np.exp(log_a)
        return float(np.sum(w * (sigmoid(a * z + best_b(a)) - y) * z))
    lo, hi = -np.log(TEMPERATURE_RANGE[1]), -np.log(TEMPERATURE_RANGE[0])
    if slope(lo) >= 0:  # sharpening almost flat logits does not help: they carry no information
        t = TEMPERATURE_RANGE[1]
    elif slope(hi) <= 0:  # still improving at the sharpest allowed: separable data
        t = TEMPERATURE_RANGE[0]
    else:
        t = float(np.exp(-bisect(slope, lo, hi)))
    return t, best_b(1 / t) * t


def at_bound(temperature: float) -> str:
    """Why a fitted temperature at an end of TEMPERATURE_RANGE calibrates nothing ('' inside the range)."""
    if temperature <= TEMPERATURE_RANGE[0]:
        return "the validation logits separate the states completely: the probabilities are 0 or 1, not calibrated"
    if temperature >= TEMPERATURE_RANGE[1]:
        return "the validation logits carry no information about the state: every probability is 0.5"
    return ""


def reliability(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per equal-width probability bin: share of samples, mean probability, frequency of state 1 (NaN if empty)."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, np.float64)
    index = np.minimum((p * ECE_BINS).astype(int), ECE_BINS - 1)  # p = 1 goes into the last bin
    mass = np.bincount(index, w, ECE_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"share": mass / w.sum(), "probability": np.bincount(index, w * p, ECE_BINS) / mass,
                "frequency": np.bincount(index, w * y, ECE_BINS) / mass}


def expected_calibration_error(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Sum over the reliability bins of share x |frequency - mean probability|."""
    table = reliability(p, y, weights)
    filled = table["share"] > 0
    return float(np.sum(table["share"][filled] * np.abs(table["frequency"] - table["probability"])[filled]))


def bayes_posterior(log_likelihood_ratio: np.ndarray, prior: float) -> np.ndarray:
    """Exact probability of state 1 from log p(x|1) - log p(x|0) and the share of state 1 it refers to."""
    return sigmoid(np.asarray(log_likelihood_ratio, np.float64) + np.log(prior / (1 - prior)))
