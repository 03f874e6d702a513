"""The held-out evaluation set of the grid, and the intervals and paired differences computed from it."""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

import heldout
import synthetic
from compare_report import heldout_accuracy, paired_difference
from config import UserError


def test_the_heldout_set_is_balanced_test_like_and_generated_once(tmp_path: Path):
    path = heldout.ensure_heldout(tmp_path / "h", seed=0, per_class=300)
    with h5py.File(path) as h5:
        labels, dates, density = h5["labels"][()].ravel(), h5["recording_date"][()], h5["density"][()]
    assert density.shape == (600, 28, 28) and density.dtype == np.float16
    assert np.bincount(labels).tolist() == [300, 300]
    assert set(np.unique(dates)) == {7, 8, 9}, "recording_date random per pixel, as in the test file"
    assert heldout.bayes_accuracy(path) == pytest.approx(np.mean(synthetic.bayes_predict(density) == labels))
    # its own random stream: not a copy of any split the benchmark draws with the same seed
    assert not np.array_equal(density[:100], synthetic.make_split(100, 0, "test", np.random.default_rng([0, 2]))
                              ["density"])
    stamp = path.stat().st_mtime_ns
    assert heldout.ensure_heldout(tmp_path / "h", seed=0, per_class=300) == path and path.stat().st_mtime_ns == stamp
    heldout.ensure_heldout(tmp_path / "h", seed=0, per_class=200)  # another size: generated anew
    with h5py.File(path) as h5:
        assert len(h5["labels"]) == 400
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / heldout.FILE).write_bytes(b"mine")
    with pytest.raises(UserError, match="not written by the held-out generator"):
        heldout.ensure_heldout(foreign, per_class=10)
    assert (foreign / heldout.FILE).read_bytes() == b"mine"


def rows(correct: np.ndarray, seeds=None) -> list[dict]:
    """Result rows whose held-out scores are the given (seeds, images) correctness."""
    seeds = range(len(correct)) if seeds is None else seeds
    return [{"seed": s, "heldout": {"n": c.size, "acc": c.mean(), "correct": heldout.pack(c)}}
            for s, c in zip(seeds, correct)]


def test_pack_round_trips():
    bits = np.random.default_rng(0).random(20_001) < 0.9
    assert np.array_equal(heldout.unpack(heldout.pack(bits), bits.size), bits)


def test_interval_adds_seed_spread_and_image_sampling():
    rng = np.random.default_rng(0)
    n = 20_000
    same = np.tile(rng.random(n) < 0.98, (3, 1))
    mean, half = heldout_accuracy(rows(same))
    p = same[0].mean()
    # identical seeds: only the sampling error of the images, 1.96 sqrt(p (1 - p) / n) (ddof 1)
    assert mean == pytest.approx(p) and half == pytest.approx(1.96 * math.sqrt(p * (1 - p) / (n - 1)), rel=1e-6)
    spread = same.copy()
    spread[1, :200] = ~spread[1, :200]  # seeds that differ by a point
    assert heldout_accuracy(rows(spread))[1] > 2 * half
    assert math.isnan(heldout_accuracy(rows(same[:1]))[1]), "one seed: no spread, no interval"
    assert all(math.isnan(x) for x in heldout_accuracy([{"seed": 0}]))


def test_paired_difference_matches_seeds_and_cancels_shared_images():
    rng = np.random.default_rng(1)
    base = rng.random((3, 20_000)) < 0.97
    better = base.copy()
    better[:, :100] = True  # the same images right, plus 100 more
    gain = (better.mean() - base.mean())
    mean, half = paired_difference(rows(better), rows(base))
    assert mean == pytest.approx(gain) and 0 < half < 0.004, "paired: far tighter than the two intervals"
    assert paired_difference(rows(base), rows(base)) == (0.0, 0.0)
    # seeds are matched by number, not by position; seeds without a partner are left out
    shuffled = paired_difference(rows(better[::-1], seeds=[2, 1, 0]), rows(base[::-1], seeds=[2, 1, 0]))
    assert shuffled[0] == pytest.approx(mean) and shuffled[1] == pytest.approx(half)
    assert paired_difference(rows(better[:2]), rows(base[1:], seeds=[1, 2]))[0] == pytest.approx(
        better[1].mean() - base[1].mean())
