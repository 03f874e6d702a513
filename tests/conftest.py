"""Shared fixtures: a tiny built-in benchmark (a fraction of a second to generate) and the real test file."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import symmetry  # noqa: E402
import synthetic  # noqa: E402

# Tiny models on tiny data: one thread is faster than two and keeps results independent of machine load.
torch.set_num_threads(1)

REAL_TEST_FILE = ROOT.parent / "shared" / "gasdata" / "test_no_labels.hdf5"
TINY = synthetic.Sizes(train0=200, train1=200, valid0=50, valid1=50, test0=40, test1=40)


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """A small copy of the built-in benchmark in the scientist's layout (read-only by convention)."""
    return synthetic.generate_benchmark(tmp_path_factory.mktemp("tiny") / "bench", seed=0, sizes=TINY)


@pytest.fixture
def real_test_file() -> Path:
    if not REAL_TEST_FILE.is_file():
        pytest.skip(f"real test file {REAL_TEST_FILE} not present")
    return REAL_TEST_FILE


def benchmark_plan(tta_shifts: int = 4) -> symmetry.SymmetryPlan:
    """What the symmetry check finds on the built-in benchmark (tests/test_symmetry.py checks that it does):
    reflections and shifts keep the state, a transpose swaps it; views: the image and its transpose."""
    group = symmetry.parse_spec("flip0,flip1,transpose=swap,shift", "")
    return symmetry.SymmetryPlan(group, symmetry.views_of(group, tta_shifts))
