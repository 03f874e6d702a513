"""Loading the scientist's HDF5 files into device tensors, with checks and the shortcut guard.

Layout of each split file: `density` (N, S, S) and `recording_date` (N, S, S) float16, `labels` (N, 1) int8
(-1 in the test file). Whole splits become float32 tensors (N, C, S, S) normalised with training statistics.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

import symmetry
import synthetic
from config import CHANNEL_NAMES, Config, UserError
from fileio import changed_files, fingerprint, unreadable
from symmetry import SymmetryPlan, spectrum_view

Log = Callable[[str], None]

SPLIT_FILES = {"train": "train.hdf5", "valid": "valid.hdf5", "test": "test_no_labels.hdf5"}
ANSWER_FILE = "test_labels.hdf5"  # optional answer key beside the test file (the built-in benchmark has one)


@dataclass
class RawSplit:
    """One split as numpy arrays: channel name -> (N, S, S) float32, and labels (N,) int64."""
    channels: dict[str, np.ndarray]
    labels: np.ndarray
    path: Path

    def __len__(self) -> int:
        return len(self.labels)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _dataset(h5: h5py.File, key: str, path: Path, needs: str) -> h5py.Dataset:
    """Dataset `key` of `path`; missing, one line that lists what is there and says what the caller `needs`,
    and points out a key that differs only in case."""
    if key not in h5 or not isinstance(h5[key], h5py.Dataset):
        found = ", ".join(sorted(h5.keys())) or "none"
        near = [k for k in sorted(h5.keys()) if k.lower() == key.lower()]
        hint = f"; its '{near[0]}' differs only in case: rename it to '{key}'" if near else ""
        raise UserError(f"{path} has no dataset '{key}' (found: {found}); {needs}{hint}")
    ds = h5[key]
    if ds.dtype.kind not in "biuf":
        raise UserError(f"{path}: dataset '{key}' holds {ds.dtype} values, expected numbers")
    return ds


def _check_shapes(path: Path, name: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """Channels (N, S, S) of one shape, labels (N,) or (N, 1) when present, N > 0: checked before any data is
    read."""
    channels = {k: v for k, v in shapes.items() if k != "labels"}
    for key, shape in channels.items():
        if len(shape) != 3 or shape[1] != shape[2] or shape[1] == 0:
            raise UserError(f"{path}: {key} has shape {shape}, expected (N, S, S) square grids")
    labels = shapes.get("labels")
    if labels is not None and (len(labels) not in (1, 2) or (len(labels) == 2 and labels[1] != 1)):
        raise UserError(f"{path}: labels have shape {labels}, expected (N, 1)")
    n = labels[0] if labels is not None else next(iter(channels.values()))[0]
    if n == 0:
        raise UserError(f"{path}: the {name} split is empty; it needs at least one sample")
    for key, shape in channels.items():
        if shape[0] != n:
            raise UserError(f"{path}: {key} has {shape[0]} samples but {'labels' if labels else 'density'} has "
                            f"{n}; the datasets must have the same length")
    if len(set(channels.values())) > 1:
        raise UserError(f"{path}: channel shapes differ ({', '.join(f'{k} {v}' for k, v in channels.items())})")


def open_hdf5(path: Path, damaged: str) -> h5py.File:
    """`path` opened for reading. A failure is one UserError line: the file is in use or not readable
    (fileio.unreadable), else `damaged`, the caller's words for a file that HDF5 cannot parse."""
    try:
        return h5py.File(path, "r")
    except Exception as e:
        raise unreadable(path, e) or UserError(damaged) from None


