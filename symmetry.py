"""The symmetries of the gas images, for training-time augmentation and test-time view averaging.

The density is a stationary field on a periodic grid, and the two states differ only by the sign of an
anisotropy between the two grid axes (log P1/P0 ∝ -|k| cos 2θ). So:
- a periodic shift (torch.roll) and a reflection of either axis keep the label (cos 2θ is unchanged);
- a transpose swaps the axes, flips the sign of cos 2θ, and so swaps the label; so does a 90° rotation.
tests/test_symmetry.py checks these on the real test file. Everything here runs on the device, batched.
"""
from __future__ import annotations

import torch

# The 8 symmetries of the square as (transpose, flip rows, flip columns); a transpose swaps the label.
DIHEDRAL = [(t, fr, fc) for t in (False, True) for fr in (False, True) for fc in (False, True)]


def dihedral_view(x: torch.Tensor, transpose: bool, flip_rows: bool, flip_cols: bool) -> torch.Tensor:
    """One symmetry of (B, C, S, S) images. Reflections are index reversals; on a periodic grid they are
    reflections about a point between pixels, which is still a symmetry of a stationary field."""
    if transpose:
        x = x.transpose(-1, -2)
    dims = [d for d, flip in ((-2, flip_rows), (-1, flip_cols)) if flip]
    return x.flip(dims) if dims else x


def augment_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A random symmetry of each image (labels swapped where transposed) and one random periodic shift of the
    whole batch (a shift per batch is as good as per image for a convolution-free ViT and costs one roll).

    Draws from torch's global generator on x's device: reproducible from the run seed, and resumed runs
    restore that generator's state.
    """
    b = len(x)
    draws = torch.rand(3, b, 1, 1, 1, device=x.device) < 0.5
    x = torch.where(draws[0], x.transpose(-1, -2), x)
    x = torch.where(draws[1], x.flip(-2), x)
    x = torch.where(draws[2], x.flip(-1), x)
    y = torch.where(draws[0].view(b), 1 - y, y)
    shift = torch.randint(0, x.shape[-1], (2,), device=x.device)
    # roll by a tensor amount without a host sync: gather along each axis with shifted indices
    idx = (torch.arange(x.shape[-1], device=x.device) - shift[:, None]) % x.shape[-1]
    x = x.index_select(-2, idx[0]).index_select(-1, idx[1])
    return x, y


def tta_views(patch: int, shifts: int = 2) -> list[tuple[bool, int, int]]:
    """(transpose, row shift, column shift) of each test-time view: the image and its transpose, each at
    shifts x shifts periodic shifts spread evenly over one patch (shifts=2: by 0 or half a patch per axis).
    A ViT sees pixel pairs within a patch far better than pairs across a patch boundary; shifted views move
    the boundaries, so together they cover every pair."""
    offsets = sorted({patch * i // shifts for i in range(shifts)})
    return [(t, a, b) for t in (False, True) for a in offsets for b in offsets]


def shift_unit(model: torch.nn.Module) -> int:
    """The pixels that test-time views shift within (the ViT's patch, the CNN's pooling cell), read from the
    model itself, also when DDP (.module) or torch.compile (._orig_mod) wraps it."""
    while not hasattr(model, "shift_unit"):
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            raise ValueError(f"{type(model).__name__} has no shift_unit: test-time views need to know how far to "
                             f"shift (give the model a shift_unit attribute)")
        model = inner
    return int(model.shift_unit)


def view_averaged_logits(model: torch.nn.Module, x: torch.Tensor, patch: int, shifts: int = 2) -> torch.Tensor:
    """The mean of the model's logit for "new state" over tta_views(patch, shifts), (B, 1). A transposed view votes
    with its logit negated, because its label is the other one; so the mean is exactly antisymmetric under a
    transpose, and any offset the model learned (a class prior, an energy scale) cancels."""
    views = tta_views(patch, shifts)
    total = torch.zeros(len(x), 1, device=x.device)
    for transpose, rows, cols in views:
        view = torch.roll(dihedral_view(x, transpose, False, False), (rows, cols), (-2, -1))
        logit = model(view).float()
        total += -logit if transpose else logit
    return total / len(views)
