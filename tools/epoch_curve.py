"""Test accuracy against the number of epochs of the default recipe, and what the cheap per-epoch validation
picks: for each schedule length and seed, one run whose every epoch is scored on validation with 2 views
(--epoch-views pair, what picks the best epoch) and with all views, and on test with all views.

    python -m tools.epoch_curve --epochs 4 5 6 --seeds 0 1 2 --out results/speed/epoch_curve.jsonl

Each finished (epochs, seed) appends one line to --out and is skipped when the command runs again, so an
interrupted curve resumes. Other flags are the default recipe's (`--loss smooth`), as run_transformer.py's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: runs from any folder

import torch

from cli import exit_code
from config import Config, Parser
from fileio import rounded
from data import load_data
from train import TrainState, build_training, epoch_views, evaluate, fit, pick_device, resolve_precision


def curve_run(cfg: Config, device: torch.device, data) -> dict:
    """Train cfg; every epoch's validation (pair and all views) and test (all views) scores."""
    torch.manual_seed(cfg.seed)
    training = build_training(cfg, len(data.stats["channels"]), data.image_size, len(data.x["train"]), device)
    rows: list[dict] = []

    def on_epoch(state: TrainState, improved: bool) -> None:
        val_all = evaluate(training.model, data.x["valid"], data.y["valid"], data.symmetry.views)
        test = evaluate(training.model, data.x["test"], data.y["test"], data.symmetry.views)
        rows.append(rounded({"epoch": state.epoch, "val_loss_pair": state.history[-1]["val_loss"],
                             "val_loss_all": val_all["loss"], "val_acc_all": val_all["acc"], "test_acc": test["acc"]}))

    start = time.time()
    fit(training, data, cfg, TrainState(), on_epoch, log=lambda m: None)
    best_pair = min(rows, key=lambda r: r["val_loss_pair"])
    best_all = min(rows, key=lambda r: r["val_loss_all"])
    return {"epochs": cfg.epochs, "seed": cfg.seed, "precision": cfg.precision, "dropout": cfg.dropout,
            "pool": cfg.pool, "heads": cfg.heads, "epoch_shifts": getattr(epoch_views(cfg, data), "shifts", 0),
            "best_epoch_pair": best_pair["epoch"], "best_epoch_all": best_all["epoch"],
            "test_acc_pair": best_pair["test_acc"], "test_acc_all": best_all["test_acc"],
            "train_s": round(time.time() - start, 1), "per_epoch": rows}


# What makes two curve runs the same, with the value rows written before a field was recorded had.
IDENTITY = {"epochs": None, "seed": None, "precision": None, "dropout": 0.1, "pool": "cls", "heads": 4}


def identity(row: dict) -> tuple:
    """The IDENTITY fields of a stored row or of a config's asdict."""
    return tuple(row.get(name, before) for name, before in IDENTITY.items())


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m tools.epoch_curve", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--out", type=Path, default=Path("results/speed/epoch_curve.jsonl"))
    args = parser.parse_args(argv)

    def body() -> None:
        device = pick_device("auto")
        base = resolve_precision(Config(loss="smooth", precision=args.precision), device)
        data, _ = load_data(base, device, print)
        done = set()
        if args.out.exists():
            rows = map(json.loads, args.out.read_text().splitlines())
            done = {identity(r) for r in rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for epochs in args.epochs:
            for seed in args.seeds:
                cfg = dataclasses.replace(base, epochs=epochs, seed=seed)
                if identity(dataclasses.asdict(cfg)) in done:
                    continue
                row = curve_run(cfg, device, data)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "per_epoch"}), flush=True)
    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
