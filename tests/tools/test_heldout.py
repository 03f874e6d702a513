"""The held-out evaluation set of the grid: generated once, balanced, test-like, with its Bayes accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tools import compare
from tools.compare_report import pack, unpack
import synthetic
from config import UserError


def test_the_heldout_set_is_balanced_test_like_and_generated_once(tmp_path: Path):
    path = compare.ensure_heldout(tmp_path / "h", seed=0, per_class=300)
    with h5py.File(path) as h5:
        labels, dates, density = h5["labels"][()].ravel(), h5["recording_date"][()], h5["density"][()]
    assert density.shape == (600, 28, 28) and density.dtype == np.float16
    assert np.bincount(labels).tolist() == [300, 300]
    assert set(np.unique(dates)) == {7, 8, 9}, "recording_date random per pixel, as in the test file"
    assert json.loads((path.parent / compare.HELDOUT_MANIFEST).read_text())["bayes_accuracy"] == pytest.approx(np.mean(synthetic.bayes_predict(density) == labels))
    # its own random stream: not a copy of any split the benchmark draws with the same seed
    assert not np.array_equal(density[:100], synthetic.make_split(100, 0, "test", np.random.default_rng([0, 2]))
                              ["density"])
    stamp = path.stat().st_mtime_ns
    assert compare.ensure_heldout(tmp_path / "h", seed=0, per_class=300) == path and path.stat().st_mtime_ns == stamp
    compare.ensure_heldout(tmp_path / "h", seed=0, per_class=200)  # another size: generated anew
    with h5py.File(path) as h5:
        assert len(h5["labels"]) == 400
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / compare.HELDOUT_FILE).write_bytes(b"mine")
    with pytest.raises(UserError, match="not written by the held-out generator"):
        compare.ensure_heldout(foreign, per_class=10)
    assert (foreign / compare.HELDOUT_FILE).read_bytes() == b"mine"


def test_pack_round_trips():
    bits = np.random.default_rng(0).random(20_001) < 0.9
    assert np.array_equal(unpack(pack(bits), bits.size), bits)
