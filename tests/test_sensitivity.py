"""report.py's sensitivity map: it peaks at the mode a model reads; the exact likelihood ratio's map is the physics."""

import numpy as np
import pytest
import torch
from torch import nn

import synthetic
from report import bayes_sensitivity, map_correlation, mode_sensitivity
from symmetry import SymmetryPlan

# the image and its transpose, which votes negated
PAIR = SymmetryPlan(views=(("identity", False), ("transpose", True)), view_shifts=4)

GRID = synthetic.GRID


class ReadsOneMode(nn.Module):
    """Logit = power of Fourier mode (i, j) of channel `channel`."""

    def __init__(self, i: int, j: int, channel: int = 0):
        super().__init__()
        self.i, self.j, self.channel = i, j, channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.fft.fft2(x[:, self.channel])[:, self.i, self.j].abs() ** 2 / GRID**2)[:, None]


class ExactLLR(nn.Module):
    """The benchmark's exact log-likelihood ratio, computed from log-density filtered by `gain` per mode."""

    def __init__(self, gain: np.ndarray):
        super().__init__()
        lam0, lam1 = (synthetic.class_spectrum(c) + synthetic.quantisation_variance() for c in (0, 1))
        weight = np.zeros_like(lam0)
        keep = gain > 0
        weight[keep] = (1 / lam0 - 1 / lam1)[keep] / gain[keep] ** 2  # undo the filter, then weigh the power
        weight[0, 0] = 0.0
        self.register_buffer("weight", torch.tensor(weight, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        power = torch.fft.fft2(x[:, 0]).abs() ** 2 / GRID**2
        return 0.5 * (power * self.weight).sum(dim=(-2, -1))[:, None]


def log_density(n: int = 256, seed: int = 0) -> np.ndarray:
    labels = np.arange(n) % 2
    return synthetic.sample_log_density(labels, np.random.default_rng(seed))


def test_the_map_of_a_model_that_reads_one_mode_peaks_at_that_mode():
    x = torch.tensor(log_density(64), dtype=torch.float32)[:, None]
    x = torch.cat([x, torch.randn_like(x)], dim=1)  # a second channel the model ignores
    model = ReadsOneMode(3, 5)
    sens = mode_sensitivity(model, x, channel=0, images=64)
    peak = np.unravel_index(np.argmax(np.abs(sens)), sens.shape)
    assert peak in {(3, 5), (GRID - 3, GRID - 5)}  # k and -k: the same real wave
    assert sens[3, 5] > 0 and np.abs(np.delete(sens.ravel(), [3 * GRID + 5, (GRID - 3) * GRID + GRID - 5])).max() < 1e-6
    # through the view average, the transposed view votes with the opposite sign at the transposed mode
    views = mode_sensitivity(model, x, channel=0, plan=PAIR, images=64)
    assert views[3, 5] > 0 > views[5, 3]


def test_the_exact_likelihood_ratio_has_the_bayes_map_in_any_whitening():
    raw = log_density()
    gain = np.abs(np.random.default_rng(1).normal(1, 0.3, (GRID, GRID))) + 0.1
    gain = 0.5 * (gain + np.roll(gain[::-1, ::-1], 1, axis=(0, 1)))  # any real filter: the same gain at k and -k
    whitened = np.fft.ifft2(np.fft.fft2(raw) * gain).real
    maps = [mode_sensitivity(ExactLLR(g), torch.tensor(v, dtype=torch.float32)[:, None], channel=0)
            for g, v in ((np.ones((GRID, GRID)), raw), (gain, whitened))]
    assert np.allclose(maps[0], maps[1], rtol=1e-3, atol=1e-4 * np.abs(maps[0]).max())  # the same modes
    bayes = bayes_sensitivity()
    assert map_correlation(maps[0], bayes) > 0.95
    slope = (maps[0] * bayes).sum() / (bayes**2).sum()
    assert slope == pytest.approx(1, abs=0.05)  # the same unit, not only the same shape


def test_the_bayes_map_is_the_physics():
    bayes = bayes_sensitivity()
    assert bayes[0, 0] == 0 and np.allclose(bayes, -bayes.T)  # a transpose swaps the states
    kk, cos2 = synthetic.wave_vectors()
    assert map_correlation(bayes, -kk * cos2) > 0.95  # log P1/P0 is proportional to -|k| cos 2θ
    assert map_correlation(bayes, np.random.default_rng(0).normal(size=bayes.shape)) < 0.2
    assert np.isnan(map_correlation(np.zeros_like(bayes), bayes))  # a flat map, without a warning
