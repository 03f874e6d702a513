"""The yardstick: a reference classifier fitted on the run's own inputs, on data of other physics."""
import numpy as np
import torch

import reference
from report import compare_with_reference
from train import predict_logits
from data import DeviceData
from tools import other_physics


def images(kind: str, n: int, seed: int, contrast: float = 1.0, brighter: float = 0.0):
    """(N, 1, 16, 16) standardised log-density of one kind of tools/other_physics.py, balanced labels; state 1
    `brighter` by that many standard deviations."""
    y = np.arange(n) % 2
    x = other_physics.fields(y, kind, 16, np.random.default_rng(seed), contrast) + brighter * 0.15 * y[:, None, None]
    x = torch.from_numpy(x).float()[:, None]
    return (x - x.mean()) / x.std(), torch.from_numpy(y).float()


def accuracy(model, x, y) -> float:
    return float(((predict_logits(model, x) > 0).float() == y).float().mean())


def test_the_reference_reads_correlation_lengths_and_mean_levels():
    """Two physics the benchmark does not have: states that differ in correlation length along one axis (mode
    powers carry it) and states that differ only in mean level (the pixels carry it)."""
    for kind, contrast, brighter in (("axis-length", 6.0, 0.0), ("isotropic", 0.0, 0.3)):
        x, y = images(kind, 400, 0, contrast, brighter)
        xt, yt = images(kind, 400, 1, contrast, brighter)
        model, l2 = reference.fit_reference(x, y)
        assert accuracy(model, xt, yt) > 0.9, kind
        assert l2 in reference.L2_GRID
    x, y = images("isotropic", 400, 0, 0.0)  # no difference at all: chance, whatever it fits
    xt, yt = images("isotropic", 400, 1, 0.0)
    assert 0.4 < accuracy(reference.fit_reference(x, y)[0], xt, yt) < 0.6


def test_a_model_clearly_short_of_the_reference_gets_a_warning():
    x, y = images("axis-length", 400, 0, 6.0)
    xv, yv = images("axis-length", 400, 1, 6.0)
    data = DeviceData({"train": x, "valid": xv, "test": xv}, {"train": y, "valid": yv, "test": None}, {}, 16)
    model, _ = reference.fit_reference(x, y)
    good = predict_logits(model, xv).numpy()
    noise = np.random.default_rng(0).normal(size=len(yv))
    _, summary, notes = compare_with_reference(data, good, seed=0)
    assert notes == [] and abs(summary["valid_gap"]) < 0.02 and "test_acc" not in summary
    _, summary, [note] = compare_with_reference(data, noise, seed=0)
    assert note.startswith("WARNING: the model's validation accuracy is") and "--model cnn" in note
    assert summary["valid_gap"] > 0.3
