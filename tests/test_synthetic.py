"""The built-in benchmark generator (statistics, layout, date rules, reuse) and its Bayes limit."""

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

import synthetic
from config import UserError

TINY = synthetic.Sizes(30, 50, 20, 25, 15, 15)


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h:
        return {k: h[k][()] for k in h.keys()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return synthetic.generate_benchmark(tmp_path_factory.mktemp("bench"), 3, TINY)


def test_layout_sizes_balance_and_sorting(bench: Path):
    expected = {"train.hdf5": (30, 50), "valid.hdf5": (20, 25), "test_no_labels.hdf5": (15, 15)}
    for name, (n0, n1) in expected.items():
        split = read(bench / name)
        n = n0 + n1
        assert split["density"].shape == split["recording_date"].shape == (n, 28, 28), name
        assert split["density"].dtype == split["recording_date"].dtype == np.float16, name
        assert split["labels"].shape == (n, 1) and split["labels"].dtype == np.int8, name
        assert (split["density"] > 0).all(), "density is exp(log-density): positive"
        if name != "test_no_labels.hdf5":
            assert split["labels"][:, 0].tolist() == [0] * n0 + [1] * n1, f"{name}: sorted by label"
    test, key = read(bench / "test_no_labels.hdf5"), read(bench / "test_labels.hdf5")
    assert (test["labels"] == -1).all(), "the test file hides its labels"
    assert key["labels"][:, 0].tolist() == [0] * 15 + [1] * 15, "the answer key holds the true labels"


def test_date_rules(bench: Path):
    train = read(bench / "train.hdf5")
    dates = train["recording_date"].astype(np.float64).reshape(80, -1)
    assert (dates.min(axis=1) == dates.max(axis=1)).all(), "train: one date per sample"
    assert (dates[:, 0] == train["labels"][:, 0]).all(), "train: the date equals the label (the shortcut)"
    for name, allowed in (("valid.hdf5", {2, 3, 4, 5, 6}), ("test_no_labels.hdf5", {7, 8, 9})):
        values = read(bench / name)["recording_date"].astype(np.float64)
        assert (values == np.round(values)).all(), f"{name}: integer dates"
        assert set(np.unique(values).astype(int)) == allowed, f"{name}: dates per pixel drawn from {allowed}"


def test_field_statistics():
    rng = np.random.default_rng(0)
    log_density = synthetic.sample_log_density(np.zeros(2000, np.int64), rng)
    offsets = log_density.mean(axis=(1, 2))  # the field has no k = 0 mode: a sample's mean is its offset
    within = (log_density - offsets[:, None, None]).std(axis=(1, 2)).mean()
    assert abs(offsets.std() - synthetic.OFFSET_STD) < 0.003, f"offset std {offsets.std():.4f}"
    assert abs(within - synthetic.PIXEL_STD) < 0.005, f"per-pixel std {within:.4f}"
    # The same after float16 storage in the HDF5 layout.
    split = synthetic.make_split(500, 0, "valid", rng)
    stored = np.log(split["density"].astype(np.float64))
    assert abs(stored.std(axis=(1, 2)).mean() - synthetic.PIXEL_STD) < 0.006


def test_anisotropy_sign_per_class():
    assert np.allclose(synthetic.class_spectrum(1), synthetic.class_spectrum(0).T), "class 1 is class 0 transposed"
    rng = np.random.default_rng(1)
    for label in (0, 1):
        fields = synthetic.sample_log_density(np.full(1000, label), rng)
        power = (np.abs(np.fft.fft2(fields)) ** 2).mean(axis=0)
        first, second = power[3:12, 0].sum(), power[0, 3:12].sum()  # modes along axis 1 vs axis 2 of (N,S,S)
        if label == 0:
            assert first > 1.03 * second, f"class 0: {first:.1f} vs {second:.1f}"
        else:
            assert second > 1.03 * first, f"class 1: {first:.1f} vs {second:.1f}"


def test_ensure_benchmark_reuses_regenerates_and_refuses(tmp_path: Path, monkeypatch):
    made = synthetic.ensure_benchmark(tmp_path / "b", 5, TINY)
    before = {f: (made / f).stat().st_mtime_ns for f in synthetic.FILES}

    def no_generation(*args, **kwargs):
        raise AssertionError("a matching benchmark must be reused, not regenerated")
    with monkeypatch.context() as m:
        m.setattr(synthetic, "generate_benchmark", no_generation)
        assert synthetic.ensure_benchmark(tmp_path / "b", 5, TINY) == made
    assert {f: (made / f).stat().st_mtime_ns for f in synthetic.FILES} == before
    old_train = read(made / "train.hdf5")["density"]
    synthetic.ensure_benchmark(tmp_path / "b", 6, TINY)  # another seed: its own manifest replaces ours
    assert json.loads((made / synthetic.MANIFEST).read_text())["seed"] == 6
    assert not np.array_equal(read(made / "train.hdf5")["density"], old_train)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "train.hdf5").write_bytes(b"the user's data")
    with pytest.raises(UserError, match="did not create"):
        synthetic.ensure_benchmark(foreign, 0, TINY)
    assert (foreign / "train.hdf5").read_bytes() == b"the user's data", "foreign files are never overwritten"


