"""Train the gas classifier and write a complete, never-overwritten run folder.

    python run_transformer.py --loss smooth                 # train (built-in benchmark when data/ is empty)
    python run_transformer.py --resume runs/RUN             # continue an interrupted run
    python run_transformer.py --predict runs/RUN --input new.hdf5 --output new_predictions.txt
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np
import torch

import distributed
import synthetic
from config import Config, UserError, build_parser, config_from_dict
from data import (ANSWER_FILE, SPLIT_FILES, choose_channels, find_confounders, load_splits, read_answer_key,
                  read_split, to_device, to_tensor)
from fileio import check_writable, fingerprint, fresh_directory, save_torch, write_json
from report import plot_curves, write_metrics_csv, write_predictions, write_probabilities
from train import (Diverged, Interrupted, TrainState, build_model, build_optimizer, build_scheduler, evaluate,
                   fit, pick_device, predict_proba, signal_name, tta_shifts)

Log = Callable[[str], None]


# ---- data ------------------------------------------------------------------------------------------------

def resolve_data_dir(cfg: Config, log: Log) -> tuple[Path, str]:
    """The real files when --data-dir has train.hdf5, else the built-in benchmark (generated on first use)."""
    data_dir = Path(cfg.data_dir)
    if (data_dir / SPLIT_FILES["train"]).exists():
        return data_dir, "real"
    present = [f for f in SPLIT_FILES.values() if (data_dir / f).exists()]
    if present:
        raise UserError(f"{data_dir} has {', '.join(present)} but no {SPLIT_FILES['train']}; add it, or point "
                        f"--data-dir at the folder with all three split files")
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir} is a file; pass the folder that holds {SPLIT_FILES['train']}")
    if not data_dir.exists() and cfg.data_dir != Config.data_dir:  # a typo must not summon synthetic data
        raise UserError(f"data folder {data_dir} does not exist; pass --data-dir with the HDF5 files (an empty "
                        f"folder gets the built-in synthetic benchmark)")
    # one folder per generator seed: runs of different seeds never rewrite each other's (fingerprinted) data
    bench = data_dir / ("synthetic" if cfg.synthetic_seed == 0 else f"synthetic-seed{cfg.synthetic_seed}")
    log(f"no {SPLIT_FILES['train']} in {data_dir}/: using the built-in synthetic benchmark in {bench}/")
    return synthetic.ensure_benchmark(bench, cfg.synthetic_seed), "synthetic"


def bayes_limit(splits: dict, test_labels: np.ndarray | None) -> dict[str, float]:
    """Accuracy of the exact likelihood-ratio classifier on each split of the built-in benchmark."""
    labels = {"train": splits["train"].labels, "valid": splits["valid"].labels, "test": test_labels}
    return {name: float((synthetic.bayes_predict(splits[name].channels["density"]) == y).mean())
            for name, y in labels.items() if y is not None}


def load_data(cfg: Config, device: torch.device, log: Log, stats: dict | None = None):
    """Read, check and move the data; returns (DeviceData, info for config.json and the summary)."""
    data_dir, source = resolve_data_dir(cfg, log)
    splits = load_splits(data_dir)
    confounders = find_confounders(splits)
    channels = stats["channels"] if stats else choose_channels(cfg.channels, confounders, log)
    test_labels = read_answer_key(data_dir, len(splits["test"]))
    # augmentation and view averaging need a whitening filter that commutes with the symmetries they use
    data = to_device(splits, channels, device, test_labels, cfg.whiten, stats, symmetric=cfg.augment or cfg.tta)
    info = {"data_dir": str(data_dir), "source": source, "channels": channels, "confounders": confounders,
            "files": {name: fingerprint(data_dir / f) for name, f in SPLIT_FILES.items()},
            "sizes": {name: len(s) for name, s in splits.items()}}
    if test_labels is not None:  # the answer key behind the test metrics is data this run used, too
        info["files"]["test_answers"] = fingerprint(data_dir / ANSWER_FILE)
    if source == "synthetic":
        info["bayes_accuracy"] = bayes_limit(splits, test_labels)
    return data, info


# ---- checkpoints -----------------------------------------------------------------------------------------

def checkpoint(model, optimizer, scheduler, state: TrainState, cfg: Config, data) -> dict[str, Any]:
    """Everything needed to resume exactly, or to predict without the training data."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "train_state": dataclasses.asdict(state),
            "config": dataclasses.asdict(cfg), "stats": data.stats, "image_size": data.image_size,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found; pass a run folder written by run_transformer.py")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before failing: one line is enough
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(f"{path} is not a checkpoint written by run_transformer.py (or it is damaged)")
    if not isinstance(payload, dict) or not {"model", "config", "stats"} <= payload.keys():
        raise UserError(f"{path} is not a checkpoint written by run_transformer.py")
    return payload


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


