"""Train the gas classifier and write a complete, never-overwritten run folder.

    python run_transformer.py --loss smooth                 # train (built-in benchmark when data/ is empty)
    python run_transformer.py --resume runs/RUN             # continue an interrupted run
    python run_transformer.py --predict runs/RUN --input new.hdf5 --output new_predictions.txt
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np
import torch

import distributed
from checkpoints import (Resumed, checkpoint, earlier_attempts, load_checkpoint, restore_training,
                         resume_config)
from cli import exit_code
from config import (CONTROL, EXECUTION, OUTPUT, Config, Parser, UserError, build_parser, fields_with, flag)
import symmetry
from data import DeviceData, check_same_data, load_data
from fileio import (WriteFailed, check_writable, fresh_directory, rounded,
                    save_torch, write_json)
from metrics import scores
from predict import predict_file
from provenance import provenance
from report import plot_curves, write_metrics_csv, write_predictions, write_probabilities
from run_report import assess, trust_line, write_page
from train import (Diverged, Interrupted, NonFinitePredictions, TrainState, build_training, fit,
                   overflow_message, pick_device, predict_logits, resolve_precision)

Log = Callable[[str], None]


# ---- data ------------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "device": str(device), "platform": platform.platform(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
            "world_size": str(distributed.world())}


# ---- training --------------------------------------------------------------------------------------------

def check_predictions_path(path: Path) -> None:
    """--predictions is rewritten at the end of every run: before training, refuse a path that cannot be
    written or that holds anything but an earlier predictions file (0/1 lines), such as a data file."""
    check_writable(path)
    if path.exists() and (path.stat().st_size > 1 << 26 or not set(path.read_bytes()) <= set(b"01\n")):
        raise UserError(f"--predictions {path} exists and is not a predictions file (0/1 lines); it would be "
                        f"overwritten, so choose another path")


class ResumableInterrupt(Interrupted):
    """An interruption after the run folder and its last.pt exist: the message says how to resume."""


def run(cfg: Config, log: Log = print, progress: bool | None = None, resume_from: Resumed | None = None
        ) -> dict[str, Any]:
    """Train one configuration end to end and write its run folder; returns the summary.

    Under torchrun every process runs this; rank 0 alone prints and writes."""
    start = time.time()
    device = distributed.setup(pick_device(cfg.device), cfg.sync_bn)  # cuda:LOCAL_RANK under torchrun on GPUs
    cfg = resolve_precision(cfg, device)
    main_rank = distributed.is_main()
    progress = sys.stderr.isatty() if progress is None else progress
    if main_rank:
        check_predictions_path(Path(cfg.predictions))
    else:
        log, progress = (lambda message: None), False

    for spec, name in ((cfg.augment, "--augment"), (cfg.tta, "--tta")):
        if spec != "auto":
            symmetry.parse_spec(spec, name)  # a typo ends here, before the data are read
    torch.manual_seed(cfg.seed)
    with distributed.main_first():  # rank 0 generates the built-in benchmark before the others read it
        data, info = load_data(cfg, device, log, resume_from.payload if resume_from else None)
    if len(data.x["train"]) < distributed.world():
        raise UserError(f"{len(data.x['train'])} training samples cannot be split over {distributed.world()} "
                        f"processes; use fewer processes")
    training = build_training(cfg, len(info["channels"]), data.image_size, len(data.x["train"]), device)

    earlier = earlier_attempts(resume_from)

    def saved(state: TrainState) -> dict[str, Any]:  # with the time of every attempt so far, this one's too
        return checkpoint(training, state, cfg, data, [*earlier, round(time.time() - start, 1)])

    if resume_from:
        run_dir = resume_from.run_dir
        check_same_data(run_dir, info["files"])
        state = restore_training(training, resume_from, device)
        log(f"resuming {run_dir} after epoch {state.epoch}")
    else:
        run_dir, state = new_run_folder(cfg, info, device, main_rank), TrainState()
        if main_rank:  # resumable from the first step on
            save_torch(run_dir / "last.pt", saved(state))
    if distributed.world() > 1:  # identical weights on every rank, but each rank its own dropout masks
        torch.manual_seed(cfg.seed + 1_000_003 * (distributed.rank() + 1) + state.epoch)
    ranks = f" on each of {distributed.world()} processes" if distributed.world() > 1 else ""
    log(f"run folder: {run_dir}  ({sum(p.numel() for p in training.model.parameters()):,} parameters, "
        f"{device}, {training.steps_per_epoch} steps/epoch{ranks})")

    def on_epoch(state: TrainState, improved: bool) -> None:
        if main_rank:
            save_epoch(run_dir, saved(state), state, improved)

    outputs = Outputs(run_dir, cfg, data, info, log, start, earlier)
    with resumable(run_dir, state, cfg):
        try:
            fit(training, data, cfg, state, on_epoch, log, progress)
        except Diverged as e:
            if main_rank:
                predict_after_divergence(e, outputs, training.model, state)
            raise
        if not main_rank:
            return {"rank": distributed.rank(), "epochs_run": state.epoch}
        return finish(outputs, training.model, state)


def new_run_folder(cfg: Config, info: dict[str, Any], device: torch.device, main_rank: bool) -> Path:
    """A fresh, time-stamped run folder with config.json (rank 0); other ranks get cfg.out_dir, never written."""
    if not main_rank:
        return Path(cfg.out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = fresh_directory(cfg.out_dir, f"{stamp}-{cfg.model}-{cfg.optimizer}-{cfg.loss}")
    write_json(run_dir / "config.json", {"config": dataclasses.asdict(cfg), "data": info,
                                         "environment": environment(device), "provenance": provenance()})
    return run_dir


def save_epoch(run_dir: Path, payload: dict[str, Any], state: TrainState, improved: bool) -> None:
    """After every epoch: last.pt (to resume), best.pt when validation improved, and metrics.csv."""
    if improved:
        save_torch(run_dir / "best.pt", payload)
    save_torch(run_dir / "last.pt", payload)
    write_metrics_csv(run_dir / "metrics.csv", state.history)


@contextmanager
def resumable(run_dir: Path, state: TrainState, cfg: Config) -> Iterator[None]:
    """Faults after the run folder exists become one line that says what is kept and what to do next."""
    try:
        yield
    except Interrupted as e:  # also while finish writes: last.pt is complete, so the run can be resumed
        raise ResumableInterrupt(f"{e}; {run_dir}/last.pt holds epoch {state.epoch}. Resume with: "
                                 f"python run_transformer.py --resume {run_dir}", e.signum) from None
    except NonFinitePredictions as e:  # in finish: the best epoch's model overflows on all views or on test
        where = (f"the model of {run_dir}/best.pt (epoch {state.best_epoch}) diverges on the validation "
                 f"split's test-time views or on the test split")
        raise Diverged(f"{overflow_message(e, where, cfg.lr)}. Kept best.pt and last.pt; no predictions were "
                       f"written") from None
    except WriteFailed as e:  # a full disk: the files being replaced, last.pt among them, are still complete
        raise WriteFailed(f"{e}, then resume with: python run_transformer.py --resume {run_dir}") from None


def predict_after_divergence(e: Diverged, outputs: Outputs, model: torch.nn.Module, state: TrainState) -> None:
    """A run that diverged still predicts from its best epoch when there is one; raises Diverged either way."""
    if not (outputs.run_dir / "best.pt").exists():
        raise Diverged(f"{e}. No epoch finished, so there is no checkpoint to predict with") from None
    finish(outputs, model, state, diverged=str(e))
    raise Diverged(f"{e}. Kept {outputs.run_dir}/best.pt (epoch {state.best_epoch}) and wrote the predictions "
                   f"from it") from None


@dataclass(frozen=True)
class Outputs:
    """Where and for what finish writes: the run folder, the config and data it ran on, its log, the start of
    this attempt and the time of the earlier ones (checkpoints.earlier_attempts)."""
    run_dir: Path
    cfg: Config
    data: DeviceData
    info: dict[str, Any]
    log: Log
    start: float
    earlier: list[float | None]


def finish(outputs: Outputs, model: torch.nn.Module, state: TrainState, diverged: str = "") -> dict[str, Any]:
    """Restore the best checkpoint, calibrate it and check the test split (run_report.assess), predict the test
    set, and write the curves, summary and report; best.pt gets the temperature and the training description."""
    run_dir, cfg, data, info = outputs.run_dir, outputs.cfg, outputs.data, outputs.info
    best = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best["model"])
    final = state.history[-1] if state.history else {}
    # the best epoch was picked by --epoch-views; its validation and test scores use all the test-time views
    views = data.symmetry.views
    logits = {name: predict_logits(model, data.x[name], views).cpu() for name in ("valid", "test")}
    logits = {name: v.numpy() for name, v in logits.items()}
    trust = assess(run_dir, model, cfg, data, info, logits)
    val = split_scores(logits["valid"], trust.logits["valid"], data.y["valid"])
    save_torch(run_dir / "best.pt", {**best, **trust.checkpoint})
    probs = trust.test_probabilities
    write_predictions(run_dir / "predictions.txt", probs)
    write_probabilities(run_dir / "test_probabilities.csv", probs, trust.test_flags)
    write_predictions(cfg.predictions, probs)
    plot_curves(run_dir / "curves.png", state.history, f"{cfg.model} {cfg.optimizer} {cfg.loss} "
                f"channels={','.join(info['channels'])}", trust.bayes_curves)
    summary = {"run_dir": str(run_dir), "data_source": info["source"], "channels": info["channels"],
               "epochs_run": state.epoch, "best_epoch": state.best_epoch, "best_val_loss": state.best_loss,
               "val_acc": val["acc"], "val_auc": val["auc"], "val_loss": val["loss"],
               "final_train_loss": final.get("train_loss"), "final_train_acc": final.get("train_acc"),
               "final_gap_acc": final.get("gap_acc"), "diverged": diverged, "views": views.count() if views else 1,
               "data_dir": info["data_dir"], "symmetry": info["symmetry"]}
    summary.update(wall_time(outputs.earlier, time.time() - outputs.start))
    if data.y["test"] is not None:  # uncalibrated, as val_loss: comparable across runs and with metrics.csv
        test = split_scores(logits["test"], trust.logits["test"], data.y["test"])
        summary.update({"test_acc": test["acc"], "test_auc": test["auc"], "test_loss": test["loss"]})
    if "bayes_accuracy" in info:
        summary["bayes_accuracy"] = info["bayes_accuracy"]
    summary = rounded({**summary, **trust.summary})
    write_page(run_dir, summary)
    write_json(run_dir / "summary.json", summary)  # last: a run folder with it holds all the run's results
    outputs.log(f"best epoch {state.best_epoch}, scored with all {summary['views']} view(s) per image: val acc "
            f"{summary['val_acc']:.4f} auc {summary['val_auc']:.4f}"
            + (f" | test acc {summary['test_acc']:.4f}" if "test_acc" in summary else "")
            + (f" vs Bayes limit {info['bayes_accuracy']['test']:.4f}" if "bayes_accuracy" in info else "")
            + f" | {trust_line(summary)} | predictions: {run_dir}/predictions.txt and {cfg.predictions}, "
            f"report: {run_dir}/report.md")
    for note in trust.notes:
        outputs.log(note)
    if learned_nothing(summary, data.y["valid"]):
        outputs.log(nothing_learned_hint(cfg))
    return summary


def wall_time(earlier: list[float | None], this_attempt: float) -> dict[str, Any]:
    """Summary keys: the run's wall time over all its attempts, and each attempt's (None: not recorded)."""
    attempts = [*earlier, round(this_attempt, 1)]
    return {"wall_time_s": round(sum(t for t in attempts if t is not None), 1), "attempt_seconds": attempts}


def split_scores(raw: np.ndarray, shifted: np.ndarray, y: torch.Tensor) -> dict[str, float]:
    """Log loss and AUC of the raw logits (as in metrics.csv: comparable across runs), and the accuracy of the
    written 0/1 predictions (the logits shifted by the calibration's offset)."""
    out = scores(torch.sigmoid(torch.from_numpy(raw)), y.cpu())
    out["acc"] = float(((torch.from_numpy(shifted) > 0).float() == y.cpu()).float().mean())
    return out


def nothing_learned_hint(cfg: Config) -> str:
    """What to try when a run ends at the constant predictor, from the measurements in the README (results)."""
    tips = []
    if cfg.model == "vit" and cfg.init == "trunc02" and cfg.optimizer == "sgd":
        tips.append("--init torch (with --init trunc02, SGD kept this ViT at the constant predictor in every "
                    "measured run)")
    if not cfg.whiten:
        tips.append("whitened input (drop --no-whiten)")
    tips.append("another --lr or more --epochs")
    return "note: the model did no better than always predicting the majority label; try " + "; ".join(tips)


def learned_nothing(summary: dict[str, Any], y_valid: torch.Tensor) -> bool:
    """True when the best model matches the constant predictor: majority-rate accuracy and chance-level AUC."""
    majority = max(float(y_valid.mean()), 1 - float(y_valid.mean()))
    return summary["val_acc"] <= majority + 1e-6 and abs(summary["val_auc"] - 0.5) < 0.1


# ---- command line ----------------------------------------------------------------------------------------

@dataclass
class Command:
    """What to do instead of training a new run; kept apart from the experiment's settings (Config)."""
    resume: str = ""
    predict: str = ""
    input: str = ""
    output: str = ""


def build_command_parser() -> Parser:
    """Config's flags, then the command modes."""
    parser = build_parser(__doc__)
    modes = parser.add_argument_group("command modes (instead of training a new run)")
    one = modes.add_mutually_exclusive_group()
    one.add_argument("--resume", metavar="RUN_DIR", default="", help="continue the run in this folder from its "
                     "last.pt; of the flags above only these may change: "
                     + ", ".join(flag(name) for name in fields_with(CONTROL, EXECUTION, OUTPUT)))
    one.add_argument("--predict", metavar="RUN_DIR", default="", help="classify --input with the best "
                     "checkpoint of this run folder")
    modes.add_argument("--input", metavar="FILE", default="", help="with --predict: the HDF5 file to classify")
    modes.add_argument("--output", metavar="FILE", default="", help="with --predict: where to write the 0/1 "
                       "predictions (a .csv of probabilities goes beside it; default: predictions-NAME.txt in the "
                       "run folder, NAME that of --input)")
    return parser


UNSET = object()  # the value of every Config flag the user did not type


def parse_command(argv: list[str]) -> tuple[dict[str, Any], Command]:
    """The Config flags the user typed (defaults left out: --resume applies only those) and the command.

    argparse fills in a default only where the namespace has no value yet, so a namespace that starts with
    UNSET for every Config field comes back with UNSET exactly where a flag was not typed (--help still shows
    the defaults)."""
    untyped = argparse.Namespace(**{f.name: UNSET for f in dataclasses.fields(Config)})
    parsed = vars(build_command_parser().parse_args(argv, namespace=untyped))
    command = Command(**{name: parsed.pop(name) for name in vars(Command())})
    if (command.input or command.output) and not command.predict:
        raise UserError("--input and --output go with --predict RUN_DIR (the run whose model classifies them)")
    return {name: value for name, value in parsed.items() if value is not UNSET}, command


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """run_dir/summary.json, or None when it is missing or damaged (the run's results are then incomplete)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        return summary if isinstance(summary, dict) else None
    except (OSError, ValueError):
        return None


def finished_line(run_dir: Path, cfg: Config, state: TrainState, summary: dict[str, Any] | None) -> str:
    """The line --resume prints for a run with nothing to resume, else "": with `cfg` the loop would run no
    epoch after `state`, and the results of that state were written (`summary`, from summary.json)."""
    if state.epoch < cfg.epochs and state.bad_epochs < cfg.patience:
        return ""
    if summary is None or summary.get("epochs_run") != state.epoch:
        return ""
    if state.epoch >= cfg.epochs:
        how = f"{state.epoch} of {cfg.epochs} epochs"
    else:
        how = (f"stopped early after epoch {state.epoch} of {cfg.epochs}, {state.bad_epochs} without a better "
               f"validation loss; a larger --patience trains on")
    return (f"nothing to resume: {run_dir} finished ({how}; best epoch {state.best_epoch}); its results are "
            f"{run_dir}/report.md, summary.json and predictions.txt")


def resume_hint(e: Interrupted) -> str:
    return "" if isinstance(e, ResumableInterrupt) else "nothing to resume yet: run the same command again"


def main(argv: list[str] | None = None) -> int:
    """Train, resume or predict; exit codes as in cli.exit_code."""
    argv = sys.argv[1:] if argv is None else argv

    def body() -> None:
        typed, command = parse_command(argv)
        if command.predict:
            predict_file(Path(command.predict), command.input, command.output, typed.get("device", Config.device))
        elif command.resume:
            cfg, resumed = resume_config(Path(command.resume), typed)
            state = TrainState(**resumed.payload["train_state"])
            done = finished_line(resumed.run_dir, cfg, state, read_summary(resumed.run_dir))
            if not done:
                run(cfg, resume_from=resumed)
            elif distributed.is_main():
                print(done)
        else:
            run(Config(**typed))
    return exit_code(body, resume_hint)


if __name__ == "__main__":
    sys.exit(main())
