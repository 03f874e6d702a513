"""Reading back the checkpoints that run_transformer.run writes (best.pt, last.pt); the rules of --resume."""

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from config import FIXED, Config, UserError, config_from_dict, fields_with, flag
from fileio import unreadable
from train import Training, TrainState, build_model


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
