"""Honest probabilities: one temperature fitted on validation logits, the calibration error, the exact posterior.

The default trains on label-smoothed targets, so its probabilities are squeezed toward 0.5. Dividing the
(view-averaged) logit by one temperature T, fitted on the validation set, repairs that without moving any
0/1 prediction (T > 0 keeps the sign of every logit).

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


def fit_temperature(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The T > 0 that minimises the (weighted) log loss of sigmoid(logits / T).

    The loss is convex in a = 1/T and its derivative sum w (sigmoid(a z) - y) z grows with a, so bisection on
    the derivative (in log a, within TEMPERATURE_RANGE) finds the minimum to machine precision.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    w = np.ones_like(z) if weights is None else np.asarray(weights, np.float64)

    def slope(log_a: float) -> float:
        return float(np.sum(w * (sigmoid(np.exp(log_a) * z) - y) * z))
    lo, hi = -np.log(TEMPERATURE_RANGE[1]), -np.log(TEMPERATURE_RANGE[0])
    if slope(lo) >= 0:  # the loss grows as the logits are sharpened from almost flat: they carry no information
        return TEMPERATURE_RANGE[1]
    if slope(hi) <= 0:  # still falling at the sharpest allowed: separable data
        return TEMPERATURE_RANGE[0]
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return float(np.exp(-0.5 * (lo + hi)))


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
