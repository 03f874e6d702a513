"""Train the gas classifier into a fresh run folder (the built-in benchmark when data/ is empty), continue one
(--resume runs/RUN) or classify a file with one (--predict runs/RUN --input new.hdf5); see docs/usage.md."""

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

import distributed
import symmetry
from checkpoints import predict_file, restore_training, resume_config
from config import (CONTROL, EXECUTION, Config, HelpFormatter, Parser, UserError, add_config_flags, fields_with,
                    flag)
from data import check_same_data, load_data
from fileio import WriteFailed, check_writable, fresh_directory, provenance, save_torch, write_json
from report import finish, write_metrics_csv
from train import (Diverged, Interrupted, NonFinitePredictions, TrainState, build_training, exit_code, fit,
                   overflow_message, pick_device, resolve_precision)


def run(cfg: Config, log: Callable[[str], None] = print, progress: bool | None = None,
        resume_dir: Path | None = None, last: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one configuration and write its run folder (or continue `resume_dir`); rank 0 alone prints, writes."""
    start = time.time()
    device = distributed.setup(pick_device(cfg.device), cfg.sync_bn)
    cfg = resolve_precision(cfg, device)
    main_rank = distributed.is_main()
    progress = sys.stderr.isatty() if progress is None else progress
    if main_rank:  # --predictions is rewritten by every run: refuse a data file there before training
        predictions = Path(cfg.predictions)
        check_writable(predictions)
        if predictions.exists() and (predictions.stat().st_size > 1 << 26 or
                                     not set(predictions.read_bytes()) <= set(b"01\n")):
            raise UserError(f"--predictions {predictions} is not a predictions file to overwrite; choose another path")
    else:
        log, progress = (lambda message: None), False
    for spec, name in ((cfg.augment, "--augment"), (cfg.tta, "--tta")):
        if spec != "auto":
            symmetry.parse_spec(spec, name)  # a typo ends here, before the data are read

    # data -> model -> run folder
    torch.manual_seed(cfg.seed)
    with distributed.main_first():  # rank 0 generates the built-in benchmark before the others read it
        data, info = load_data(cfg, device, log, last)
    if len(data.x["train"]) < distributed.world():
        raise UserError(f"{len(data.x['train'])} training samples cannot be split over {distributed.world()} "
                        f"processes; use fewer processes")
    training = build_training(cfg, len(info["channels"]), data.image_size, len(data.x["train"]), device)
    earlier = list(last["attempt_seconds"]) if last else []

    def saved(state: TrainState) -> dict[str, Any]:  # a checkpoint: what checkpoints.py reads back
        return {"model": training.model.state_dict(), "optimizer": training.optimizer.state_dict(),
                "scheduler": training.scheduler.state_dict(), "train_state": dataclasses.asdict(state),
                "config": dataclasses.asdict(cfg), "stats": data.stats, "image_size": data.image_size,
                "symmetry": dataclasses.asdict(data.symmetry), "rng": torch.get_rng_state(),
                "attempt_seconds": [*earlier, round(time.time() - start, 1)],  # the first run's, then each resume's
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    if resume_dir:
        run_dir = resume_dir
        check_same_data(run_dir, info["files"])
        state = restore_training(training, last, device)
        log(f"resuming {run_dir} after epoch {state.epoch}")
    else:
        run_dir, state = Path(cfg.out_dir), TrainState()
        if main_rank:  # config.json: the config, the data read, the environment, the code; resumable from step 1 on
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.optimizer}-{cfg.loss}"
            run_dir = fresh_directory(run_dir, name)
            environment = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                           "h5py": h5py.__version__, "device": str(device), "platform": platform.platform(),
                           "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
                           "world_size": str(distributed.world())}
            write_json(run_dir / "config.json", {"config": dataclasses.asdict(cfg), "data": info,
                                                 "environment": environment, "provenance": provenance()})
            save_torch(run_dir / "last.pt", saved(state))
    if distributed.world() > 1:  # identical weights on every rank, but each rank its own dropout masks
        torch.manual_seed(cfg.seed + 1_000_003 * (distributed.rank() + 1) + state.epoch)
    ranks = f" on each of {distributed.world()} processes" if distributed.world() > 1 else ""
    log(f"run folder: {run_dir}  ({sum(p.numel() for p in training.model.parameters()):,} parameters, "
        f"{device}, {training.steps_per_epoch} steps/epoch{ranks})")

    # the training loop: last.pt after every epoch, best.pt when validation improves
    def on_epoch(state: TrainState, improved: bool) -> None:
        if main_rank:
            payload = saved(state)
            if improved:
                save_torch(run_dir / "best.pt", payload)
            save_torch(run_dir / "last.pt", payload)
            write_metrics_csv(run_dir / "metrics.csv", state.history)

    def end(diverged: str = "") -> dict[str, Any]:
        return finish(run_dir, cfg, data, info, training.model, state, [*earlier, time.time() - start], diverged, log)

    try:
        try:
            fit(training, data, cfg, state, on_epoch, log, progress)
        except Diverged as e:  # predict from the best epoch when there is one
            if main_rank and (run_dir / "best.pt").exists():
                end(diverged=str(e))
                raise Diverged(f"{e}. Kept {run_dir}/best.pt (epoch {state.best_epoch}), predicted with it") from None
            raise Diverged(f"{e}. No epoch finished, so there is no checkpoint to predict with") from None
        return end() if main_rank else {"rank": distributed.rank(), "epochs_run": state.epoch}
    except Interrupted as e:  # also while the end of the run writes: last.pt is complete
        raise Interrupted(f"{e}; {run_dir}/last.pt holds epoch {state.epoch}. Resume with: "
                          f"python run_transformer.py --resume {run_dir}", e.signum) from None
    except NonFinitePredictions as e:  # the best epoch's model overflows on all views or on test
        where = f"the model of {run_dir}/best.pt (epoch {state.best_epoch}) overflows on validation views or test"
        raise Diverged(f"{overflow_message(e, where, cfg.lr)}. Kept best.pt, last.pt; no predictions written") from None
    except WriteFailed as e:  # a full disk: the files being replaced, last.pt among them, are still complete
        raise WriteFailed(f"{e}, then resume with: python run_transformer.py --resume {run_dir}") from None


def finished_line(run_dir: Path, cfg: Config, state: TrainState) -> str:
    """What --resume prints for a finished run whose summary.json was written, else ""."""
    try:
        written = json.loads((run_dir / "summary.json").read_text())["epochs_run"] == state.epoch
    except (OSError, ValueError, LookupError, TypeError):
        written = False
    if not written or state.epoch < cfg.epochs and state.epoch - state.best_epoch < cfg.patience:
        return ""
    how = "" if state.epoch >= cfg.epochs else ", stopped early: a larger --patience trains on"
    return (f"nothing to resume: {run_dir} finished after epoch {state.epoch} of {cfg.epochs} (best epoch "
            f"{state.best_epoch}{how}); its results are {run_dir}/report.md, summary.json and predictions.txt")


def main(argv: list[str] | None = None) -> int:
    """Train, resume or predict; exit codes as in train.exit_code."""
    def body() -> None:
        parser = Parser(description=__doc__, formatter_class=HelpFormatter)  # Config's flags, then the command modes
        add_config_flags(parser)
        modes = parser.add_argument_group("command modes (instead of training a new run)")
        one = modes.add_mutually_exclusive_group()
        one.add_argument("--resume", metavar="RUN_DIR", default="", help="continue the run in this folder from its "
                         "last.pt; of the flags above only these may change: "
                         + ", ".join(flag(name) for name in fields_with(CONTROL, EXECUTION)))
        one.add_argument("--predict", metavar="RUN_DIR", default="", help="classify --input with the best "
                         "checkpoint of this run folder")
        modes.add_argument("--input", metavar="FILE", default="", help="with --predict: the HDF5 file to classify")
        modes.add_argument("--output", metavar="FILE", default="", help="with --predict: where to write the 0/1 "
                           "predictions (a .csv of probabilities goes beside it; default: predictions-NAME.txt in "
                           "the run folder, NAME that of --input)")
        unset = object()  # argparse keeps it for every flag not typed: `typed` is what --resume applies
        namespace = argparse.Namespace(**{f.name: unset for f in dataclasses.fields(Config)})
        parsed = vars(parser.parse_args(sys.argv[1:] if argv is None else argv, namespace))
        command = argparse.Namespace(**{name: parsed.pop(name) for name in ("resume", "predict", "input", "output")})
        typed = {name: value for name, value in parsed.items() if value is not unset}
        if (command.input or command.output) and not command.predict:
            raise UserError("--input and --output go with --predict RUN_DIR (the run whose model classifies them)")
        if command.predict:
            predict_file(Path(command.predict), command.input, command.output, typed.get("device", Config.device))
        elif command.resume:
            run_dir = Path(command.resume)
            cfg, last = resume_config(run_dir, typed)
            done = finished_line(run_dir, cfg, TrainState(**last["train_state"]))
            if not done:
                run(cfg, resume_dir=run_dir, last=last)
            elif distributed.is_main():
                print(done)
        else:
            run(Config(**typed))
    return exit_code(body, lambda e: "" if "--resume" in str(e) else  # run's message says how to resume
                     "nothing to resume yet: run the same command again")


if __name__ == "__main__":
    sys.exit(main())