def theoretical_accuracy() -> float:
    """Expected accuracy of the likelihood-ratio test with equal priors, in the normal approximation of the LLR:
    a paired mode's |X_k|^2 / (N^2 lambda_k) is a unit exponential, a self-conjugate one's chi^2_1, so the variance
    is sum_k 2 w_k^2."""
    lam0, lam1 = (synthetic.class_spectrum(c) + synthetic.quantisation_variance() for c in (0, 1))
    const = -0.5 * np.log(lam1 / lam0).sum()
    accuracy = 0.0
    for lam, correct_sign in ((lam0, -1.0), (lam1, 1.0)):
        w = 0.5 * lam * (1 / lam0 - 1 / lam1)
        mean, std = w.sum() + const, math.sqrt(2 * (w**2).sum())
        accuracy += 0.5 * 0.5 * (1 + math.erf(correct_sign * mean / std / math.sqrt(2)))
    return accuracy


def test_bayes_limit_matches_theory_on_a_large_sample():
    theory = theoretical_accuracy()
    assert 0.95 < theory < 0.999
    split = synthetic.make_split(2000, 2000, "test", np.random.default_rng(7))
    llr = synthetic.bayes_log_likelihood_ratio(split["density"])
    assert llr[:2000].mean() < 0 < llr[2000:].mean(), "the log-likelihood ratio points to the true class"
    empirical = float(((synthetic.bayes_log_likelihood_ratio(split["density"]) > 0) == split["labels"]).mean())
    assert abs(empirical - theory) < 0.015, f"empirical {empirical:.4f} vs theoretical {theory:.4f}"


def test_bayes_beats_a_trained_model(finished_run):
    """A short real ViT run (conftest's shared run) on a small benchmark; Bayes must beat it on valid and test."""
    summary = json.loads((finished_run.dir / "summary.json").read_text())
    valid = read(finished_run.data / "valid.hdf5")
    test, key = read(finished_run.data / "test_no_labels.hdf5"), read(finished_run.data / "test_labels.hdf5")
    bayes_valid = ((synthetic.bayes_log_likelihood_ratio(valid["density"]) > 0) == valid["labels"][:, 0]).mean()
    bayes_test = ((synthetic.bayes_log_likelihood_ratio(test["density"]) > 0) == key["labels"][:, 0]).mean()
    assert bayes_valid > summary["val_acc"], f"Bayes {bayes_valid:.3f} vs model {summary['val_acc']:.3f}"
    assert bayes_test > summary["test_acc"], f"Bayes {bayes_test:.3f} vs model {summary['test_acc']:.3f}"
