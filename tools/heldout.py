"""The labelled images the grid scores every run on, which no run used for any choice, and that scoring.

On the built-in benchmark: `heldout.hdf5`, 20,000 images from the same generator with a random stream of their
own (balanced labels, recording_date random per pixel as in the test file), where the sampling error of an
accuracy near 98% is ±0.1 point (the 1,000-image test file: ±0.4). On the user's data, whose test file may have
no answer key: the validation file, while the runs train on a stratified 5/6 of the training file and make
every choice (early stopping, temperature, rate probes) on the other 1/6 (`carve`).
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

import reference
import synthetic
from checkpoints import load_checkpoint, trained_model
from config import UserError
from data import ANSWER_FILE, SPLIT_FILES, load_splits, read_split, to_device, to_tensor
from symmetry import SymmetryPlan
from fileio import fingerprint, rounded, write_json
from metrics import scores
from train import predict_logits

FILE = "heldout.hdf5"
MANIFEST = "heldout.json"
PER_CLASS = 10_000
STREAM = 1000  # generate_benchmark draws split i from the stream (seed, i), i < 3: far from those
CHOICE_SHARE = 6  # on the user's data, 1 in CHOICE_SHARE training images of each state is kept for choices
CARVE_MANIFEST = "carve.json"


def ensure_heldout(directory: str | Path, seed: int = 0, per_class: int = PER_CLASS) -> Path:
    """directory/heldout.hdf5, generated once (a few seconds) and reused while its manifest matches; with its
    exact Bayes accuracy in the manifest."""
    directory = Path(directory)
    path, manifest = directory / FILE, directory / MANIFEST
    wanted = {"generator": "fictitious-gas benchmark, held-out set", "seed": seed, "stream": STREAM,
              "per_class": per_class}
    try:
        saved = json.loads(manifest.read_text()) if manifest.exists() else {}
    except (OSError, ValueError):
        saved = {}
    if path.exists() and {k: saved.get(k) for k in wanted} == wanted:
        return path
    if path.exists() and not saved:
        raise UserError(f"{path} was not written by the held-out generator; move it away")
    directory.mkdir(parents=True, exist_ok=True)
    split = synthetic.make_split(per_class, per_class, "test", np.random.default_rng([seed, STREAM]))
    synthetic.write_hdf5(path, {"density": split["density"], "recording_date": split["recording_date"],
                                "labels": split["labels"].astype(np.int8)[:, None]})
    bayes = float((synthetic.bayes_predict(split["density"]) == split["labels"]).mean())
    write_json(manifest, {**wanted, "bayes_accuracy": bayes})
    return path


def bayes_accuracy(path: Path) -> float | None:
    """Accuracy of the exact likelihood-ratio test on the benchmark's held-out set (from its manifest); None for
    the user's data, where none is known."""
    manifest = path.parent / MANIFEST
    return float(json.loads(manifest.read_text())["bayes_accuracy"]) if manifest.exists() else None


def carve(data_dir: Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The grid's data on the user's files: folder/train.hdf5 and folder/valid.hdf5 split the user's training
    file by state (the validation file of the runs is 1 in CHOICE_SHARE images of each state), the user's test
    file (and answer key) beside them, unchanged. Returns (folder, the user's validation file: the evaluation
    set). Rewritten only when the user's files changed; the user's folder is only read."""
    sources = {name: data_dir / f for name, f in SPLIT_FILES.items()}
    answers = data_dir / ANSWER_FILE
    wanted = {"choice_share": CHOICE_SHARE, "seed": seed,
              "sources": {str(p): fingerprint(p) for p in [*sources.values(), answers] if p.exists()}}
    manifest = folder / CARVE_MANIFEST
    try:
        if json.loads(manifest.read_text()) == wanted:
            return folder, sources["valid"]
    except (OSError, ValueError):
        pass
    read_split(sources["train"], "train", ("density",))  # refuses a damaged or ill-shaped file in one line
    with h5py.File(sources["train"], "r") as h5:
        arrays = {key: h5[key][()] for key in h5.keys() if isinstance(h5[key], h5py.Dataset)}
    labels = arrays["labels"].reshape(-1)
    rng = np.random.default_rng(seed)
    choice = np.zeros(len(labels), bool)
    for state in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == state))
        choice[idx[: len(idx) // CHOICE_SHARE]] = True
    folder.mkdir(parents=True, exist_ok=True)
    for name, keep in (("train", ~choice), ("valid", choice)):
        synthetic.write_hdf5(folder / SPLIT_FILES[name], {k: v[keep] for k, v in arrays.items()})
    for source in (sources["test"], answers):
        if source.exists():
            shutil.copyfile(source, folder / source.name)
    write_json(manifest, wanted)
    return folder, sources["valid"]


def pack(correct: np.ndarray) -> str:
    """Per-image correctness (bools) as base64 of packed bits: 20,000 images in 3.4 kB of results.jsonl."""
    return base64.b64encode(np.packbits(correct.astype(bool))).decode()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:n].astype(bool)


def score_run(run_dir: Path, path: Path, device: torch.device) -> dict[str, Any]:
    """The best checkpoint of run_dir on the held-out set, with the run's channels, input preparation and
    test-time views: accuracy, log loss and AUC (uncalibrated, as the test metrics), n and which images it got
    right (for paired differences between runs)."""
    payload = load_checkpoint(run_dir / "best.pt")
    stats = payload["stats"]
    split = read_split(path, "held-out", tuple(stats["channels"]))
    model = trained_model(payload, device)
    views = SymmetryPlan.from_dict(payload["symmetry"]).views
    logits = predict_logits(model, to_tensor(split, stats, device), views).cpu()
    labels = torch.from_numpy(split.labels).float()
    result = scores(torch.sigmoid(logits), labels)  # log loss and AUC of the raw logits
    correct = ((logits + payload.get("calibration", {}).get("offset", 0.0) > 0).float() == labels).numpy()
    result["acc"] = float(correct.mean())  # of the 0/1 predictions the run writes
    return {**rounded(result), "n": len(labels), "bayes_acc": bayes_accuracy(path), "correct": pack(correct)}


def reference_accuracy(data_dir: Path, path: Path, device: torch.device) -> dict[str, Any]:
    """The reference classifier (reference.py) on whitened density of data_dir's training split (raw density
    where it has values <= 0), scored on the labelled file `path`: accuracy and its 95% half-width."""
    splits = load_splits(data_dir)
    try:
        data = to_device(splits, ["density"], device, whiten=True)
    except UserError:
        data = to_device(splits, ["density"], device)
    model, _ = reference.fit_reference(data.x["train"], data.y["train"])
    split = read_split(path, "held-out", ("density",))
    right = (reference.logits(model, to_tensor(split, data.stats, device)).cpu().numpy() > 0) == split.labels
    acc = float(right.mean())
    return rounded({"acc": acc, "half_width": 1.96 * float(np.sqrt(acc * (1 - acc) / len(right))), "n": len(right)})
