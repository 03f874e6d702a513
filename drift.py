"""Is a file like the training data? Per-sample features that the state does not move, described on the training
set; a sample is flagged when its most extreme robust score exceeds what only FALSE_FLAG_RATE of the training
samples reach (docs/usage.md, "Drift check")."""

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

import synthetic

FALSE_FLAG_RATE = 2e-4  # share of fresh training-like samples flagged
WARN_SHARE = 0.01  # warn when more of a file is flagged than this
BAND_EDGES = (1, 2, 4, 7, 10, 14, np.inf)  # |k| bands of the radially averaged power spectrum (grid units)
FEATURES = ["mean of log-density", "std of log-density",
            *(f"power at {lo}<=|k|<{hi}" if np.isfinite(hi) else f"power at |k|>={lo}"
              for lo, hi in zip(BAND_EDGES[:-1], BAND_EDGES[1:]))]


def table(channels: dict[str, np.ndarray], others: list[str]) -> np.ndarray:
    """Per sample: FEATURES, then the `others`' mean and std."""
    density = channels["density"]
    # a pixel <= 0 has no logarithm: NaN, which every log-density feature of its sample then inherits
    log_rho = np.log(np.where(density > 0, density, np.nan).astype(np.float64))
    grid = log_rho.shape[-1]
    power = torch.fft.fft2(torch.from_numpy(log_rho - log_rho.mean(axis=(1, 2), keepdims=True))).abs().square()
    power = power.numpy() / grid**2
    kk = synthetic.wave_vectors(grid)[0]
    with np.errstate(divide="ignore"):  # a constant field has no power: -inf, flagged by check
        # a band that a small grid does not reach is a constant 0 for every sample: it never flags
        bands = [np.log(power[:, band].mean(axis=1)) if band.any() else np.zeros(len(power))
                 for band in ((kk >= lo) & (kk < hi) for lo, hi in zip(BAND_EDGES[:-1], BAND_EDGES[1:]))]
    flat = {name: np.asarray(channels[name], np.float64).reshape(len(density), -1) for name in others}
    moments = [f(flat[name], axis=1) for name in others for f in (np.mean, np.std)]
    return np.column_stack([log_rho.mean(axis=(1, 2)), log_rho.std(axis=(1, 2)), *bands, *moments])


def describe(values: np.ndarray, others: list[str] = ()) -> dict:
    """The training set's `table` as plain lists (saved in the checkpoint): median, scale, flag threshold."""
    names = FEATURES + [f"{stat} of {name}" for name in others for stat in ("mean", "std")]
    q16, median, q84 = np.percentile(values, [15.87, 50, 84.13], axis=0)
    # a feature that never varies in training (a constant channel's std) gets a tiny scale: any change is flagged
    scale = np.maximum((q84 - q16) / 2, 1e-12)
    threshold = np.quantile(np.abs((values - median) / scale).max(axis=1), 1 - FALSE_FLAG_RATE)
    return {"features": names, "channels": list(others), "median": median.tolist(), "scale": scale.tolist(),
            "n": len(values), "threshold": float(threshold)}


@dataclass
class DriftCheck:
    """Flags of one file against a training description, and what differs."""
    flags: np.ndarray  # (N,) bool: outside the training range
    share: float  # flags.mean()
    culprits: dict[str, float]  # "feature higher|lower" -> share of samples flagged mainly by it
    warn: bool  # share > WARN_SHARE

    def summary(self) -> dict:  # for summary.json and the report
        return {"n": len(self.flags), "share_flagged": self.share, "warning": self.warn,
                "flagged_by": self.culprits}


def check(reference: dict, values: np.ndarray) -> DriftCheck:
    """Flag the samples of a `table` (with the other channels `reference` describes) outside the description."""
    names = reference["features"]
    assert values.shape[1] == len(names), f"the training description covers channels {reference['channels']}: pass them"
    z = (values - np.asarray(reference["median"])) / np.asarray(reference["scale"])  # robust standard scores
    valid = np.isfinite(z).all(axis=1)
    score = np.abs(np.where(valid[:, None], z, 0))
    flags = ~valid | (score.max(axis=1) > reference["threshold"])
    keys = [f"{names[w]} {'higher' if row[w] > 0 else 'lower'}" if ok else "density not positive, or constant"
            for row, w, ok in zip(z[flags], score[flags].argmax(axis=1), valid[flags])]
    culprits = {key: n / len(flags) for key, n in Counter(sorted(keys)).most_common()}
    return DriftCheck(flags, float(flags.mean()), culprits, float(flags.mean()) > WARN_SHARE)


def warning_line(result: DriftCheck, what: str) -> str:
    """One line for the log: the share flagged and what differs most (the feature behind most flags)."""
    reasons = ", ".join(f"{name} than in training ({share:.1%} of samples)"
                        for name, share in list(result.culprits.items())[:3])
    return (f"WARNING: drift check: {result.share:.1%} of {len(result.flags)} samples in {what} lie outside the "
            f"training data's range (a fresh training-like sample: {FALSE_FLAG_RATE:.2%}); differs most: {reasons}; "
            f"their probabilities may not be trustworthy")
