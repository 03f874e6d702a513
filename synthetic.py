"""The built-in fictitious-gas benchmark in the scientist's HDF5 layout, and its Bayes limit: log-density is a
periodic Gaussian random field (class 1 the transpose of class 0, see class_spectrum) plus a per-sample offset, so
the exact likelihood-ratio test is the best any classifier can do."""

import contextlib
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from config import UserError
from fileio import atomic_write, write_json

SPECTRAL_DECAY = 0.67
ANISOTROPY = 0.033
PIXEL_STD = 0.13
OFFSET_STD = 0.035
GRID = 28
MANIFEST = "benchmark.json"
FILES = ("train.hdf5", "valid.hdf5", "test_no_labels.hdf5", "test_labels.hdf5")


@dataclass(frozen=True)
class Sizes:
    """Samples per split and class. Defaults: train 28,000 (9/14 label 1), valid 500+900, test 500+500."""
    train0: int = 10_000
    train1: int = 18_000
    valid0: int = 500
    valid1: int = 900
    test0: int = 500
    test1: int = 500


def wave_vectors(grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """|k| and cos 2θ for every Fourier mode of a grid x grid periodic field (θ from the first axis)."""
    k = np.fft.fftfreq(grid, d=1.0 / grid)
    ki, kj = np.meshgrid(k, k, indexing="ij")
    kk = np.hypot(ki, kj)
    return kk, np.where(kk > 0, (ki**2 - kj**2) / np.maximum(kk, 1e-12) ** 2, 0.0)


def class_spectrum(label: int, grid: int = GRID) -> np.ndarray:
    """Covariance eigenvalues of log-density minus its offset: exp(-0.67 |k|) exp(±0.033/2 |k| cos 2θ), + for label
    0, k = 0 removed, mean PIXEL_STD**2."""
    kk, cos2 = wave_vectors(grid)
    spec = np.exp(-SPECTRAL_DECAY * kk) * np.exp((1 - 2 * label) * ANISOTROPY / 2 * kk * cos2)  # label 1: transposed
    spec[0, 0] = 0.0
    return spec * (PIXEL_STD**2 / spec.mean())


def sample_log_density(labels: np.ndarray, rng: np.random.Generator, grid: int = GRID) -> np.ndarray:
    """Log-density fields (N, grid, grid), float64: white noise coloured by sqrt(lambda), plus each sample's offset."""
    amplitude = np.where(labels[:, None, None] == 1, np.sqrt(class_spectrum(1, grid)), np.sqrt(class_spectrum(0, grid)))
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((len(labels), grid, grid))) * amplitude).real
    return field + OFFSET_STD * rng.standard_normal((len(labels), 1, 1))


def make_split(n0: int, n1: int, dates: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One split sorted by label. dates: 'label' (train: constant = label), 'valid' (2..6), 'test' (7..9)."""
    labels = np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])
    density = np.concatenate([np.exp(sample_log_density(labels[i:i + 4096], rng)).astype(np.float16)
                              for i in range(0, len(labels), 4096)])  # 4,096 fields at a time: bounded memory
    if dates == "label":
        date = np.broadcast_to(labels[:, None, None], density.shape)
    else:
        date = rng.integers(*{"valid": (2, 7), "test": (7, 10)}[dates], size=density.shape)
    return {"density": density, "recording_date": date.astype(np.float16), "labels": labels}


def write_hdf5(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(f) -> None:
        with h5py.File(f, "w") as h:
            for key, value in arrays.items():
                h.create_dataset(key, data=value)
    atomic_write(path, write)


def generate_benchmark(directory: str | Path, seed: int = 0, sizes: Sizes = Sizes()) -> Path:
    """Write train/valid/test_no_labels.hdf5 and the answer key test_labels.hdf5, then a manifest."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the benchmark folder {directory}: {e.strerror}; pass another --data-dir")
    manifest = {"generator": "fictitious-gas benchmark", "version": 1, "seed": seed, "sizes": asdict(sizes),
                "files": list(FILES)}
    # claimed before writing: an interrupted generation is finished next time, never refused or reused
    write_json(directory / MANIFEST, {**manifest, "complete": False})
    plan = {"train.hdf5": (sizes.train0, sizes.train1, "label"),
            "valid.hdf5": (sizes.valid0, sizes.valid1, "valid"),
            "test_no_labels.hdf5": (sizes.test0, sizes.test1, "test")}
    for index, (name, (n0, n1, dates)) in enumerate(plan.items()):
        split = make_split(n0, n1, dates, np.random.default_rng([seed, index]))
        labels = split["labels"].astype(np.int8)[:, None]
        if name.startswith("test"):
            write_hdf5(directory / "test_labels.hdf5", {"labels": labels})
            labels = np.full_like(labels, -1)
        write_hdf5(directory / name, {**split, "labels": labels})
    write_json(directory / MANIFEST, {**manifest, "complete": True})
    return directory


def ensure_benchmark(directory: str | Path, seed: int = 0, sizes: Sizes = Sizes()) -> Path:
    """Reuse the benchmark in `directory` if it matches; else generate it. Never replaces foreign files."""
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):  # unreadable or damaged: generated again
            saved = json.loads((directory / MANIFEST).read_text())
            same = saved.get("seed") == seed and saved.get("sizes") == asdict(sizes) and saved.get("complete")
            if same and all((directory / f).exists() for f in FILES):
                return directory
    else:
        foreign = [f for f in FILES if (directory / f).exists()]
        if foreign:
            raise UserError(f"{directory} holds {', '.join(foreign)} that the benchmark generator did not "
                            f"create; move them away or pass --data-dir pointing at them")
    return generate_benchmark(directory, seed, sizes)


@functools.lru_cache(maxsize=None)  # it draws 64 fields: once per grid size is enough
def quantisation_variance(grid: int = GRID) -> float:
    """Variance that float16 storage adds to each log-density pixel (measured on fixed fields)."""
    field = sample_log_density(np.zeros(64, np.int64), np.random.default_rng(12345), grid)
    stored = np.log(np.exp(field).astype(np.float16).astype(np.float64))
    return float(np.mean((stored - field) ** 2))


def bayes_log_likelihood_ratio(density: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """log p(x | label 1) - log p(x | label 0) per density sample: Gaussian with the class spectra plus the
    quantisation noise (k = 0, the offset, adds exactly 0)."""
    grid = density.shape[-1]
    lam0, lam1 = (class_spectrum(label, grid) + quantisation_variance(grid) for label in (0, 1))
    weight = torch.from_numpy(1 / lam0 - 1 / lam1)
    quad = [(torch.fft.fft2(torch.from_numpy(np.log(density[i:i + chunk].astype(np.float64)))).abs().square()
             * weight).sum(dim=(1, 2)).numpy() / grid**2 for i in range(0, len(density), chunk)]
    # |X_k|^2 / N^2 has expectation lambda_k
    return 0.5 * np.concatenate(quad) - 0.5 * np.log(lam1 / lam0).sum()
