"""What the model learned: s_k = d logit / d log a_k, the logit's sensitivity to the amplitude of each Fourier
mode k, by Parseval Re(conj(G_k) X_k) / S^2 for the input X and the logit's gradient G; scaling a mode commutes
with whitening and normalisation, so s_k is the same in raw and input space (docs/usage.md)."""

import numpy as np
import torch
from torch import nn

import synthetic
from symmetry import Views, view_averaged_logits

SENSITIVITY_IMAGES = 512  # validation images averaged: the map's noise is a few % of its peak
BATCH = 64


def prepared(model: nn.Module, x: torch.Tensor, views: Views | None, images: int):
    """The model in eval mode (for good: the report's last step), `images` fixed random images of x and the logit:
    the model's, or its mean over the unshifted `views` (unit 1: all offsets 0; shifts change no mode's power)."""
    model.eval()
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:images].to(x.device)]
    return x, (model if views is None else lambda batch: view_averaged_logits(model, batch, 1, views))


def mode_sensitivity(model: nn.Module, x: torch.Tensor, channel: int, views: Views | None = None,
                     images: int = SENSITIVITY_IMAGES) -> np.ndarray:
    """The (S, S) map s_k of input `channel` (k = 0 at [0, 0]) over `images` random images of x (N, C, S, S)."""
    x, forward = prepared(model, x, views, images)
    total = torch.zeros(x.shape[-2:], dtype=torch.float64, device=x.device)
    for xb in x.split(BATCH):
        xb = xb.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(forward(xb).float().sum(), xb)
        g_k, x_k = torch.fft.fft2(grad[:, channel].double()), torch.fft.fft2(xb[:, channel].detach().double())
        total += (g_k.conj() * x_k).real.sum(dim=0)
    return (total / (len(x) * x.shape[-1] ** 2)).cpu().numpy()


@torch.no_grad()
def channel_importance(model: nn.Module, x: torch.Tensor, views: Views | None = None, images: int = SENSITIVITY_IMAGES
                       ) -> list[float]:
    """Per input channel, the mean |change of the logit| when that channel alone is swapped between images."""
    x, forward = prepared(model, x, views, images)
    base = torch.cat([forward(xb).float() for xb in x.split(BATCH)])
    change = []
    for channel in range(x.shape[1]):
        swapped = x.clone()
        swapped[:, channel] = x[:, channel].roll(1, 0)  # every image gets its neighbour's channel
        change.append(float((torch.cat([forward(xb).float() for xb in swapped.split(BATCH)]) - base).abs().mean()))
    return change


def bayes_sensitivity(grid: int = synthetic.GRID) -> np.ndarray:
    """The exact log-likelihood ratio's map on the benchmark (50/50 states, float16 noise included)."""
    noise = synthetic.quantisation_variance(grid)
    lam0, lam1 = (synthetic.class_spectrum(c, grid) + noise for c in (0, 1))
    weights = 0.5 * (lam0 + lam1) * (1 / lam0 - 1 / lam1)
    weights[0, 0] = 0.0  # the offset mode is the same for both states
    return weights


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (S, S) maps over the modes k != 0 (nan where one is flat)."""
    a, b = a.ravel()[1:], b.ravel()[1:]
    return float("nan") if np.ptp(a) == 0 or np.ptp(b) == 0 else float(np.corrcoef(a, b)[0, 1])
