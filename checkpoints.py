"""The checkpoints that run_transformer.run writes (best.pt, last.pt), used again: the rules of --resume, and
--predict, which classifies a new file with the network, normalisation, views, calibration and drift description
saved in best.pt."""

import dataclasses
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import drift
from config import FIXED, Config, UserError, config_from_dict, fields_with, flag
from data import open_split, to_tensor
from fileio import unreadable
from metrics import sigmoid
from report import write_predictions, write_probabilities
from symmetry import SymmetryPlan
from train import (Diverged, NonFinitePredictions, Training, TrainState, build_model, overflow_message, pick_device,
                   predict_logits)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found; pass a run folder written by run_transformer.py")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before failing: one line is enough
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise unreadable(path, e) or UserError(f"{path} is not a checkpoint written by run_transformer.py (or it is "
                                               f"damaged)") from None
    if not isinstance(payload, dict) or not {"model", "config", "stats"} <= payload.keys():
        raise UserError(f"{path} is not a checkpoint written by run_transformer.py")
    return payload


def trained_model(payload: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The network of a loaded checkpoint with its weights, on `device` (training mode, as built)."""
    cfg = config_from_dict(payload["config"])
    model = build_model(cfg, len(payload["stats"]["channels"]), payload["image_size"]).to(device)
    model.load_state_dict(payload["model"])
    return model


def resume_config(run_dir: Path, typed: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    """The saved config with the typed flags applied, and last.pt; refuses flags that would change the experiment."""
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir} is not a run folder; pass a folder written by run_transformer.py")
    payload = load_checkpoint(run_dir / "last.pt")
    missing = sorted({"optimizer", "scheduler", "train_state", "rng", "cuda_rng"} - payload.keys())
    if missing:
        raise UserError(f"{run_dir}/last.pt cannot be resumed (no {', '.join(missing)}); start a new run")
    try:
        saved = config_from_dict(payload["config"])
        TrainState(**payload["train_state"])
    except (TypeError, AttributeError):
        raise UserError(f"{run_dir}/last.pt cannot be resumed: its training state is damaged; train anew") from None
    asked = dataclasses.replace(saved, **typed)
    changes = ", ".join(f"{flag(k)}: checkpoint {getattr(saved, k)!r} vs requested {getattr(asked, k)!r}"
                        for k in fields_with(FIXED) if getattr(asked, k) != getattr(saved, k))
    if changes:
        raise UserError(f"cannot resume {run_dir}: settings of the experiment differ ({changes}); drop those flags, "
                        f"or start a new run with them")
    return asked, payload


def restore_training(training: Training, payload: dict[str, Any], device: torch.device) -> TrainState:
    """Put the weights, optimizer, schedule and random states of a last.pt back; returns its TrainState."""
    for part in ("model", "optimizer", "scheduler"):
        getattr(training, part).load_state_dict(payload[part])
    torch.set_rng_state(payload["rng"])
    if device.type == "cuda":  # a machine with fewer GPUs restores the generators it has
        for index, state in enumerate(payload["cuda_rng"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
    return TrainState(**payload["train_state"])


def predict_file(run_dir: Path, input_file: str, output: str = "", device_name: str = "auto",
                 log: Callable[[str], None] = print) -> Path:
    """Classify `input_file` with `run_dir`/best.pt: 0/1 lines to `output` (default: predictions-<input>.txt in the
    run folder), the probabilities to a .csv beside them."""
    if not input_file:
        raise UserError("--predict needs --input FILE.hdf5, the measurements to classify")
    source = Path(input_file)
    payload = load_checkpoint(run_dir / "best.pt")
    stats, plan = payload["stats"], SymmetryPlan.from_dict(payload["symmetry"])
    path = Path(output) if output else run_dir / f"predictions-{source.stem}.txt"
    csv_path = path.with_suffix(".csv")
    if csv_path == path or path.is_dir() or output.endswith(("/", "\\")):
        raise UserError(f"--output {output} must name a new text file such as predictions.txt (a .csv goes beside it)")
    for target in (path, csv_path):
        if target.exists():
            raise UserError(f"{target} already exists; choose another --output (nothing was overwritten)")
    device = pick_device(device_name)
    model = trained_model(payload, device)
    # runs that do not read density have no drift description to check against
    described = payload.get("drift") is not None and "density" in stats["channels"]
    rows: list = []
    with closing(open_split(source, "input", tuple(stats["channels"]), labelled=False)) as split:
        grid = split.channels[stats["channels"][0]].shape[-1]
        if grid != payload["image_size"]:
            raise UserError(f"{source} has {grid}-pixel grids but the model was trained on {payload['image_size']}")
        x = to_tensor(split, stats, device, (lambda b: rows.append(drift.table(b, payload["drift"]["channels"])))
                      if described else None)
    try:
        logits = predict_logits(model, x, plan).cpu().numpy()
    except NonFinitePredictions as e:  # a NaN would be a silent 0 in the output
        where = f"the model of {run_dir}/best.pt diverges on {source}"
        raise Diverged(f"{overflow_message(e, where, payload['config']['lr'])}; nothing was written") from None
    # a run stopped before its end has no calibration yet: temperature 1, no offset
    calibration = payload.get("calibration", {"temperature": 1.0, "offset": 0.0})
    probs = sigmoid(logits + calibration["offset"], calibration["temperature"])
    checked = drift.check(payload["drift"], np.concatenate(rows)) if described else None
    write_predictions(path, probs)
    write_probabilities(csv_path, probs, None if checked is None else checked.flags)
    flagged = "no drift check" if checked is None else f"drift check: {checked.share:.1%} flagged"
    ones = int((probs > 0.5).sum())
    log(f"{len(probs)} predictions ({ones} of state 1, {len(probs) - ones} of state 0) -> {path} and {csv_path} "
        f"(temperature {calibration['temperature']:.3g}; {flagged})")
    if checked is not None and checked.warn:
        log(drift.warning_line(checked, str(source)))
    return path