def run(cfg: Config, log: Log = print, progress: bool | None = None, resume_from: dict | None = None
        ) -> dict[str, Any]:
    """Train one configuration end to end and write its run folder; returns the summary."""
    start = time.time()
    progress = sys.stderr.isatty() if progress is None else progress
    device = distributed.setup(pick_device(cfg.device), cfg.sync_bn)  # torchrun: join the group
    main_rank = distributed.is_main()
    if not main_rank:  # rank 0 alone prints and writes
        log, progress = (lambda message: None), False
    if main_rank:
        check_predictions_path(Path(cfg.predictions))
    torch.manual_seed(cfg.seed)
    with distributed.main_first():  # rank 0 generates the built-in benchmark before the others read it
        data, info = load_data(cfg, device, log, resume_from["stats"] if resume_from else None)
    if len(data.x["train"]) < distributed.world():
        raise UserError(f"{len(data.x['train'])} training samples cannot be split over {distributed.world()} "
                        f"processes; use fewer processes")
    model = build_model(cfg, len(info["channels"]), data.image_size).to(device)
    steps_per_epoch = max(len(data.x["train"]) // (cfg.batch_size * distributed.world()), 1)
    optimizer = build_optimizer(cfg, model, device)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    state = TrainState()
    if resume_from:
        run_dir = Path(cfg.resume)
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        state = TrainState(**resume_from["train_state"])
        torch.set_rng_state(resume_from["rng"])
        if resume_from["cuda_rng"] and device.type == "cuda":
            torch.cuda.set_rng_state_all(resume_from["cuda_rng"])
        log(f"resuming {run_dir} after epoch {state.epoch}")
    elif not main_rank:
        run_dir = Path(cfg.out_dir)  # never written: only rank 0 creates a run folder
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = fresh_directory(cfg.out_dir, f"{stamp}-{cfg.model}-{cfg.optimizer}-{cfg.loss}")
        write_json(run_dir / "config.json", {"config": dataclasses.asdict(cfg), "data": info,
                                             "environment": environment(device)})
    if distributed.world() > 1:  # identical weights on every rank, but each rank its own dropout masks
        torch.manual_seed(cfg.seed + 1_000_003 * (distributed.rank() + 1) + state.epoch)
    log(f"run folder: {run_dir}  ({sum(p.numel() for p in model.parameters()):,} parameters, {device}, "
        f"{steps_per_epoch} steps/epoch" + (f" on each of {distributed.world()} processes" if
                                            distributed.world() > 1 else "") + ")")

    def on_epoch(st: TrainState, improved: bool) -> None:
        if not main_rank:
            return
        payload = checkpoint(model, optimizer, scheduler, st, cfg, data)
        if improved:
            save_torch(run_dir / "best.pt", payload)
        save_torch(run_dir / "last.pt", payload)
        write_metrics_csv(run_dir / "metrics.csv", st.history)

    if not resume_from and main_rank:
        save_torch(run_dir / "last.pt", checkpoint(model, optimizer, scheduler, state, cfg, data))
    try:
        try:
            fit(model, optimizer, scheduler, data, cfg, state, on_epoch, log, progress)
        except Diverged as e:
            if not main_rank:
                raise
            if not (run_dir / "best.pt").exists():
                raise Diverged(f"{e}. No epoch finished, so there is no checkpoint to predict with") from None
            finish(run_dir, model, cfg, data, info, state, start, log, diverged=str(e))
            raise Diverged(f"{e}. Kept {run_dir}/best.pt (epoch {state.best_epoch}) and wrote the predictions "
                           f"from it") from None
        if not main_rank:
            return {"rank": distributed.rank(), "epochs_run": state.epoch}
        return finish(run_dir, model, cfg, data, info, state, start, log)
    except Interrupted as e:
        raise ResumableInterrupt(f"{e}; {run_dir}/last.pt holds epoch {state.epoch}. Resume with: "
                                 f"python run_transformer.py --resume {run_dir}", e.signum) from None


def finish(run_dir: Path, model, cfg: Config, data, info: dict, state: TrainState, start: float, log: Log,
           diverged: str = "") -> dict[str, Any]:
    """Restore the best checkpoint, predict the test set, and write the curves and summary."""
    best = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best["model"])
    final = state.history[-1] if state.history else {}
    best_row = state.history[best["train_state"]["epoch"] - 1]
    probs = predict_proba(model, data.x["test"], tta_shifts(cfg)).cpu().numpy()
    write_predictions(run_dir / "predictions.txt", probs)
    write_probabilities(run_dir / "test_probabilities.csv", probs)
    write_predictions(cfg.predictions, probs)
    plot_curves(run_dir / "curves.png", state.history, f"{cfg.model} {cfg.optimizer} {cfg.loss} "
                f"channels={','.join(info['channels'])}")
    summary = {"run_dir": str(run_dir), "data_source": info["source"], "channels": info["channels"],
               "epochs_run": state.epoch, "best_epoch": state.best_epoch, "best_val_loss": state.best_loss,
               "val_acc": best_row["val_acc"], "val_auc": best_row["val_auc"],
               "final_train_loss": final.get("train_loss"), "final_train_acc": final.get("train_acc"),
               "final_gap_acc": final.get("gap_acc"), "wall_time_s": round(time.time() - start, 1),
               "diverged": diverged}
    if data.y["test"] is not None:
        test = evaluate(model, data.x["test"], data.y["test"], tta_shifts(cfg))
        summary.update({"test_acc": test["acc"], "test_auc": test["auc"], "test_loss": test["loss"]})
    if "bayes_accuracy" in info:
        summary["bayes_accuracy"] = info["bayes_accuracy"]
    write_json(run_dir / "summary.json", summary)
    log(f"best epoch {state.best_epoch}: val acc {summary['val_acc']:.4f} auc {summary['val_auc']:.4f}"
        + (f" | test acc {summary['test_acc']:.4f}" if "test_acc" in summary else "")
        + (f" vs Bayes limit {info['bayes_accuracy']['test']:.4f}" if "bayes_accuracy" in info else "")
        + f" | predictions: {run_dir}/predictions.txt and {cfg.predictions}")
    if learned_nothing(summary, data.y["valid"]):
        log(nothing_learned_hint(cfg))
    return summary


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


