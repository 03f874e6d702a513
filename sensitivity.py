"""What the model learned: its sensitivity to the power of each Fourier mode, beside a yardstick's.

The map: s_k = d logit / d log a_k, the change of the logit when the amplitude a_k of Fourier mode k of an
image's density channel is scaled by (1 + eps), averaged over validation images. Scaling one mode commutes
with whitening (a gain per mode) and with normalisation (which touches k = 0 only), so s_k is the same for the
modes of the raw log-density and of the model's input: the map needs no care about which space it is in.
For one image with input X (Fourier transform X_k) and gradient G of the logit with respect to the input,
Parseval gives s_k = Re(conj(G_k) X_k) / S^2: one backward pass per batch, a second or two on a CPU.
With test-time views the logit is a mean over the image and its partner at shifts within a patch. The map is
an average over images, and where shifts hold a shift changes neither the power of a mode nor the
distribution of the images, so the shifted views add nothing to the averaged map but cost: the map of the
view-averaged logit is computed from the unshifted views (the image and its partner).

For the exact log-likelihood ratio of the benchmark, LLR = 1/2 sum_k P_k (1/lambda0_k - 1/lambda1_k) + const
with P_k = |X_k|^2 / S^2, so s_k = P_k (1/lambda0_k - 1/lambda1_k), whose mean over both states is
lambda_k (1/lambda0_k - 1/lambda1_k) ~ log(lambda1_k / lambda0_k), proportional to -|k| cos 2θ: the physics.
Divided by the model's temperature, the model's map is in the same unit (log-odds per unit log-amplitude).
With --no-whiten the modes are those of density itself, close to log-density's for these small fluctuations.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import synthetic
from symmetry import Views, view_averaged_logits

SENSITIVITY_IMAGES = 512  # validation images averaged: the map's noise is a few % of its peak, ~1 s on CPU
BATCH = 64


def sample(x: torch.Tensor, images: int, seed: int) -> torch.Tensor:
    """`images` random images of x, the same ones every time."""
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:images].to(x.device)
    return x[pick]


def logit_function(model: nn.Module, views: Views | None):
    """The model's logit, or its mean over the unshifted `views` (see the module docstring)."""
    if views is None:
        return model
    unshifted = Views(views.rules, 1)  # offset 0 whatever the shift unit, so no model needs one here
    return lambda images: view_averaged_logits(model, images, 1, unshifted)


def mode_sensitivity(model: nn.Module, x: torch.Tensor, channel: int, views: Views | None = None,
                     images: int = SENSITIVITY_IMAGES, seed: int = 0) -> np.ndarray:
    """The (S, S) map s_k of input channel `channel` (unshifted FFT layout, k = 0 at [0, 0]) averaged over
    `images` random images of x (N, C, S, S), of the model's logit or (views) of its view average."""
    x, forward = sample(x, images, seed), logit_function(model, views)
    was_training = model.training
    model.eval()
    total = torch.zeros(x.shape[-2:], dtype=torch.float64, device=x.device)
    for start in range(0, len(x), BATCH):
        xb = x[start:start + BATCH].detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(forward(xb).float().sum(), xb)
        g_k, x_k = torch.fft.fft2(grad[:, channel].double()), torch.fft.fft2(xb[:, channel].detach().double())
        total += (g_k.conj() * x_k).real.sum(dim=0)
    model.train(was_training)
    return (total / (len(x) * x.shape[-1] ** 2)).cpu().numpy()


@torch.no_grad()
def channel_importance(model: nn.Module, x: torch.Tensor, views: Views | None = None, images: int = SENSITIVITY_IMAGES,
                       seed: int = 0) -> list[float]:
    """Per input channel, the mean |change of the logit| when that channel alone is swapped between images (the
    others kept): which channels the model reads, in logit units. A channel it ignores gets 0. (Shares of the
    total would hide that a memorising model barely responds to either channel of validation images.)"""
    x, forward = sample(x, images, seed), logit_function(model, views)
    was_training = model.training
    model.eval()
    swap = torch.roll(torch.arange(len(x), device=x.device), 1)  # every image gets its neighbour's channel
    base = torch.cat([forward(x[s:s + BATCH]).float() for s in range(0, len(x), BATCH)])
    change = []
    for channel in range(x.shape[1]):
        swapped = x.clone()
        swapped[:, channel] = x[swap, channel]
        after = torch.cat([forward(swapped[s:s + BATCH]).float() for s in range(0, len(x), BATCH)])
        change.append(float((after - base).abs().mean()))
    model.train(was_training)
    return change


def bayes_sensitivity(grid: int = synthetic.GRID) -> np.ndarray:
    """The exact log-likelihood ratio's map on the benchmark, for a 50/50 mix of states: (lambda0 + lambda1)/2 x
    (1/lambda0 - 1/lambda1) with the spectra as stored (float16 quantisation noise included); 0 at k = 0."""
    noise = synthetic.quantisation_variance(grid)
    lam0, lam1 = synthetic.class_spectrum(0, grid) + noise, synthetic.class_spectrum(1, grid) + noise
    weights = 0.5 * (lam0 + lam1) * (1 / lam0 - 1 / lam1)
    weights[0, 0] = 0.0  # the offset mode is the same for both states
    return weights


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (S, S) maps over the modes k != 0."""
    keep = np.ones(a.shape, bool)
    keep[0, 0] = False
    if np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:  # a flat map (a model that ignores density): no correlation
        return float("nan")
    return float(np.corrcoef(a[keep], b[keep])[0, 1])
