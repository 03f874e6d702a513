"""Classify new measurements with a trained run: `python run_transformer.py --predict RUN --input new.hdf5`, with
the network, normalisation, views, calibration and drift description saved in the run's best.pt."""

from contextlib import closing
from pathlib import Path
from typing import Callable

import numpy as np

import drift
from metrics import sigmoid
from checkpoints import load_checkpoint, trained_model
from config import UserError
from data import open_split, to_tensor
from symmetry import SymmetryPlan
from report import write_predictions, write_probabilities
from train import Diverged, NonFinitePredictions, overflow_message, pick_device, predict_logits


def predict_file(run_dir: Path, input_file: str, output: str = "", device_name: str = "auto",
                 log: Callable[[str], None] = print) -> Path:
    """Classify `input_file` with `run_dir`/best.pt: 0/1 lines to `output` (default: predictions-<input>.txt in the
    run folder), the probabilities to a .csv beside them."""
    if not input_file:
        raise UserError("--predict needs --input FILE.hdf5, the measurements to classify")
    source = Path(input_file)
    payload = load_checkpoint(run_dir / "best.pt")
    stats, views = payload["stats"], SymmetryPlan.from_dict(payload["symmetry"]).views
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
        logits = predict_logits(model, x, views).cpu().numpy()
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
