"""Is a file like the training data? A description of the training set's density, and per-sample flags.

Each sample of log-density is summarised by a few features that a change of instrument, resolution or regime
moves: its mean (a gain or offset), its standard deviation (the contrast) and its radially averaged power
spectrum in bands of |k| (a correlation length moves power between bands, added noise lifts the small
scales). The two states differ only in the angle of the power, which radial averages ignore, so the features
are the same for both states and a file with another mix of states is not flagged. Every other channel the
model reads (recording_date, when asked for) is described by its per-sample mean and std.

A sample is flagged when its most extreme feature, in robust standard scores (median, 16-84 % range of the
training set), is beyond the score that only FALSE_FLAG_RATE of the training samples reach. Taking the
maximum over the features before choosing the threshold handles the multiple testing across them (8
features, correlated): a fresh sample from the training distribution is flagged with probability
FALSE_FLAG_RATE, fifty times under WARN_SHARE, whereas "outside any feature's 0.1-99.9 % range" would flag
about 1 % of fresh samples. The per-feature ranges are still reported: they say what differs.

The rate is 1 in 5,000 rather than 1 in 1,000 because small differences should not warn: the benchmark's
spectrum is a model of the real test file, whose median power at |k| >= 10 is 15-20 % below the benchmark's;
against the benchmark's training set (28,000 samples) 0.1 % of the real file is flagged at this rate, 0.8 % at
1 in 1,000 (measured on the development CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FALSE_FLAG_RATE = 2e-4  # share of fresh training-like samples flagged
WARN_SHARE = 0.01  # warn when more of a file is flagged than this
RANGE_PERCENTILES = (0.1, 99.9)  # the per-feature training range reported beside the flags
BAND_EDGES = (1, 2, 4, 7, 10, 14, np.inf)  # |k| bands of the radially averaged power spectrum (grid units)


def band_names(edges: tuple = BAND_EDGES) -> list[str]:
    return [f"power at {lo}<=|k|<{hi}" if np.isfinite(hi) else f"power at |k|>={lo}"
            for lo, hi in zip(edges[:-1], edges[1:])]


FEATURES = ["mean of log-density", "std of log-density", *band_names()]


def radial_index(grid: int) -> np.ndarray:
    """|k| of each Fourier mode of a grid x grid field, in grid units."""
    k = np.fft.fftfreq(grid, d=1.0 / grid)
    return np.hypot(*np.meshgrid(k, k, indexing="ij"))


def summarise(density: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample of (n, S, S) density: FEATURES (mean and std of log-density, log of the mean power in each |k|
    band, with the sample's mean removed) and the log-power averaged over each ring |k| in [r - 0.5, r + 0.5),
    r = 1, 2, ... (the figure). Samples whose density is not positive get NaN (and are flagged)."""
    positive = (np.asarray(density).reshape(len(density), -1) > 0).all(axis=1)
    log_rho = np.log(np.where(positive[:, None, None], density, 1.0).astype(np.float64))
    grid = log_rho.shape[-1]
    power = np.abs(np.fft.fft2(log_rho - log_rho.mean(axis=(1, 2), keepdims=True))) ** 2 / grid**2
    kk = radial_index(grid)
    ring = np.rint(kk).astype(int)
    with np.errstate(divide="ignore"):  # a constant field has no power: -inf, flagged by check
        # a band that a small grid does not reach is a constant 0 for every sample: it never flags
        bands = [np.log(power[:, band].mean(axis=1)) if band.any() else np.zeros(len(power))
                 for band in ((kk >= lo) & (kk < hi) for lo, hi in zip(BAND_EDGES[:-1], BAND_EDGES[1:]))]
        rings = np.log(np.stack([power[:, ring == r].mean(axis=1) for r in range(1, ring.max() + 1)], axis=1))
    values = np.column_stack([log_rho.mean(axis=(1, 2)), log_rho.std(axis=(1, 2)), *bands])
    values[~positive], rings[~positive] = np.nan, np.nan
    return values, rings