def _read_arrays(path: Path, name: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()
                 ) -> dict[str, np.ndarray]:
    """The named datasets of one HDF5 file (`optional` ones only if present), shapes checked first. h5py
    reports damage with many exception types (OSError, KeyError, RuntimeError, ValueError, ...): every one of
    them becomes one UserError line."""
    h5 = open_hdf5(path, f"{path} is not a readable HDF5 file (truncated or another format); copy it again")
    try:
        with h5:
            needs = f"the {name} file needs {', '.join(k for k in keys if k not in optional)}"
            datasets = {key: _dataset(h5, key, path, needs) for key in keys if key not in optional or key in h5}
            _check_shapes(path, name, {key: ds.shape for key, ds in datasets.items()})
            # A damaged header can declare an enormous dataset: refuse it rather than swap or be killed.
            if sum(ds.size * 4 for ds in datasets.values()) > _memory_bytes():
                raise UserError(f"{path} declares more data than this machine's memory "
                                f"({', '.join(f'{k} {ds.shape}' for k, ds in datasets.items())})")
            return {key: np.asarray(ds[()]) for key, ds in datasets.items()}
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path} is damaged ({_one_line(e)}); copy it again")


def read_split(path: str | Path, name: str, channels: tuple[str, ...] = CHANNEL_NAMES,
               labelled: bool = True) -> RawSplit:
    """Read and check one split file; every problem becomes one UserError line. An unlabelled split (the test
    file, new measurements) may lack the `labels` dataset: its labels are then all -1."""
    path = Path(path)
    if not path.is_file():
        where = f"put {SPLIT_FILES[name]} in --data-dir" if name in SPLIT_FILES else "check the path"
        raise UserError(f"{name} file {path} not found; {where}")
    arrays = _read_arrays(path, name, (*channels, "labels"), optional=() if labelled else ("labels",))
    n = len(next(iter(arrays.values())))
    labels = arrays.pop("labels").reshape(-1) if "labels" in arrays else np.full(n, -1, np.int64)
    out = {}
    for key, value in arrays.items():
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are counted below
            value = value.astype(np.float32)
        nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        if nan or inf:
            raise UserError(f"{path}: {key} in the {name} split has {nan} NaN and {inf} infinite values "
                            f"(of {value.size}); clean the data or drop those samples")
        out[key] = value
    valid = np.isin(labels, (0, 1))  # checked before any cast, so 0.5 or NaN cannot pass as 0
    if labelled and not valid.all():
        odd = np.unique(labels[~valid])
        raise UserError(f"{path}: {name} labels must be 0 or 1, found {len(odd)} other values "
                        f"({', '.join(f'{v:g}' for v in odd[:5].tolist())}) in {int((~valid).sum())} samples")
    # Unlabelled files carry placeholders (-1 in the test file): keep 0/1, mark anything else -1.
    return RawSplit(out, np.where(valid, labels, -1).astype(np.int64), path)


def read_answer_key(data_dir: Path, n: int) -> np.ndarray | None:
    """True test labels when an answer file sits beside the test file (the built-in benchmark), else None."""
    path = data_dir / ANSWER_FILE
    if not path.is_file():
        return None
    h5 = open_hdf5(path, f"{path} (the test answer key) is not a readable HDF5 file; delete or replace it")
    try:
        with h5:
            labels = np.asarray(_dataset(h5, "labels", path, "the answer key needs labels")[()]).reshape(-1)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path} (the test answer key) is damaged ({_one_line(e)}); delete or replace it")
    if len(labels) != n or not np.isin(labels, (0, 1)).all():
        return None
    return labels.astype(np.int64)


