"""Honest probabilities: one temperature fitted on validation logits, the calibration error, the exact posterior.

The default trains on label-smoothed targets, so its probabilities are squeezed toward 0.5. Dividing the
(view-averaged) logit by one temperature T, fitted on the validation set, repairs that without moving any
0/1 prediction (T > 0 keeps the sign of every logit). Where no symmetry swaps the state the logit can also carry
an offset: dropout scales the activations in training and not in evaluation, and where the states differ in
how much variance an image has (a correlation length, a contrast) that shifts every evaluation logit alike,
so the ranking stays right while the 0/1 threshold does not. There one shift c is fitted with T (Platt
scaling: sigmoid((z + c) / T)), and it moves the 0/1 predictions to the validation set's best threshold.
With a swapping symmetry in the views the view-averaged logit is antisymmetric and has no offset to fit.

Which class prior do the probabilities refer to? Where a symmetry swaps the state (symmetry.py), the logit of
a model trained on random elements of that symmetry group (half of the augmented images change class) or read
through a view average with a swapping partner (exactly antisymmetric, so any learned offset cancels)
estimates the log-likelihood ratio with no prior term: its probabilities are posteriors for a 50/50 mix of
states. Otherwise the model learns the training split's mix. `reference_prior` says which; the temperature is
fitted, and validation's calibration error measured, with validation reweighted to that mix, and the exact
posterior p_Bayes = sigmoid(LLR + log(prior / (1 - prior))) uses the same prior.
"""
from __future__ import annotations

import numpy as np

ECE_BINS = 15
TEMPERATURE_RANGE = (1e-3, 1e3)  # a model whose logits carry no information ends at the top: p = 0.5
OFFSET_RANGE = 50.0  # |c / T| at most: beyond it every probability is 0 or 1 anyway


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function in float64 without overflow warnings."""
    z = np.asarray(z, np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def calibrated(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities of state 1 from logits divided by the temperature."""
    return sigmoid(np.asarray(logits, np.float64) / temperature)


def reference_prior(swaps: bool, train_labels: np.ndarray) -> float:
    """The share of state 1 that the model's probabilities refer to: 0.5 when augmentation or the views use a
    symmetry that swaps the state, else the training split's (see the module docstring)."""
    return 0.5 if swaps else float(np.mean(train_labels))


def at_bound(temperature: float) -> str:
    """Why a fitted temperature at an end of TEMPERATURE_RANGE calibrates nothing ('' inside the range)."""
    if temperature <= TEMPERATURE_RANGE[0]:
        return ("the validation logits separate the states completely, so the fit sharpened them to the limit: "
                "the probabilities are 0 or 1, not calibrated")
    if temperature >= TEMPERATURE_RANGE[1]:
        return "the validation logits carry no information about the state: every probability is 0.5"
    return ""


def prior_weights(labels: np.ndarray, prior: float) -> np.ndarray:
    """Per-sample weights (mean 1) that turn the split's mix of states into `prior`; all ones if it has that mix
    already, or if a state is missing (there is nothing to reweight)."""
    y = np.asarray(labels, np.float64)
    share = y.mean()
    if share in (0.0, 1.0):
        return np.ones_like(y)
    return np.where(y == 1, prior / share, (1 - prior) / (1 - share))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                    offset: bool = False) -> tuple[float, float]:
    """The T > 0 (and, with offset, the shift c) that minimise the (weighted) log loss of
    sigmoid((logits + c) / T); returns (T, c), c = 0 without offset.

    The loss is jointly convex in a = 1/T and b = c / T, so its minimum over b for a given a is convex in a, and
    its derivative in a is sum w (sigmoid(a z + b) - y) z at that b: nested bisections on the two derivatives
    (a in log space within TEMPERATURE_RANGE, b within +-OFFSET_RANGE) find the minimum.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    w = np.ones_like(z) if weights is None else np.asarray(weights, np.float64)

    def best_b(a: float) -> float:
        if not offset:
            return 0.0
        lo, hi = -OFFSET_RANGE, OFFSET_RANGE
        for _ in range(60):  # sum w (sigmoid(a z + b) - y) grows with b
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.sum(w * (sigmoid(a * z + mid) - y)) < 0 else (lo, mid)
        return 0.5 * (lo + hi)

    def slope(log_a: float) -> float:
        a = np.exp(log_a)
        return float(np.sum(w * (sigmoid(a * z + best_b(a)) - y) * z))
    lo, hi = -np.log(TEMPERATURE_RANGE[1]), -np.log(TEMPERATURE_RANGE[0])
    if slope(lo) >= 0:  # the loss grows as the logits are sharpened from almost flat: they carry no information
        t = TEMPERATURE_RANGE[1]
    elif slope(hi) <= 0:  # still falling at the sharpest allowed: separable data
        t = TEMPERATURE_RANGE[0]
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        t = float(np.exp(-0.5 * (lo + hi)))
    return t, best_b(1 / t) * t


def reliability(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin of the probability of state 1: (weighted) share of samples, mean probability and
    frequency of state 1 (NaN in empty bins)."""
    p, y = np.asarray(probabilities, np.float64), np.asarray(labels, np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)  # p = 1 goes into the last bin
    mass = np.bincount(index, w, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, w * p, bins) / mass
        freq = np.bincount(index, w * y, bins) / mass
    return {"share": mass / w.sum(), "probability": mean_p, "frequency": freq}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                               bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width bins of the probability of state 1 of (share of samples) x |frequency of
    state 1 - mean probability|. 0 for perfectly calibrated probabilities (up to sampling noise)."""
    table = reliability(probabilities, labels, weights, bins)
    filled = table["share"] > 0
    return float(np.sum(table["share"][filled] * np.abs(table["frequency"] - table["probability"])[filled]))


def log_loss(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """(Weighted) mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7] as in metrics.log_loss."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, np.float64)
    return float(np.sum(-w * (y * np.log(p) + (1 - y) * np.log(1 - p))) / w.sum())


def bayes_posterior(log_likelihood_ratio: np.ndarray, prior: float) -> np.ndarray:
    """Exact probability of state 1 from log p(x|1) - log p(x|0) and the share of state 1 it refers to."""
    return sigmoid(np.asarray(log_likelihood_ratio, np.float64) + np.log(prior / (1 - prior)))