def other_features(others: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Names and (N, 2 per channel) values: the per-sample mean and std of each other channel."""
    names, columns = [], []
    for name, value in others.items():
        flat = np.asarray(value, np.float64).reshape(len(value), -1)
        names += [f"mean of {name}", f"std of {name}"]
        columns += [flat.mean(axis=1), flat.std(axis=1)]
    return names, np.column_stack(columns) if columns else np.zeros((0, 0))


def per_sample(density: np.ndarray, others: dict[str, np.ndarray] | None = None, chunk: int = 4096
               ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Feature names, values and ring spectra per sample; summarise() in chunks (a 28,000-sample training set
    needs ~100 MB, not 1 GB, of float64 spectra), then the other channels' mean and std."""
    parts = [summarise(density[start:start + chunk]) for start in range(0, len(density), chunk)]
    values, rings = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    names, extra = other_features(others or {})
    return FEATURES + names, np.column_stack([values, extra]) if names else values, rings


def robust_scores(values: np.ndarray, reference: dict) -> np.ndarray:
    """Feature values in standard scores: (x - training median) / (half the training 16-84 % range)."""
    return (values - np.asarray(reference["median"])) / np.asarray(reference["scale"])


def describe(density: np.ndarray, others: dict[str, np.ndarray] | None = None) -> dict:
    """What the training set looks like: per-feature median, scale and 0.1/99.9 % range, the flag threshold, and
    the radially averaged spectrum's percentiles for the figure; `others`: the other channels the model reads.
    Plain lists: saved in the checkpoint."""
    names, values, rings = per_sample(density, others)
    q16, median, q84 = np.percentile(values, [15.87, 50, 84.13], axis=0)
    low, high = np.percentile(values, RANGE_PERCENTILES, axis=0)
    # a feature that never varies in training (a constant channel's std) gets a tiny scale: any change is flagged
    reference = {"features": names, "channels": list(others or {}), "median": median.tolist(),
                 "scale": np.maximum((q84 - q16) / 2, 1e-12).tolist(), "low": low.tolist(), "high": high.tolist(),
                 "n": len(values)}
    scores = np.abs(robust_scores(values, reference)).max(axis=1)
    reference["threshold"] = float(np.quantile(scores, 1 - FALSE_FLAG_RATE))
    low, median, high = np.percentile(rings, [RANGE_PERCENTILES[0], 50, RANGE_PERCENTILES[1]], axis=0)
    reference["rings"] = {"low": low.tolist(), "median": median.tolist(), "high": high.tolist()}
    return reference


@dataclass
class DriftCheck:
    """Flags of one file against a training description, and what differs."""
    flags: np.ndarray  # (N,) bool: outside the training range
    share: float  # flags.mean()
    outside: dict[str, dict[str, float]]  # feature -> share below and above the training 0.1-99.9 % range
    culprits: dict[str, float]  # "feature higher|lower" -> share of samples flagged mainly by it
    rings: list[float]  # the file's median radially averaged log-power per ring (the figure)

    @property
    def warn(self) -> bool:
        return self.share > WARN_SHARE

    def summary(self) -> dict:
        """JSON-ready: for summary.json and the report."""
        return {"n": len(self.flags), "share_flagged": self.share, "warning": self.warn,
                "flagged_by": self.culprits, "outside_training_range": self.outside}


def check(reference: dict, density: np.ndarray, others: dict[str, np.ndarray] | None = None) -> DriftCheck:
    """Flag the samples of `density` (N, S, S), with the other channels `reference` describes (`others`, by
    name), that lie outside the training description `reference`."""
    others = others or {}
    missing = [name for name in reference.get("channels", []) if name not in others]
    assert not missing, f"the training description covers channels {missing} too: pass them"
    _, values, rings = per_sample(density, {name: others[name] for name in reference.get("channels", [])})
    scores = robust_scores(values, reference)
    valid = np.isfinite(scores).all(axis=1)
    flags = ~valid | (np.abs(np.where(valid[:, None], scores, 0)).max(axis=1) > reference["threshold"])
    outside = {name: {"below": float(np.mean(values[:, i] < lo)), "above": float(np.mean(values[:, i] > hi))}
               for i, (name, lo, hi) in enumerate(zip(reference["features"], reference["low"], reference["high"]))}
    counts: dict[str, int] = {}
    for row, ok in zip(scores[flags], valid[flags]):
        worst = int(np.argmax(np.abs(row))) if ok else -1
        key = (f"{reference['features'][worst]} {'higher' if row[worst] > 0 else 'lower'}" if ok
               else "density not positive, or constant")
        counts[key] = counts.get(key, 0) + 1
    culprits = {key: n / len(flags) for key, n in sorted(counts.items(), key=lambda kv: -kv[1])}
    medians = np.median(rings[valid], axis=0) if valid.any() else np.full(rings.shape[1], np.nan)
    return DriftCheck(flags, float(flags.mean()), outside, culprits, medians.tolist())


def warning_line(result: DriftCheck, what: str) -> str:
    """One line for the log: the share flagged and what differs most (the feature behind most flags)."""
    reasons = ", ".join(f"{name} than in training ({share:.1%} of samples)"
                        for name, share in list(result.culprits.items())[:3])
    return (f"WARNING: drift check: {result.share:.1%} of {len(result.flags)} samples in {what} lie outside the "
            f"training data's range (a fresh training-like sample: {FALSE_FLAG_RATE:.2%}); differs most: {reasons}; "
            f"their probabilities may not be trustworthy")
