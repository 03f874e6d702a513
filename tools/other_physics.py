"""Data of other physics than the benchmark's, in the scientist's layout (answer key beside the test file): two
stationary Gaussian log-density fields whose states differ by correlation lengths; recording_date = label in train."""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: runs from any folder

from synthetic import write_hdf5  # noqa: E402

KINDS = {  # per state: (length along axis 0, along axis 1, along the main diagonal's normal), crop factor
    "axis-length": ((1.2, 1.2, 0.0), (1.25, 1.2, 0.0), 1),  # reflections keep the state, a transpose does neither
    "isotropic": ((1.2, 1.2, 0.0), (1.5, 1.5, 0.0), 1),  # every symmetry keeps the state
    "diagonal": ((1.3, 1.3, 0.5), (1.3, 1.3, -0.5), 1),  # a transpose keeps the state, reflections swap it
    "cropped": ((1.2, 1.2, 0.0), (1.25, 1.2, 0.0), 2),  # axis-length cut from a larger field: not periodic
}


def fields(labels: np.ndarray, kind: str, size: int, rng: np.random.Generator, contrast: float = 1.0) -> np.ndarray:
    """Log-density (N, size, size) of the given states; `contrast` scales how far state 1's lengths lie from 0's."""
    (l0, l1, crop) = KINDS[kind]
    lengths = (l0, tuple(a + contrast * (b - a) for a, b in zip(l0, l1)))
    big = size * crop
    k = 2 * np.pi * np.fft.fftfreq(big)
    ki, kj = np.meshgrid(k, k, indexing="ij")
    amplitude = []
    for a, b, c in lengths:  # power exp(-k^T L k / 2) with L = [[a^2, c], [c, b^2]], unit mean, k = 0 removed
        power = np.exp(-0.5 * (a * a * ki * ki + b * b * kj * kj + 2 * c * ki * kj))
        power[0, 0] = 0.0
        amplitude.append(np.sqrt(power / power.mean()))
    white = rng.standard_normal((len(labels), big, big))
    amp = np.where(labels[:, None, None] == 1, amplitude[1], amplitude[0])
    return 0.15 * np.fft.ifft2(np.fft.fft2(white) * amp).real[:, :size, :size]


def make(directory: str | Path, kind: str, train: int = 6000, valid: int = 1000, test: int = 1000,
         size: int = 28, seed: int = 0, contrast: float = 1.0) -> Path:
    """Write train.hdf5, valid.hdf5, test_no_labels.hdf5 and test_labels.hdf5 (balanced states) into directory."""
    directory = Path(directory)
    for index, (name, n) in enumerate(zip(("train.hdf5", "valid.hdf5", "test_no_labels.hdf5"), (train, valid, test))):
        rng = np.random.default_rng([seed, index])
        labels = rng.permutation(np.arange(n) % 2)
        density = np.exp(fields(labels, kind, size, rng, contrast)).astype(np.float16)
        date = (np.broadcast_to(labels[:, None, None], density.shape) if index == 0
                else rng.integers(2, 10, size=density.shape)).astype(np.float16)
        stored = labels.astype(np.int8)[:, None]
        if index == 2:
            write_hdf5(directory / "test_labels.hdf5", {"labels": stored})
            stored = np.full_like(stored, -1)
        write_hdf5(directory / name, {"density": density, "recording_date": date, "labels": stored})
    return directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.other_physics", description=__doc__)
    p.add_argument("directory")
    p.add_argument("--kind", choices=tuple(KINDS), default="axis-length")
    p.add_argument("--train", type=int, default=6000, help="training images (valid and test: 1,000 each)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(make(args.directory, args.kind, args.train, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