def load_splits(data_dir: str | Path) -> dict[str, RawSplit]:
    """Read train, valid and test from `data_dir` and check that they share one grid size."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist; pass --data-dir with the HDF5 files")
    splits = {name: read_split(data_dir / file, name, labelled=name != "test")
              for name, file in SPLIT_FILES.items()}
    check_both_labels(splits["train"])
    sizes = {name: s.channels["density"].shape[1] for name, s in splits.items()}
    if len(set(sizes.values())) > 1:
        grids = ", ".join(f"{name} {s}x{s}" for name, s in sizes.items())
        raise UserError(f"grid sizes differ between splits ({grids}); all splits must use the same grid")
    return splits


def check_both_labels(train: RawSplit) -> None:
    """A training split with one label only teaches a constant: refuse it."""
    present = np.unique(train.labels)
    if len(present) < 2:
        raise UserError(f"{train.path}: every training label is {present[0]} ({len(train)} samples); a classifier "
                        f"needs examples of both states (0 and 1) in the training split")


# ---- the shortcut guard --------------------------------------------------------------------------------

def find_confounders(splits: dict[str, RawSplit]) -> dict[str, str]:
    """Channels that give the labels away in training but not elsewhere: name -> evidence.

    Uses training labels and the value ranges of the (unlabelled) validation and test inputs, never their labels.

    A channel is a confounder when it is constant within every training sample and that constant alone
    separates the training labels, or when its training values do not overlap those of valid or test.
    """
    train = splits["train"]
    found = {}
    for name, values in train.channels.items():
        flat = values.reshape(len(values), -1)
        constant = bool((flat.min(axis=1) == flat.max(axis=1)).all())
        per_sample = flat[:, 0]
        v0, v1 = per_sample[train.labels == 0], per_sample[train.labels == 1]
        separates = len(v0) and len(v1) and (v0.max() < v1.min() or v1.max() < v0.min())
        if constant and separates:
            found[name] = (f"constant within every training sample and alone separates the training labels "
                           f"(label 0: {v0.min():g}..{v0.max():g}, label 1: {v1.min():g}..{v1.max():g})")
            continue
        lo, hi = float(values.min()), float(values.max())
        for other in ("valid", "test"):
            ov = splits[other].channels[name]
            olo, ohi = float(ov.min()), float(ov.max())
            if ohi < lo or olo > hi:
                found[name] = (f"training values {lo:g}..{hi:g} do not overlap {other} values {olo:g}..{ohi:g}")
                break
    return found


def choose_channels(spec: str, confounders: dict[str, str], log=print) -> list[str]:
    """Resolve --channels: 'auto' drops confounders (and says so); an explicit list is used as given."""
    for name, evidence in confounders.items():
        log(f"WARNING: shortcut guard: channel '{name}' looks like a confounder: {evidence}")
    if spec != "auto":
        names = [n.strip() for n in spec.split(",")]
        for name in names:
            if name in confounders:
                log(f"WARNING: --channels keeps '{name}' as asked; expect memorisation, not generalisation")
        return names
    names = [n for n in CHANNEL_NAMES if n not in confounders]
    if not names:
        raise UserError("every channel was flagged as a confounder; pass --channels explicitly to use them")
    if confounders:
        log(f"--channels auto: training on {', '.join(names)} (left out: {', '.join(confounders)})")
    return names


# ---- tensors on the device -----------------------------------------------------------------------------

def log_density(split: RawSplit) -> np.ndarray:
    """log(density) in float64; a density <= 0 (or one that float16 stored as 0) is refused, not clamped: a
    clamp to 1e-12 would turn a sample into a -27.6 outlier in a field whose std is 0.13."""
    density = split.channels["density"]
    bad = int((density <= 0).sum())
    if bad:
        samples = int((density.reshape(len(density), -1) <= 0).any(axis=1).sum())
        raise UserError(f"{split.path}: density has {bad} non-positive values (in {samples} of {len(density)} "
                        f"samples; float16 stores values below 6e-8 as 0) and whitening takes its logarithm; "
                        f"drop or fix those samples, or use --no-whiten (raw density)")
    return np.log(density.astype(np.float64))


def log_density_modes(split: RawSplit) -> torch.Tensor:
    """The 2-D Fourier modes of each sample's log-density, (N, S, S) complex128 (torch's FFT: several times
    faster than numpy's on these small grids, and threaded)."""
    return torch.fft.fft2(torch.from_numpy(log_density(split)))


