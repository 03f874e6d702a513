"""The symmetries behind --augment and --tta, checked on the real test file before anything relies on them."""
import numpy as np
import pytest
import torch
import h5py
from torch import nn

import symmetry
from cnn import ReferenceCNN
from data import dihedral_mean
from synthetic import wave_vectors
from train import predict_logits
from vision_transformer import VisionTransformer


def anisotropy(log_density: np.ndarray, axis: str) -> np.ndarray:
    """Per sample: power at small scales weighted by cos 2θ (anisotropy between the grid axes) or sin 2θ
    (between the diagonals), in units of its standard deviation over the samples."""
    grid = log_density.shape[-1]
    kk, cos2 = wave_vectors(grid)
    k = np.fft.fftfreq(grid, d=1.0 / grid)
    ki, kj = np.meshgrid(k, k, indexing="ij")
    sin2 = np.where(kk > 0, 2 * ki * kj / np.maximum(kk, 1e-12) ** 2, 0.0)
    weight = kk * np.exp(0.67 * kk)  # undo the spectral decay: small scales carry the signal
    power = np.abs(np.fft.fft2(log_density)) ** 2
    s = (power * weight * (cos2 if axis == "axes" else sin2)).sum(axis=(-2, -1))
    return s / s.std()


def real_log_density(path) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return np.log(h5["density"][()].astype(np.float64))


def test_real_states_differ_by_an_axis_anisotropy_so_flips_keep_and_transposes_swap_the_label(real_test_file):
    """Two states means a bimodal statistic. Along the grid axes (cos 2θ) the real test file is bimodal and
    split about evenly; along the diagonals (sin 2θ) it is one Gaussian (mean |s| / std = sqrt(2/π) = 0.80).
    A reflection keeps cos 2θ, a transpose negates it: so reflections keep the state and transposes swap it."""
    x = real_log_density(real_test_file)
    axes, diagonals = anisotropy(x, "axes"), anisotropy(x, "diagonals")
    gaussian = np.sqrt(2 / np.pi)
    assert np.abs(axes - np.median(axes)).mean() > gaussian + 0.08  # bimodal
    assert np.abs(diagonals - np.median(diagonals)).mean() < gaussian + 0.04  # unimodal
    assert 0.4 < (axes > 0).mean() < 0.6  # the two states about equally often
    images = torch.from_numpy(x[:64, None])
    original = anisotropy(x[:64], "axes")
    for transpose, flip_rows, flip_cols in symmetry.DIHEDRAL:
        view = symmetry.dihedral_view(images, transpose, flip_rows, flip_cols)[:, 0].numpy()
        expected = -original if transpose else original
        np.testing.assert_allclose(anisotropy(view, "axes"), expected, rtol=1e-6, atol=1e-6)


def test_augment_swaps_labels_exactly_where_it_transposes_and_shifts_periodically():
    torch.manual_seed(0)
    x = torch.randn(256, 1, 8, 8)
    y = torch.randint(0, 2, (256,)).float()
    torch.manual_seed(1)
    xa, ya = symmetry.augment_batch(x, y)
    swapped = ya != y
    assert 0.35 < swapped.float().mean() < 0.65
    for i in range(len(x)):  # each output is one symmetry of its input, composed with a shift of the batch
        candidates = [symmetry.dihedral_view(x[i:i + 1], *v) for v in symmetry.DIHEDRAL if v[0] == bool(swapped[i])]
        shifts = [torch.roll(c, (a, b), (-2, -1)) for c in candidates for a in range(8) for b in range(8)]
        assert any(torch.equal(s[0], xa[i]) for s in shifts), i
    torch.manual_seed(1)
    again = symmetry.augment_batch(x, y)
    assert torch.equal(again[0], xa) and torch.equal(again[1], ya)  # reproducible from the seed


def test_view_averaging_is_antisymmetric_under_a_transpose_and_covers_shifted_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    x = torch.randn(5, 1, 8, 8)
    averaged = symmetry.view_averaged_logits(model, x, patch=4)
    torch.testing.assert_close(symmetry.view_averaged_logits(model, x.transpose(-1, -2), patch=4), -averaged)
    assert len(symmetry.tta_views(4, 1)) == 2 and len(symmetry.tta_views(4, 4)) == 32
    assert {(a, b) for _, a, b in symmetry.tta_views(4, 4)} == {(a, b) for a in range(4) for b in range(4)}
    expected = sum((-1 if t else 1) * model(torch.roll(x.transpose(-1, -2) if t else x, (a, b), (-2, -1)))
                   for t in (False, True) for a in (0, 2) for b in (0, 2)) / 8
    torch.testing.assert_close(averaged, expected)


def test_the_symmetric_whitening_filter_commutes_with_every_symmetry():
    rng = np.random.default_rng(0)
    power = np.abs(np.fft.fft2(rng.standard_normal((28, 28)))) ** 2  # any real field's power spectrum
    gain = dihedral_mean(power)
    field = rng.standard_normal((28, 28))
    whiten = lambda f: np.fft.ifft2(np.fft.fft2(f) * gain).real
    for transpose, flip_rows, flip_cols in symmetry.DIHEDRAL:
        view = lambda f: symmetry.dihedral_view(torch.from_numpy(f), transpose, flip_rows, flip_cols).numpy()
        np.testing.assert_allclose(whiten(view(field)), view(whiten(field)), atol=1e-9)


def test_views_shift_by_the_models_own_unit_also_when_it_is_wrapped():
    """A ViT with 7-pixel patches shifts its views within 7 pixels whether it is bare, inside DDP (.module) or
    compiled (._orig_mod); the CNN within its 4-pixel pooling cell; a model that does not say is an error."""
    torch.manual_seed(0)
    vit = VisionTransformer(in_channels=1, patch_size=7, emb_dim=16, depth=1, heads=2, mlp_dim=16).eval()
    wrapper, compiled = nn.Module(), nn.Module()
    wrapper.module = vit  # as DistributedDataParallel holds it
    wrapper.forward = vit.forward
    compiled._orig_mod = wrapper  # as torch.compile holds it (the real wrapper: tests/test_train_compile.py)
    assert symmetry.shift_unit(vit) == symmetry.shift_unit(wrapper) == symmetry.shift_unit(compiled) == 7
    assert symmetry.shift_unit(ReferenceCNN(in_channels=1)) == 4
    x = torch.randn(6, 1, 28, 28)
    wrapped = predict_logits(wrapper, x, tta=2)
    torch.testing.assert_close(wrapped, predict_logits(vit, x, tta=2), rtol=0, atol=0)
    # the unit matters: views within 4 pixels (the old fallback for a model without .embed) give other logits
    assert not torch.allclose(wrapped, symmetry.view_averaged_logits(vit, x, patch=4).squeeze(1))
    with pytest.raises(ValueError, match="has no shift_unit"):
        symmetry.shift_unit(nn.Linear(2, 1))
    with pytest.raises(ValueError, match="has no shift_unit"):
        predict_logits(nn.Linear(28, 1), x, tta=2)
