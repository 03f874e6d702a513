"""A large held-out evaluation set for the built-in benchmark, and scoring a finished run on it.

The benchmark's test file has 1,000 images: one image is 0.1 point and the sampling error of an accuracy near
98% is about ±0.4 points, so differences between configurations below a point are not resolved there. The
grid (compare.py) therefore also scores every run's best checkpoint on `heldout.hdf5`: 20,000 images from the
same generator with a random stream of their own (balanced labels, recording_date random per pixel as in the
test file), where the sampling error is ±0.1 point. The 1,000-image test file stays the scientist's layout.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import synthetic
from checkpoints import load_checkpoint, trained_model
from config import UserError, config_from_dict
from data import read_split, to_tensor
from fileio import rounded, write_json
from metrics import scores
from train import predict_logits, tta_shifts

FILE = "heldout.hdf5"
MANIFEST = "heldout.json"
PER_CLASS = 10_000
STREAM = 1000  # generate_benchmark draws split i from the stream (seed, i), i < 3: far from those


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


def bayes_accuracy(path: Path) -> float:
    """Accuracy of the exact likelihood-ratio test on the held-out set (from its manifest)."""
    return float(json.loads((path.parent / MANIFEST).read_text())["bayes_accuracy"])


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
    cfg, stats = config_from_dict(payload["config"]), payload["stats"]
    split = read_split(path, "held-out", tuple(stats["channels"]))
    model = trained_model(payload, device)
    logits = predict_logits(model, to_tensor(split, stats, device), tta_shifts(cfg)).cpu()
    labels = torch.from_numpy(split.labels).float()
    result = scores(torch.sigmoid(logits), labels)
    correct = ((logits > 0).float() == labels).numpy()
    return {**rounded(result), "n": len(labels), "bayes_acc": bayes_accuracy(path), "correct": pack(correct)}