def whitening_filter(train_modes: torch.Tensor, group: tuple[str, ...] = ()) -> np.ndarray:
    """1/sqrt(mean power spectrum) of the training log-density, k = 0 removed (label-free, like a mean/std);
    `train_modes` from log_density_modes.

    Where two states differ only at small scales, whose modes are far weaker than the large ones, dividing
    every Fourier mode by its typical amplitude gives each scale equal weight in the input.
    group: symmetries of the grid (symmetry.ELEMENTS names) that augmentation and test-time views apply; the
    power is averaged over them, so that whitening commutes with them and transformed images are whitened
    like real ones.
    """
    power = (train_modes.abs() ** 2).mean(dim=0).numpy()
    if group:
        power = group_mean(power, group)
    gain = np.zeros_like(power)
    gain[power > 0] = 1 / np.sqrt(power[power > 0])
    gain[0, 0] = 0.0  # the per-sample offset carries no class information
    return gain


def group_mean(spectrum: np.ndarray, group: tuple[str, ...]) -> np.ndarray:
    """Average of an (S, S) Fourier-space array over a group of the grid's symmetries."""
    return np.mean([spectrum_view(spectrum, name) for name in group], axis=0)


def whitened(modes: torch.Tensor, gain: np.ndarray) -> np.ndarray:
    """Log-density with every Fourier mode scaled by `gain`, (N, S, S) float32."""
    return torch.fft.ifft2(modes * torch.from_numpy(gain)).real.float().numpy()


def prepare_channel(name: str, split: RawSplit, gain: np.ndarray | None,
                    modes: torch.Tensor | None = None) -> np.ndarray:
    """The model's view of one raw channel: whitened log-density when a gain is given, else as stored.
    `modes`: the split's log_density_modes, when the caller has them already."""
    if name != "density" or gain is None:
        return split.channels[name]
    return whitened(log_density_modes(split) if modes is None else modes, gain)


def prepared_train(train: RawSplit, channels: list[str], whiten: bool = False, symmetric: tuple[str, ...] = ()
                   ) -> tuple[dict, np.ndarray]:
    """The training split as the model sees it, (N, C, S, S) before normalisation, and its statistics: per-channel
    mean and std and the whitening gain (from the training split only; saved in checkpoints). The log-density
    is transformed once, for the filter and the whitened images both."""
    modes = log_density_modes(train) if whiten and "density" in channels else None
    gain = None if modes is None else whitening_filter(modes, symmetric)
    x = np.stack([prepare_channel(c, train, gain, modes) for c in channels], axis=1)
    mean = [float(x[:, i].mean(dtype=np.float64)) for i in range(len(channels))]
    std = [max(float(x[:, i].std(dtype=np.float64)), 1e-6) for i in range(len(channels))]
    stats = {"channels": channels, "mean": mean, "std": std, "whiten": None if gain is None else gain.tolist()}
    return stats, x


def channel_stats(train: RawSplit, channels: list[str], whiten: bool = False, symmetric: tuple[str, ...] = ()
                  ) -> dict:
    """Per-channel mean and std (and the whitening gain) from the training split only (saved in checkpoints)."""
    return prepared_train(train, channels, whiten, symmetric)[0]


def normalised(x: np.ndarray, stats: dict, device: torch.device | str) -> torch.Tensor:
    """Prepared channels (N, C, S, S) minus the training mean, over the training std, as float32 on `device`."""
    mean = np.asarray(stats["mean"], np.float32)[None, :, None, None]
    std = np.asarray(stats["std"], np.float32)[None, :, None, None]
    return torch.from_numpy((x - mean) / std).to(device)


def to_tensor(split: RawSplit, stats: dict, device: torch.device | str) -> torch.Tensor:
    """(N, C, S, S) float32 on `device`, channels in `stats` order, prepared and normalised with training stats."""
    gain = None if stats.get("whiten") is None else np.asarray(stats["whiten"])
    return normalised(np.stack([prepare_channel(c, split, gain) for c in stats["channels"]], axis=1), stats, device)


