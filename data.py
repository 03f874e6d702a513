"""The scientist's HDF5 files (density, recording_date (N, S, S), labels (N, 1)), checked and streamed in chunks
into the normalised float32 tensors the model reads."""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np
import torch

import drift
import symmetry
import synthetic
from config import CHANNEL_NAMES, Config, UserError
from fileio import changed_files, fingerprint, unreadable
from symmetry import SymmetryPlan, spectrum_view

OnChunk = Callable[[dict[str, np.ndarray]], None]  # sees each chunk's raw float32 channels

SPLIT_FILES = {"train": "train.hdf5", "valid": "valid.hdf5", "test": "test_no_labels.hdf5"}
ANSWER_FILE = "test_labels.hdf5"  # optional answer key beside the test file (the built-in benchmark has one)
CHUNK = 8192  # samples read and transformed at a time


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@dataclass
class RawSplit:
    """One checked split: labels (N,) int64, and channels (N, S, S) as arrays or as datasets of the open `file`."""
    channels: dict[str, Any]
    labels: np.ndarray
    path: Path
    name: str = "input"
    file: h5py.File | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def chunks(self, keys: list[str] | tuple[str, ...]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(start, channel -> float32 values) for CHUNK samples at a time; NaN or inf is refused."""
        for start in range(0, len(self), CHUNK):
            try:
                with np.errstate(over="ignore"):  # values beyond float32 become inf and are counted below
                    block = {key: np.asarray(self.channels[key][start:start + CHUNK], np.float32) for key in keys}
            except Exception as e:
                raise UserError(f"{self.path} is damaged ({_one_line(e)}); copy it again")
            for key, values in block.items():
                nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
                if nan or inf:
                    raise UserError(f"{self.path}: {key} in the {self.name} split has {nan} NaN and {inf} infinite "
                                    f"values (of {values.size}); clean the data or drop those samples")
            yield start, block


def _datasets(h5: h5py.File, path: Path, name: str, keys: tuple[str, ...], needs: str) -> tuple[dict, int]:
    """`keys` of `path` and N, checked: numbers, channels (N, S, S) of one shape, labels (N,) or (N, 1), N > 0."""
    for key in keys:
        if key not in h5 or not isinstance(h5[key], h5py.Dataset):
            near = [k for k in sorted(h5) if k.lower() == key.lower()]
            hint = f"; its '{near[0]}' differs only in case: rename it to '{key}'" if near else ""
            raise UserError(f"{path} has no dataset '{key}' (found: {', '.join(sorted(h5)) or 'none'}); {needs}{hint}")
        if h5[key].dtype.kind not in "biuf":
            raise UserError(f"{path}: dataset '{key}' holds {h5[key].dtype} values, expected numbers")
    shapes = {key: h5[key].shape for key in keys if key != "labels"}
    labels = h5["labels"].shape if "labels" in keys else None
    for key, shape in shapes.items():
        if len(shape) != 3 or shape[1] != shape[2] or shape[1] == 0:
            raise UserError(f"{path}: {key} has shape {shape}, expected (N, S, S) square grids")
    if len(set(shapes.values())) > 1:
        raise UserError(f"{path}: channel shapes differ ({', '.join(f'{k} {v}' for k, v in shapes.items())})")
    if labels is not None and (len(labels) not in (1, 2) or (len(labels) == 2 and labels[1] != 1)):
        raise UserError(f"{path}: labels have shape {labels}, expected (N, 1)")
    n = labels[0] if labels is not None else next(iter(shapes.values()))[0]
    if n == 0:
        raise UserError(f"{path}: the {name} split is empty; it needs at least one sample")
    first = next(iter(shapes), None)  # all channels have one shape
    if first is not None and shapes[first][0] != n:
        raise UserError(f"{path}: {first} has {shapes[first][0]} samples but labels has {n}; the datasets must "
                        f"have the same length")
    return {key: h5[key] for key in keys}, n


def open_split(path: str | Path, name: str, channels: tuple[str, ...] = CHANNEL_NAMES,
               labelled: bool = True) -> RawSplit:
    """One split file, checked and left open for streaming; an unlabelled one may lack labels (then all -1)."""
    path = Path(path)
    if not path.is_file():
        where = f"put {SPLIT_FILES[name]} in --data-dir" if name in SPLIT_FILES else "check the path"
        raise UserError(f"{name} file {path} not found; {where}")
    try:  # in use or unreadable (fileio.unreadable), else damaged
        h5 = h5py.File(path, "r")
    except Exception as e:
        raise unreadable(path, e) or UserError(f"{path} is not a readable HDF5 file (truncated or another format); "
                                               f"copy it again") from None
    try:
        keys = (*channels, "labels") if labelled or "labels" in h5 else channels
        needs = f"the {name} file needs {', '.join(keys if labelled else channels)}"
        datasets, n = _datasets(h5, path, name, keys, needs)
        # a damaged header can declare an enormous dataset: refuse it rather than swap or be killed
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 1 << 62
        if sum(ds.size * 4 for ds in datasets.values()) > memory:
            raise UserError(f"{path} declares more data than this machine's memory "
                            f"({', '.join(f'{k} {ds.shape}' for k, ds in datasets.items())})")
        labels = np.asarray(datasets.pop("labels")[()]).reshape(-1) if "labels" in datasets else np.full(n, -1)
        valid = np.isin(labels, (0, 1))  # checked before any cast, so 0.5 or NaN cannot pass as 0
        if labelled and not valid.all():
            odd = np.unique(labels[~valid])
            raise UserError(f"{path}: {name} labels must be 0 or 1, found {len(odd)} other values "
                            f"({', '.join(f'{v:g}' for v in odd[:5].tolist())}) in {int((~valid).sum())} samples")
    except Exception as e:
        h5.close()
        raise e if isinstance(e, UserError) else UserError(f"{path} is damaged ({_one_line(e)}); copy it again")
    return RawSplit(datasets, np.where(valid, labels, -1).astype(np.int64), path, name, h5)


def read_split(path: str | Path, name: str, channels: tuple[str, ...] = CHANNEL_NAMES,
               labelled: bool = True) -> RawSplit:
    """open_split read into float32 arrays: for small files."""
    split = open_split(path, name, channels, labelled)
    blocks = [block for _, block in split.chunks(channels)]
    split.close()
    return RawSplit({key: np.concatenate([b[key] for b in blocks]) for key in channels}, split.labels, split.path, name)


def read_answer_key(data_dir: Path, n: int) -> np.ndarray | None:
    """The n true test labels when an answer file sits beside the test file (the built-in benchmark), else None."""
    key = read_split(data_dir / ANSWER_FILE, "answer key", ()) if (data_dir / ANSWER_FILE).is_file() else None
    return key.labels if key is not None and len(key) == n else None


def load_splits(data_dir: str | Path) -> dict[str, RawSplit]:
    """Train, valid and test of `data_dir`, open for streaming and checked to share one grid size."""
    data_dir = Path(data_dir)
    splits = {name: open_split(data_dir / file, name, labelled=name != "test") for name, file in SPLIT_FILES.items()}
    present = np.unique(splits["train"].labels)
    if len(present) < 2:  # one label only teaches a constant
        raise UserError(f"{splits['train'].path}: every training label is {present[0]} ({len(splits['train'])} "
                        f"samples); a classifier needs examples of both states (0 and 1) in the training split")
    sizes = {name: s.channels["density"].shape[1] for name, s in splits.items()}
    if len(set(sizes.values())) > 1:
        grids = ", ".join(f"{name} {s}x{s}" for name, s in sizes.items())
        raise UserError(f"grid sizes differ between splits ({grids}); all splits must use the same grid")
    return splits


def find_confounders(splits: dict[str, RawSplit]) -> dict[str, str]:
    """Channels that give the training labels away (name -> evidence): a label-separating constant or a range unlike
    valid's and test's (whose labels are never used)."""
    names, ranges, found = list(splits["train"].channels), {}, {}
    for split_name, split in splits.items():  # per split and channel: each sample's lowest and highest value
        low, high = {name: [] for name in names}, {name: [] for name in names}
        for _, block in split.chunks(names):
            for name, values in block.items():
                low[name].append(values.min(axis=(1, 2)))
                high[name].append(values.max(axis=(1, 2)))
        ranges[split_name] = {name: (np.concatenate(low[name]), np.concatenate(high[name])) for name in names}
    labels = splits["train"].labels
    for name in names:
        low, high = ranges["train"][name]
        v0, v1 = low[labels == 0], low[labels == 1]
        lo, hi = low.min(), high.max()
        extent = {other: (ranges[other][name][0].min(), ranges[other][name][1].max()) for other in ("valid", "test")}
        outside = [other for other, (olo, ohi) in extent.items() if ohi < lo or olo > hi]
        if (low == high).all() and (v0.max() < v1.min() or v1.max() < v0.min()):
            found[name] = (f"constant within every training sample and alone separates the training labels "
                           f"(label 0: {v0.min():g}..{v0.max():g}, label 1: {v1.min():g}..{v1.max():g})")
        elif outside:
            olo, ohi = extent[outside[0]]
            found[name] = f"training values {lo:g}..{hi:g} do not overlap {outside[0]} values {olo:g}..{ohi:g}"
    return found


def choose_channels(spec: str, confounders: dict[str, str], log=print) -> list[str]:
    """Resolve --channels: 'auto' drops confounders (and says so); an explicit list is used as given."""
    auto = spec == "auto"
    names = [n for n in CHANNEL_NAMES if n not in confounders] if auto else [n.strip() for n in spec.split(",")]
    for name, evidence in confounders.items():
        kept = "; --channels keeps it as asked: expect memorisation, not generalisation" if name in names else ""
        log(f"WARNING: shortcut guard: channel '{name}' looks like a confounder: {evidence}{kept}")
    if not names:
        raise UserError("every channel was flagged as a confounder; pass --channels explicitly to use them")
    if auto and confounders:
        log(f"--channels auto: training on {', '.join(names)} (left out: {', '.join(confounders)})")
    return names


def _read(split: RawSplit, channels: list[str], log_density: bool, on_chunk: OnChunk | None = None) -> torch.Tensor:
    """(N, C, S, S) float32 in `channels` order, density as its log if `log_density`; `on_chunk` sees raw chunks."""
    grid = next(iter(split.channels.values())).shape[-1]
    x = torch.empty(len(split), len(channels), grid, grid)
    for start, block in split.chunks(list(dict.fromkeys([*channels, *(["density"] if on_chunk else [])]))):
        if on_chunk:
            on_chunk(block)
        for c, name in enumerate(channels):
            values = block[name]
            if name == "density" and log_density:
                bad = values <= 0
                if bad.any():
                    raise UserError(f"{split.path}: density has {int(bad.sum())} non-positive values (in "
                                    f"{int(bad.any(axis=(1, 2)).sum())} of {len(split)} samples; float16 stores "
                                    f"< 6e-8 as 0) but whitening takes its logarithm; fix them or use --no-whiten")
                values = np.log(values)
            x[start:start + len(values), c] = torch.from_numpy(values)
    return x


def fit_stats(x: torch.Tensor, channels: list[str], whiten: bool, group: tuple[str, ...]) -> dict:
    """The normalisation of training images x as read: each channel's mean and std, and for whitened log-density
    the gain 1/sqrt(mean power spectrum), averaged over `group` so that whitening commutes with augmentation and
    views, k = 0 removed: every scale gets equal weight, the per-sample offset (no class information) none."""
    std, mean = torch.std_mean(x, dim=(0, 2, 3), correction=0)
    gain = None
    if whiten:
        d = channels.index("density")
        power = sum(torch.fft.fft2(part[:, d]).abs().square().sum(0).double() for part in x.split(CHUNK)) / len(x)
        power = np.mean([spectrum_view(power.numpy(), name) for name in group], axis=0)
        gain = np.zeros_like(power)
        gain[power > 0] = 1 / np.sqrt(power[power > 0])
        gain[0, 0] = 0.0
        # whitened, each image has mean 0 (no k = 0) and, by Parseval, pixel variance sum_k gain^2 power / S^4
        mean[d], std[d] = 0.0, float(np.sqrt((gain**2 * power).sum())) / x.shape[-1] ** 2
    return {"channels": channels, "mean": mean.tolist(), "std": std.clamp_min(1e-6).tolist(),
            "whiten": None if gain is None else gain.tolist()}


def _prepare(x: torch.Tensor, stats: dict) -> torch.Tensor:
    """x whitened and standardised with `stats`, in place, CHUNK images at a time."""
    mean, std = (torch.tensor(stats[key]).view(-1, 1, 1) for key in ("mean", "std"))
    gain = None if stats["whiten"] is None else torch.tensor(stats["whiten"], dtype=torch.float32)
    for part in x.split(CHUNK):
        if gain is not None:
            d = stats["channels"].index("density")
            part[:, d] = torch.fft.ifft2(torch.fft.fft2(part[:, d]) * gain).real
        part.sub_(mean).div_(std)
    return x


def to_tensor(split: RawSplit, stats: dict, device: torch.device | str, on_chunk: OnChunk | None = None
              ) -> torch.Tensor:
    """(N, C, S, S) float32 on `device`, channels in `stats` order, prepared and normalised with training stats."""
    return _prepare(_read(split, stats["channels"], stats["whiten"] is not None, on_chunk), stats).to(device)


@dataclass
class DeviceData:
    """Everything training needs, resident on one device, and what the end of the run derives from the files."""
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor | None]
    stats: dict  # channels, per-channel mean and std, whitening gain or None
    image_size: int
    symmetry: SymmetryPlan = SymmetryPlan()  # what augmentation and test-time views use
    drift: dict | None = None  # drift.describe of the training set; None where its density is not positive
    test_drift: "drift.DriftCheck | None" = None  # the test split against it
    bayes_llr: dict[str, np.ndarray] = field(default_factory=dict)  # valid/test exact LLR, built-in benchmark


def to_device(splits: dict[str, RawSplit], channels: list[str], device: torch.device | str,
              test_labels: np.ndarray | None = None, whiten: bool = False, stats: dict | None = None,
              symmetry: SymmetryPlan = SymmetryPlan(), on_chunk: dict[str, OnChunk] | None = None) -> DeviceData:
    """Every split on `device`, normalised with training statistics or a checkpoint's `stats`; test y: answer key."""
    xs, on_chunk = {}, on_chunk or {}
    if stats is None:  # a new run: statistics of the training images they normalise
        whiten = whiten and "density" in channels
        x = _read(splits["train"], channels, whiten, on_chunk.get("train"))
        stats = fit_stats(x, channels, whiten, symmetry.whitening_group())
        xs["train"] = _prepare(x, stats).to(device)
    xs.update({name: to_tensor(s, stats, device, on_chunk.get(name)) for name, s in splits.items() if name not in xs})
    y = {name: torch.from_numpy(split.labels).float().to(device) for name, split in splits.items()}
    y["test"] = None if test_labels is None else torch.from_numpy(test_labels).float().to(device)
    return DeviceData(xs, y, stats, image_size=xs["train"].shape[-1], symmetry=symmetry)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, device: torch.device | str,
                  rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """Full index batches for one epoch from a permutation seeded by (seed, epoch), each rank a disjoint slice."""
    generator = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator, device=device)
    steps = max(n // (batch_size * world), 1)
    per_step = min(batch_size, n // world)
    return [order[(s * world + rank) * per_step:(s * world + rank + 1) * per_step] for s in range(steps)]


def resolve_data_dir(cfg: Config, log: Callable[[str], None]) -> tuple[Path, str]:
    """--data-dir when it has train.hdf5 ("files"), else the built-in benchmark in it when it is empty ("synthetic")."""
    data_dir = Path(cfg.data_dir)
    if (data_dir / SPLIT_FILES["train"]).exists():
        return data_dir, "files"
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir} is a file; pass the folder that holds {SPLIT_FILES['train']}")
    if not data_dir.exists() and cfg.data_dir != Config.data_dir:  # a typo must not summon synthetic data
        raise UserError(f"data folder {data_dir} does not exist; pass --data-dir with the HDF5 files (an empty "
                        f"folder gets the built-in synthetic benchmark)")
    # hidden files and the generator's own folders (synthetic, synthetic-*) are not the user's data
    found = sorted(p.name for p in data_dir.iterdir() if not p.name.startswith(".")
                   and not (p.is_dir() and p.name.split("-")[0] == "synthetic")) if data_dir.is_dir() else []
    if found:  # advise: files that look like the splits under another name, else what the run reads
        wanted = {**SPLIT_FILES, "validation": SPLIT_FILES["valid"], "test_no_labels": SPLIT_FILES["test"]}
        renames = [f"{n} to {wanted[Path(n).stem.lower()]}" for n in found
                   if Path(n).stem.lower() in wanted and n not in SPLIT_FILES.values()]
        if renames:
            advice = f"rename {', '.join(renames)}"
        else:
            advice = f"the run reads {', '.join(SPLIT_FILES.values())} (with datasets density, recording_date, labels)"
        raise UserError(f"{data_dir} has no {SPLIT_FILES['train']} but holds {', '.join(found[:6])}"
                        f"{' ...' if len(found) > 6 else ''}; {advice}, or pass an empty folder to generate the "
                        f"built-in benchmark there")
    log(f"no {SPLIT_FILES['train']} in {data_dir}/: using the built-in synthetic benchmark in {data_dir}/synthetic/")
    return synthetic.ensure_benchmark(data_dir / "synthetic"), "synthetic"


def load_data(cfg: Config, device: torch.device, log: Callable[[str], None], saved: dict | None = None):
    """(DeviceData, info for config.json); a resumed run keeps `saved`'s input preparation and symmetries."""
    data_dir, source = resolve_data_dir(cfg, log)
    splits = load_splits(data_dir)
    confounders = find_confounders(splits)
    channels = saved["stats"]["channels"] if saved else choose_channels(cfg.channels, confounders, log)
    if saved:
        plan = SymmetryPlan.from_dict(saved["symmetry"])
    else:  # symmetry.plan on its sample of the training images (the guard above has read them all, so they are clean)
        train = splits["train"]
        sample = symmetry.check_sample(train.labels, len(channels), train.channels["density"].shape[-1])
        images = np.stack([np.asarray(train.channels[c][sample], np.float32) for c in channels], axis=1)
        plan = symmetry.plan(cfg.augment, cfg.tta, cfg.tta_shifts, torch.from_numpy(images),
                             torch.from_numpy(train.labels[sample]), log)
    test_labels = read_answer_key(data_dir, len(splits["test"]))
    others = [c for c in channels if c != "density"]
    derived: dict[str, list] = {name: [] for name in splits}  # per chunk: drift features, exact Bayes LLR

    def derive(name: str) -> OnChunk:
        return lambda block: derived[name].append((drift.table(block, others), synthetic.bayes_log_likelihood_ratio(
            block["density"]) if source == "synthetic" else None))
    data = to_device(splits, channels, device, test_labels, cfg.whiten, saved and saved["stats"], plan,
                     {name: derive(name) for name in splits})
    table = {name: np.concatenate([t for t, _ in parts]) for name, parts in derived.items()}
    if not np.isnan(table["train"][:, 0]).any():  # --no-whiten accepts density <= 0: no log-density to describe
        data.drift = drift.describe(table["train"], others)
        data.test_drift = drift.check(data.drift, table["test"])
    info = {"data_dir": str(data_dir), "source": source, "channels": channels, "confounders": confounders,
            "files": data_files(data_dir, answers=test_labels is not None),
            "sizes": {name: len(s) for name, s in splits.items()}, "symmetry": dataclasses.asdict(plan)}
    if source == "synthetic":
        llr = {name: np.concatenate([v for _, v in parts]) for name, parts in derived.items()}
        data.bayes_llr = {name: llr[name] for name in ("valid", "test")}
        truth = {"train": splits["train"].labels, "valid": splits["valid"].labels, "test": test_labels}
        info["bayes_accuracy"] = {name: float(((llr[name] > 0) == y).mean()) for name, y in truth.items()
                                  if y is not None}
    for split in splits.values():
        split.close()
    return data, info


def data_files(data_dir: Path, answers: bool) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each split file, and of the answer key when the test metrics use it."""
    files = {**SPLIT_FILES, **({"test_answers": ANSWER_FILE} if answers else {})}
    return {name: fingerprint(data_dir / file) for name, file in files.items()}


def check_same_data(run_dir: Path, files: dict[str, dict[str, Any]]) -> None:
    """Resume only on the data the run started with: its whitening filter, statistics and history belong to it."""
    try:
        recorded = json.loads((run_dir / "config.json").read_text())["data"]["files"]
        changed = changed_files(recorded, files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{run_dir}/config.json, the record of the data the run read, is missing or damaged; start "
                        f"a new run") from None
    if changed:
        raise UserError(f"cannot resume {run_dir}: {changed[0]} changed since the run started (SHA-256 differs "
                        f"from config.json); restore that file, or start a new run")
