"""What the ViT is measured against: the scientist's reference CNN (--model cnn), the strongly regularised model the
ViT is meant to mimic, and the yardstick on any data set, a logistic regression on the model's inputs' pixels, Fourier
mode powers and log powers (the exact log-likelihood ratio of Gaussian fields is linear in the powers), L2 chosen on
a stratified fifth of the training split; an nn.Module, so report.py maps its sensitivity like the model's."""

import torch
import torch.nn.functional as F
from torch import nn

L2_GRID = (1e-4, 1e-3, 1e-2)  # per-sample L2 penalty on the standardised features' weights
MAX_TRAIN = 12_000  # training images the fit reads at most (drawn at random): ~80 MB of features at 28x28
ITERATIONS = 40
Z_SHORT = 1.96  # the model is "clearly short" of the reference when it trails by more than this many std errors


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool -> Dropout2d: halves the image side."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), nn.Dropout2d(0.25))


class ReferenceCNN(nn.Module):
    """(B, C, S, S) -> (B, 1) logits: two conv blocks (C -> 16 -> 32), then Linear(32*S*S/16 -> 128 -> 1), S % 4 = 0."""

    def __init__(self, *, in_channels: int = 2, image_size: int = 28):
        super().__init__()
        side = image_size // 4
        self.shift_unit = 4  # the total stride of the two max-pools: a shift by 4 moves the map by one cell
        self.features = nn.Sequential(conv_block(in_channels, 16), conv_block(16, 32))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * side * side, 128), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(128, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def mode_features(x: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) -> (N, F): pixels, power of each Fourier mode (half plane) and its logarithm."""
    n, _, s, _ = x.shape
    power = torch.fft.rfft2(x.float()).abs().square() / s
    return torch.cat([x.reshape(n, -1).float(), power.reshape(n, -1), torch.log(power + 1e-6).reshape(n, -1)], 1)


class Reference(nn.Module):
    """logit = linear(standardised mode_features(x))."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((mode_features(x) - self.mean) / self.std)


def fit_linear(f: torch.Tensor, y: torch.Tensor, l2: float) -> nn.Linear:
    """Minimise mean BCE + l2 |w|^2 over standardised features f with L-BFGS from zero (a convex problem)."""
    linear = nn.Linear(f.shape[1], 1, device=f.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(linear(f).squeeze(1), y) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    return linear


def fit_reference(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[Reference, float]:
    """The reference classifier on training images x (N, C, S, S) and labels y (N,) in {0, 1}, and its L2."""
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:MAX_TRAIN].to(x.device)
    x, y = x[pick], y[pick].float()
    f = mode_features(x)
    mean, std = f.mean(0), f.std(0)
    # a feature that barely varies in training says nothing and would blow up when standardised: left out
    std = torch.where(std > 1e-4 * std.median(), std, torch.full_like(std, torch.inf))
    f = (f - mean) / std
    held = torch.zeros(len(y), dtype=torch.bool, device=x.device)  # the first fifth of each state
    for c in (0, 1):
        idx = torch.nonzero(y == c).flatten()
        held[idx[: max(len(idx) // 5, 1)]] = True
    losses = []
    for l2 in L2_GRID:
        linear = fit_linear(f[~held], y[~held], l2)
        losses.append(F.binary_cross_entropy_with_logits(linear(f[held]).squeeze(1), y[held]).item())
    l2 = L2_GRID[losses.index(min(losses))]
    return Reference(mean, std, fit_linear(f, y, l2)).eval(), l2