# ---- resume and predict ----------------------------------------------------------------------------------

def explicit_flags(argv: list[str]) -> dict[str, Any]:
    """The options the user actually typed (defaults suppressed), as Config field names."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


# Stored in the optimizer and scheduler state: a resumed run would silently ignore a new value.
OPTIMIZER_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "warmup_epochs", "batch_size", "epochs")
# Where and on what a resumed run writes, and how patient it is: safe to change. Anything else (loss, seed,
# data, channels, dropout, precision, ...) would make the second half a different experiment.
RESUMABLE_CHANGES = ("patience", "out_dir", "predictions", "device", "compile", "sync_bn", "resume", "predict",
                     "input", "output")


def resume_config(run_dir: Path, typed: dict[str, Any]) -> tuple[Config, dict]:
    """The saved config with the flags typed now; refuses flags that would change the experiment."""
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir} is not a run folder; pass a folder written by run_transformer.py")
    payload = load_checkpoint(run_dir / "last.pt")
    missing = sorted({"optimizer", "scheduler", "train_state", "rng", "cuda_rng"} - payload.keys())
    try:
        if missing:
            raise TypeError(f"no {', '.join(missing)}")
        saved = config_from_dict(payload["config"])
        TrainState(**payload["train_state"])
    except (TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{run_dir}/last.pt cannot be resumed ({e}); it is damaged or was not written by "
                        f"run_transformer.py") from None
    asked = dataclasses.replace(saved, **typed)
    model = tuple(saved.model_fields())
    other = tuple(f.name for f in dataclasses.fields(Config)
                  if f.name not in (*model, *OPTIMIZER_FIELDS, *RESUMABLE_CHANGES))
    for kind, fields in (("model settings", model), ("optimizer settings", OPTIMIZER_FIELDS),
                         ("training settings", other)):
        diff = {k: (getattr(saved, k), getattr(asked, k)) for k in fields if getattr(asked, k) != getattr(saved, k)}
        if diff:
            names = ", ".join(f"--{k.replace('_', '-')}: checkpoint {a!r} vs requested {b!r}"
                              for k, (a, b) in diff.items())
            raise UserError(f"cannot resume {run_dir}: the {kind} differ ({names}); drop those flags, or start "
                            f"a new run with them")
    return asked, payload


def predict_file(cfg: Config, log: Log = print) -> Path:
    """Classify --input with the best checkpoint of --predict RUN_DIR; writes 0/1 lines and a probability CSV."""
    if not cfg.input:
        raise UserError("--predict needs --input FILE.hdf5, the measurements to classify")
    run_dir, source = Path(cfg.predict), Path(cfg.input)
    payload = load_checkpoint(run_dir / "best.pt")
    saved = config_from_dict(payload["config"])
    stats = payload["stats"]
    output = Path(cfg.output) if cfg.output else run_dir / f"predictions-{source.stem}.txt"
    csv_path = output.with_suffix(".csv")
    if csv_path == output or output.is_dir() or str(cfg.output).endswith(("/", "\\")):
        raise UserError(f"--output {cfg.output} must name a new text file such as predictions.txt (the "
                        f"probabilities go to a .csv beside it)")
    for path in (output, csv_path):
        if path.exists():
            raise UserError(f"{path} already exists; choose another --output (nothing was overwritten)")
    split = read_split(source, "input", tuple(stats["channels"]), labelled=False)
    if split.channels[stats["channels"][0]].shape[-1] != payload["image_size"]:
        raise UserError(f"{source} has {split.channels[stats['channels'][0]].shape[-1]}-pixel grids but the "
                        f"model was trained on {payload['image_size']}")
    device = pick_device(cfg.device)
    model = build_model(saved, len(stats["channels"]), payload["image_size"]).to(device)
    model.load_state_dict(payload["model"])
    probs = predict_proba(model, to_tensor(split, stats, device), tta_shifts(saved)).cpu().numpy()
    write_predictions(output, probs)
    write_probabilities(csv_path, probs)
    log(f"{len(probs)} predictions ({int((probs > 0.5).sum())} new state) -> {output} and {csv_path}")
    return output


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted at once (no traceback, atomic writes leave no partial file) while
    data is read or generated and results are written; during training fit's StopFlag takes over."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handle(signum: int, frame) -> None:
        raise Interrupted(signal_name(signum), signum)
    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (one line), 3 diverged, 128 + signal number when interrupted."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        typed = explicit_flags(argv)
        cfg = Config(**{**dataclasses.asdict(Config()), **typed})
        with signals_interrupt():
            if cfg.predict:
                predict_file(cfg)
                return 0
            if cfg.resume:
                cfg, payload = resume_config(Path(cfg.resume), typed)
                run(cfg, resume_from=payload)
            else:
                run(cfg)
        return 0
    except UserError as e:  # printed by every rank that hits it: another rank may not know
        prefix = "" if distributed.is_main() else f"[rank {distributed.rank()}] "
        print(f"{prefix}error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        if distributed.is_main():
            print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        if distributed.is_main():
            hint = "" if isinstance(e, ResumableInterrupt) else "; nothing to resume yet: run the same command again"
            print(f"interrupted: {e}{hint}", file=sys.stderr)
        return 128 + int(e.signum)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