@dataclass
class DeviceData:
    """Everything training needs, resident on one device."""
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor | None]
    stats: dict  # channels, per-channel mean and std, whitening gain or None (see channel_stats)
    image_size: int
    symmetry: SymmetryPlan = SymmetryPlan()  # what augmentation and test-time views use


def to_device(splits: dict[str, RawSplit], channels: list[str], device: torch.device | str,
              test_labels: np.ndarray | None = None, whiten: bool = False,
              stats: dict | None = None, symmetry: SymmetryPlan = SymmetryPlan()) -> DeviceData:
    """Normalise with training statistics (or the saved `stats` of a checkpoint) and move every split to
    `device`; a new whitening filter is averaged over the symmetries that `symmetry` applies. Test y is the
    answer key or None."""
    if stats is None:  # a new run: the training split's statistics, from the images they normalise
        stats, train = prepared_train(splits["train"], channels, whiten, symmetry.whitening_group())
        x = {"train": normalised(train, stats, device)}
    else:
        x = {"train": to_tensor(splits["train"], stats, device)}
    x.update({name: to_tensor(split, stats, device) for name, split in splits.items() if name != "train"})
    y = {name: torch.from_numpy(split.labels).float().to(device) for name, split in splits.items()}
    y["test"] = None if test_labels is None else torch.from_numpy(test_labels).float().to(device)
    return DeviceData(x, y, stats, image_size=x["train"].shape[-1], symmetry=symmetry)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, device: torch.device | str,
                  rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """Index batches for one epoch: one permutation drawn on the device from (seed, epoch), full batches only.

    Every process draws the same permutation and takes a disjoint slice of it, so all ranks run the same
    number of steps. The permutation depends only on (seed, epoch): a resumed run shuffles identically.
    """
    generator = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator, device=device)
    steps = max(n // (batch_size * world), 1)
    per_step = min(batch_size, n // world)
    return [order[(s * world + rank) * per_step:(s * world + rank + 1) * per_step] for s in range(steps)]


# ---- the run's data ------------------------------------------------------------------------------------

def resolve_data_dir(cfg: Config, log: Log) -> tuple[Path, str]:
    """The user's files when --data-dir has train.hdf5 (source "files"), else the built-in benchmark, generated
    on first use into a sub-folder of the default folder or of an empty one (source "synthetic"). A folder that
    holds anything else is the user's: it is refused, and nothing is written there."""
    data_dir = Path(cfg.data_dir)
    if (data_dir / SPLIT_FILES["train"]).exists():
        return data_dir, "files"
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir} is a file; pass the folder that holds {SPLIT_FILES['train']}")
    if not data_dir.exists() and cfg.data_dir != Config.data_dir:  # a typo must not summon synthetic data
        raise UserError(f"data folder {data_dir} does not exist; pass --data-dir with the HDF5 files (an empty "
                        f"folder gets the built-in synthetic benchmark)")
    found = sorted(p.name for p in data_dir.iterdir() if not generated_here(p)) if data_dir.is_dir() else []
    if found:
        raise UserError(f"{data_dir} has no {SPLIT_FILES['train']} but holds {', '.join(found[:6])}"
                        f"{' ...' if len(found) > 6 else ''}; {what_to_rename(found)}")
    # one folder per generator seed: runs of different seeds never rewrite each other's (fingerprinted) data
    bench = data_dir / ("synthetic" if cfg.synthetic_seed == 0 else f"synthetic-seed{cfg.synthetic_seed}")
    log(f"no {SPLIT_FILES['train']} in {data_dir}/: using the built-in synthetic benchmark in {bench}/")
    return synthetic.ensure_benchmark(bench, cfg.synthetic_seed), "synthetic"


def generated_here(path: Path) -> bool:
    """Hidden files and the benchmark generator's own folders (synthetic, synthetic-*) are not the user's data."""
    return path.name.startswith(".") or (path.is_dir() and path.name.split("-")[0] == "synthetic")


def what_to_rename(names: list[str]) -> str:
    """Advice for a folder without train.hdf5: which of its files look like the splits under another name."""
    wanted = {"train": SPLIT_FILES["train"], "valid": SPLIT_FILES["valid"], "validation": SPLIT_FILES["valid"],
              "test": SPLIT_FILES["test"], "test_no_labels": SPLIT_FILES["test"]}
    renames = [f"{n} to {wanted[n.rsplit('.', 1)[0].lower()]}" for n in names
               if n.rsplit(".", 1)[0].lower() in wanted and n not in SPLIT_FILES.values()]
    if renames:
        advice = f"rename {', '.join(renames)}"
    elif set(names) & set(SPLIT_FILES.values()):
        advice = f"put {SPLIT_FILES['train']} beside them"
    else:
        advice = (f"the run reads {', '.join(SPLIT_FILES.values())} (each with datasets density, recording_date, "
                  f"labels)")
    return advice + ", or pass an empty folder to generate the built-in benchmark there"


def load_data(cfg: Config, device: torch.device, log: Log, saved: dict | None = None):
    """Read, check and move the data; returns (DeviceData, info for config.json and the summary). `saved`: the
    checkpoint of a resumed run, whose input preparation and symmetries are kept."""
    data_dir, source = resolve_data_dir(cfg, log)
    splits = load_splits(data_dir)
    confounders = find_confounders(splits)
    channels = saved["stats"]["channels"] if saved else choose_channels(cfg.channels, confounders, log)
    plan = SymmetryPlan.from_dict(saved["symmetry"]) if saved else check_symmetries(cfg, splits["train"], channels, log)
    test_labels = read_answer_key(data_dir, len(splits["test"]))
    data = to_device(splits, channels, device, test_labels, cfg.whiten, saved and saved["stats"], plan)
    info = {"data_dir": str(data_dir), "source": source, "channels": channels, "confounders": confounders,
            "files": data_files(data_dir, answers=test_labels is not None),
            "sizes": {name: len(s) for name, s in splits.items()}, "symmetry": plan.to_dict()}
    if source == "synthetic":
        info["bayes_accuracy"] = synthetic.bayes_accuracy(splits, test_labels)
    return data, info


def check_symmetries(cfg: Config, train: RawSplit, channels: list[str], log: Log) -> SymmetryPlan:
    """symmetry.plan on a sample of the training images (the channels the model reads, as stored)."""
    idx = symmetry.check_sample(train.labels, len(channels), train.channels[channels[0]].shape[-1])
    images = torch.from_numpy(np.stack([train.channels[c][idx] for c in channels], axis=1))
    return symmetry.plan(cfg.augment, cfg.tta, cfg.tta_shifts, images, torch.from_numpy(train.labels[idx]), log)


def data_files(data_dir: Path, answers: bool) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each split file, and of the answer key when the test metrics use it: data the run
    used, too."""
    files = {name: fingerprint(data_dir / f) for name, f in SPLIT_FILES.items()}
    if answers:
        files["test_answers"] = fingerprint(data_dir / ANSWER_FILE)
    return files


def recorded_data(run_dir: Path) -> dict[str, Any]:
    """What run_dir/config.json records about the data the run read: data_dir, source, channels, files."""
    try:
        data = json.loads((run_dir / "config.json").read_text())["data"]
        if isinstance(data.get("files"), dict):
            return data
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    raise UserError(f"{run_dir}/config.json, the record of the data the run read, is missing or damaged; start a "
                    f"new run")


def check_same_data(run_dir: Path, files: dict[str, dict[str, Any]]) -> None:
    """Resume only on the data the run started with: its whitening filter, statistics and history belong to it."""
    changed = changed_files(recorded_data(run_dir)["files"], files)
    if changed:
        raise UserError(f"cannot resume {run_dir}: {changed[0]} changed since the run started (its size or SHA-256 "
                        f"differs from config.json), so the run would mix two data sets; restore that file, or "
                        f"start a new run")
