"""Shared fixtures: a tiny built-in benchmark (a fraction of a second to generate), one finished run that every
test reading a finished run shares, and the real test file."""

import contextlib
import io
import sys
from dataclasses import dataclass
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
SMALL_VIT = ["--device", "cpu", "--emb-dim", "16", "--depth", "1", "--heads", "2", "--mlp-dim", "32",
             "--batch-size", "64"]


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """A small copy of the built-in benchmark in the scientist's layout (read-only by convention)."""
    return synthetic.generate_benchmark(tmp_path_factory.mktemp("tiny") / "bench", seed=0, sizes=TINY)


@dataclass(frozen=True)
class FinishedRun:
    dir: Path  # the run folder
    data: Path  # the benchmark folder it trained on
    predictions: Path  # its --predictions file
    out: str  # what it printed


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> FinishedRun:
    """One finished run, as the scientist starts it: an empty --data-dir (the built-in benchmark, kept tiny),
    --loss smooth, 2 epochs, a small ViT, every output of the end of a run. Shared: tests only read it, or
    check that a refused or finished --resume leaves it as it is."""
    import run_transformer
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "empty").mkdir()
    predictions = tmp / "outputs" / "p.txt"
    argv = ["--data-dir", str(tmp / "empty"), "--out-dir", str(tmp / "runs"), "--predictions", str(predictions),
            "--epochs", "2", "--loss", "smooth", *SMALL_VIT]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(synthetic.ensure_benchmark, "__defaults__", (0, TINY))  # keep the benchmark tiny
        assert run_transformer.main(argv) == 0
    (run_dir,) = (tmp / "runs").iterdir()
    return FinishedRun(run_dir, tmp / "empty" / "synthetic", predictions, printed.getvalue())


@pytest.fixture
def unrendered_figures(monkeypatch) -> None:
    """Figures are built but not drawn into pixels (most of the cost of the end of a tiny run): for tests of what
    a run does, not of what it draws; the shared run renders them."""
    from matplotlib.figure import Figure

    def placeholder(self, target, *args, **kwargs):
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(b"unrendered")
        else:
            target.write(b"unrendered")
    monkeypatch.setattr(Figure, "tight_layout", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(Figure, "savefig", placeholder)


@pytest.fixture
def real_test_file() -> Path:
    if not REAL_TEST_FILE.is_file():
        pytest.skip(f"real test file {REAL_TEST_FILE} not present")
    return REAL_TEST_FILE


def benchmark_plan(tta_shifts: int = 4) -> symmetry.SymmetryPlan:
    """What the symmetry check finds on the built-in benchmark (tests/test_symmetry.py checks that it does):
    reflections and shifts keep the state, a transpose swaps it; views: the image and its transpose."""
    group = symmetry.parse_spec("flip0,flip1,transpose=swap,shift", "")
    return symmetry.SymmetryPlan(*group, *symmetry.views_of(*group, tta_shifts))
