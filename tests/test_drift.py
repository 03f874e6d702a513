"""drift.py: a file like the training data raises no warning; another correlation length, noise level or offset does."""

import io

import h5py
import numpy as np
import pytest
import torch

import drift
import synthetic


def benchmark_density(n0: int, n1: int, seed: int, decay: float = synthetic.SPECTRAL_DECAY) -> np.ndarray:
    """Density as the benchmark stores it (float16), optionally with another spectral decay (correlation length)."""
    old = synthetic.SPECTRAL_DECAY
    synthetic.SPECTRAL_DECAY = decay
    try:
        return synthetic.make_split(n0, n1, "test", np.random.default_rng([seed, 99]))["density"]
    finally:
        synthetic.SPECTRAL_DECAY = old


def rows(density: np.ndarray, others: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """drift.table of `density` and the `others` channels."""
    return drift.table({"density": density, **(others or {})}, list(others or {}))


@pytest.fixture(scope="module")
def reference() -> dict:
    """The description of a 6,000-sample training set with the benchmark's 9/14 mix of states."""
    return drift.describe(rows(benchmark_density(2143, 3857, seed=1)))


def test_a_fresh_sample_of_the_training_distribution_is_rarely_flagged(reference):
    fresh = drift.check(reference, rows(benchmark_density(1000, 1000, seed=2)))
    assert fresh.share < drift.WARN_SHARE / 2 and not fresh.warn


def test_the_benchmarks_own_test_split_and_one_state_only_raise_no_warning(reference, tiny_benchmark):
    test = drift.check(reference, rows(benchmark_density(500, 500, seed=3)))  # the default test split's size and mix
    assert not test.warn and test.summary()["n"] == 1000
    assert not drift.check(reference, rows(benchmark_density(0, 600, seed=4))).warn  # the features ignore the state


def test_the_real_test_file_raises_no_warning(reference, real_test_file):
    with h5py.File(real_test_file, "r") as h5:
        density = h5["density"][()]
    result = drift.check(reference, rows(density))
    assert not result.warn, drift.warning_line(result, "the real test file")


@pytest.mark.parametrize("change, culprit", [
    ("correlation length", "power at"),
    ("noise level", "higher"),
    ("gain (offset of log-density)", "mean of log-density higher"),
    ("constant offset of density", "higher"),
])
def test_a_shifted_file_is_flagged_and_the_warning_says_what_differs(reference, change, culprit):
    density = benchmark_density(300, 300, seed=5).astype(np.float64)
    if change == "correlation length":
        density = benchmark_density(300, 300, seed=5, decay=0.9)
    elif change == "noise level":
        density = np.exp(np.log(density) + np.random.default_rng(6).normal(0, 0.02, density.shape))
    elif change.startswith("gain"):
        density = density * 1.5
    else:
        density = density + 0.5
    result = drift.check(reference, rows(density.astype(np.float16)))
    assert result.warn and result.share > 0.9, change
    line = drift.warning_line(result, "shifted.hdf5")
    assert line.startswith("WARNING: drift check: ") and "shifted.hdf5" in line and "\n" not in line
    assert culprit in next(iter(result.culprits)), result.culprits


def test_non_positive_density_is_flagged_not_fatal(reference):
    density = benchmark_density(5, 5, seed=7).astype(np.float32)
    density[3, 0, 0] = 0.0
    result = drift.check(reference, rows(density))
    assert result.flags.tolist() == [i == 3 for i in range(10)]
    assert result.culprits == {"density not positive, or constant": 0.1}


def test_the_description_is_plain_data_a_checkpoint_can_hold(reference):
    buffer = io.BytesIO()
    torch.save({"drift": reference}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["drift"]
    assert loaded == reference and loaded["features"] == drift.FEATURES


def test_other_channels_the_model_reads_are_described_too():
    """The benchmark's recording_date: constant (= label) in training, random 7..9 per pixel in the test file."""
    train = synthetic.make_split(300, 500, "label", np.random.default_rng(8))
    reference = drift.describe(rows(train["density"], {"recording_date": train["recording_date"]}), ["recording_date"])
    assert reference["channels"] == ["recording_date"] and "std of recording_date" in reference["features"]
    like_training = synthetic.make_split(100, 100, "label", np.random.default_rng(9))
    same = drift.check(reference, rows(like_training["density"], {"recording_date": like_training["recording_date"]}))
    assert not same.warn
    test = synthetic.make_split(100, 100, "test", np.random.default_rng(10))
    result = drift.check(reference, rows(test["density"], {"recording_date": test["recording_date"]}))
    assert result.share == 1.0 and "recording_date higher" in next(iter(result.culprits))
    with pytest.raises(AssertionError, match="recording_date"):
        drift.check(reference, rows(test["density"]))


def test_a_smaller_grid_is_described_without_flagging_its_own_kind():
    """16 x 16 images have no modes in the outer |k| bands: those features are constant, not NaN, and fresh
    images like the training ones are not flagged."""
    from tools import other_physics
    rng = np.random.default_rng(0)
    labels = np.arange(2000) % 2
    density = np.exp(other_physics.fields(labels, "isotropic", 16, rng))
    reference = drift.describe(rows(density[:1500]))
    checked = drift.check(reference, rows(density[1500:]))
    assert np.isfinite(reference["median"]).all() and checked.share < 0.01 and not checked.warn
