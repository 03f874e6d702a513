"""Training throughput of the scientist's naive loop, ours and the default recipe, taking turns; --time-to-target:
the README's command to 83%, 96% validation and 98% test accuracy (commands and numbers: docs/speed.md)."""

import argparse
import dataclasses
import itertools
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: runs from any folder

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from config import Config, HelpFormatter, Parser, UserError, add_config_flags, checked, non_negative, parse_config
from data import SPLIT_FILES, DeviceData, load_data
from fileio import provenance
from train import (StopFlag, TrainState, build_model, build_scheduler, build_training, exit_code, fit, pick_device,
                   predict_logits, resolve_precision, train_epoch)


class HDF5Samples(Dataset):
    """One sample per __getitem__, read with h5py (opened in each DataLoader worker: handles do not survive fork)."""

    def __init__(self, path: Path, stats: dict, n: int):
        self.path, self.channels, self.h5, self.n = path, stats["channels"], None, n
        self.mean = np.asarray(stats["mean"], np.float32)[:, None, None]
        self.std = np.asarray(stats["std"], np.float32)[:, None, None]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.h5 = self.h5 or h5py.File(self.path, "r")
        x = np.stack([self.h5[c][i] for c in self.channels]).astype(np.float32)
        return torch.from_numpy((x - self.mean) / self.std), torch.tensor(float(self.h5["labels"][i][0]))


def naive_steps(cfg: Config, data_dir: Path, data: DeviceData, device: torch.device, workers: int) -> Callable[[], int]:
    """The scientist's loop, one step per call (returns 1)."""
    torch.manual_seed(cfg.seed)
    samples = HDF5Samples(data_dir / SPLIT_FILES["train"], data.stats, len(data.y["train"]))
    loader = DataLoader(samples, batch_size=64, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    model = build_model(cfg, len(data.stats["channels"]), data.image_size).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(dataclasses.replace(cfg, optimizer="adamw"), optimizer, len(loader))
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epochs back to back

    def step() -> int:
        xb, yb = (t.to(device) for t in next(batches))
        logits = model(xb).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss.item(), ((logits > 0).float() == yb).sum().item()  # the per-step host syncs of the original
        return 1
    return step


def our_steps(cfg: Config, data: DeviceData, device: torch.device, batches: int) -> Callable[[], int]:
    """train.train_epoch over the first `batches` batches of the resident set per call (0: all); returns their count."""
    torch.manual_seed(cfg.seed)
    n = len(data.x["train"])
    if cfg.batch_size > n:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the training set ({n} images)")
    training = build_training(cfg, len(data.stats["channels"]), data.image_size, n, device)
    if 0 < batches * cfg.batch_size < n:
        cut = batches * cfg.batch_size
        data = dataclasses.replace(data, x={**data.x, "train": data.x["train"][:cut]},
                                   y={**data.y, "train": data.y["train"][:cut]})
    epochs, stop = itertools.count(), StopFlag()

    def step() -> int:
        train_epoch(training, data, cfg, next(epochs), stop, False)
        return len(data.x["train"]) // cfg.batch_size
    return step


def throughput(args: argparse.Namespace) -> None:
    """One table: the naive loop, ours and the default recipe, in images per second."""
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    shared = {"device": args.device, "data_dir": args.data_dir, "compile": args.compile}
    cfg = Config(whiten=False, augment="off", tta="off", pool="cls", dropout=0.1, emb_dim=args.emb_dim,
                 depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim, **shared,
                 batch_size=args.batch_size or (4096 if cuda else 128),
                 precision=args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32"))
    recipe = resolve_precision(Config(loss="smooth", batch_size=args.batch_size or Config.batch_size,
                                      precision=args.precision, **shared), device)
    (data, info), (recipe_data, _) = (load_data(c, device, lambda message: None) for c in (cfg, recipe))
    where = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or 'CPU'}, " \
        f"{torch.get_num_threads()} threads"
    print(f"device: {device} ({where}) | torch {torch.__version__} | python {platform.python_version()} | data: "
          f"{info['source']}, {len(data.x['train']):,} training images", flush=True)
    batches = 0 if cuda else 16  # ours stops at the end of a train_epoch call: a whole epoch on CUDA
    compiled = f", torch.compile{' (CUDA graphs)' if cuda else ''}" if cfg.compile else ""
    recipe_label = (f"default recipe: ViT emb {recipe.emb_dim} depth {recipe.depth} heads {recipe.heads}, whitened, "
                    f"augmented, {recipe.optimizer.upper()}")
    styles = {  # the table's rows, the naive loop first: label -> (batch, precision, one timed call)
        f"naive: HDF5 Dataset + DataLoader ({args.workers} workers), .item()/step, AdamW":
            (64, "fp32", naive_steps(cfg, Path(info["data_dir"]), data, device, args.workers)),
        f"ours: resident tensors, 1 sync/epoch, {cfg.optimizer.upper()}{compiled}":
            (cfg.batch_size, cfg.precision, our_steps(cfg, data, device, batches)),
        recipe_label: (recipe.batch_size, recipe.precision, our_steps(recipe, recipe_data, device, batches))}
    for warm_ups, (_, _, step) in zip((5, 1, 1), styles.values()):  # DataLoader workers, compilation
        for _ in range(warm_ups):
            step()
    load, seconds, rounds = os.getloadavg()[0], args.seconds if args.seconds is not None else (3 if cuda else 8), \
        args.rounds or (1 if cuda else 3)
    totals = {name: [0, 0.0] for name in styles}  # [steps, seconds]; each style >= `seconds` per round (0: one call)
    for _ in range(rounds):
        for name, (_, _, step) in styles.items():
            torch.cuda.synchronize(device) if cuda else None
            start, done = time.perf_counter(), step()
            while time.perf_counter() - start < seconds:
                done += step()
            torch.cuda.synchronize(device) if cuda else None
            totals[name][0] += done
            totals[name][1] += time.perf_counter() - start
    print(f"timed: {rounds} rounds of >= {seconds:g} s per style, taking turns; load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (on {os.cpu_count()} CPUs)")
    print(f"{'style':<76} {'batch':>6} {'prec':>5} {'steps':>6} {'img/s':>11} {'ratio':>8}")
    base = None
    for (style, (batch, precision, _)), (steps, took) in zip(styles.items(), totals.values()):
        img_s = steps * batch / took
        base = base or img_s
        print(f"{style:<76} {batch:>6} {precision:>5} {steps:>6} {img_s:>11,.0f} {img_s / base:>7.2f}x")


class TargetReached(Exception):
    pass


def time_to_target(cfg: Config, targets: list[float], recipe: str, test_target: float) -> None:
    """Training time (validation included, test scoring not) until validation accuracy reaches each target."""
    device = pick_device(cfg.device)
    cfg = resolve_precision(cfg, device)
    torch.manual_seed(cfg.seed)  # as run_transformer.run does
    t0 = time.perf_counter()
    data, info = load_data(cfg, device, lambda message: None)
    load_s = time.perf_counter() - t0
    training = build_training(cfg, len(info["channels"]), data.image_size, len(data.x["train"]), device)
    tested = test_target > 0 and data.y["test"] is not None
    pending = [("validation", t) for t in sorted(targets)] + ([("test", test_target)] if tested else [])
    print(f"time to {', '.join(f'{t:.0%} {kind}' for kind, t in pending)} accuracy: {recipe} ({cfg.model}, "
          f"{cfg.optimizer}, {cfg.loss}, batch {cfg.batch_size}, {cfg.precision}, up to {cfg.epochs} epochs) on "
          f"{info['source']} data {info['sizes']}, {device}; data loading {load_s:.1f} s")
    clock = {"start": time.perf_counter(), "paused": 0.0}

    def on_epoch(state: TrainState, improved: bool) -> None:
        row, elapsed = state.history[-1], time.perf_counter() - clock["start"] - clock["paused"]
        reached = {"validation": row["val_acc"]}
        if tested:  # scored off the clock
            paused = time.perf_counter()
            right = (predict_logits(training.model, data.x["test"], data.symmetry) > 0).float() == data.y["test"]
            reached["test"] = float(right.float().mean())
            clock["paused"] += time.perf_counter() - paused
        test = f"  test acc {reached['test']:.4f}" if tested else ""
        print(f"  epoch {row['epoch']:3d}  {elapsed:8.1f} s  train acc {row['train_acc']:.4f}  "
              f"val acc {row['val_acc']:.4f}  val loss {row['val_loss']:.4f}{test}", flush=True)
        for kind, target in [(k, t) for k, t in pending if reached[k] >= t]:
            pending.remove((kind, target))
            print(f"time to {target:.0%} {kind}: reached {reached[kind]:.4f} at epoch {row['epoch']} after "
                  f"{elapsed:.1f} s of training, {elapsed + load_s:.1f} s with data loading", flush=True)
        if not pending:
            raise TargetReached

    try:
        state = fit(training, data, cfg, TrainState(), on_epoch, log=lambda message: None)
    except TargetReached:
        return
    print(f"time to {', '.join(f'{t:.0%} {kind}' for kind, t in pending)}: not reached in {state.epoch} epochs "
          f"({time.perf_counter() - clock['start'] - clock['paused']:.1f} s); best validation accuracy "
          f"{max(r['val_acc'] for r in state.history):.4f}")


def command(argv: list[str] | None) -> None:
    p = Parser(prog="python -m tools.bench", description=__doc__, formatter_class=HelpFormatter)
    add_config_flags(p, ("device", "data_dir", "emb_dim", "depth", "heads", "mlp_dim", "batch_size", "precision",
                         "compile"), {"emb_dim": 64, "depth": 3, "heads": 4, "mlp_dim": 128, "batch_size": None},
                     {"batch_size": "here: 4096 on CUDA and 128 on CPU unless given",
                      "precision": "here auto: bf16 on CUDA, fp32 on CPU for the loop rows (the naive one is fp32)"})
    count = lambda name: checked(int, name, non_negative)  # noqa: E731
    p.add_argument("--seconds", type=checked(float, "seconds", non_negative), default=None,
                   help="timed seconds per style and round (default 3 on CUDA, 8 on CPU; 0: one call each)")
    p.add_argument("--rounds", type=count("rounds"), default=0, help="turns per style (0: 1 on CUDA, 3 on CPU)")
    p.add_argument("--workers", type=count("workers"), default=2, help="DataLoader workers of the naive loop")
    p.add_argument("--time-to-target", action="store_true", help="instead: time --recipe to the targets")
    p.add_argument("--target", type=checked(float, "target", (lambda x: 0 < x <= 1, "must be in (0, 1]")), nargs="+",
                   default=[0.83, 0.96], help="validation accuracies to time")
    p.add_argument("--test-target", type=checked(float, "test_target", non_negative), default=0.98,
                   help="test accuracy to time (all test-time views, answer key), 0: none")
    p.add_argument("--recipe", default="--loss smooth", help="run_transformer flags timed (the README's command)")
    args = p.parse_args(argv)
    print("provenance:", provenance(None if argv is None else [__file__, *argv]))
    if not args.time_to_target:
        return throughput(args)
    recipe = ["--device", args.device, "--data-dir", args.data_dir, *shlex.split(args.recipe)]
    time_to_target(parse_config(recipe), args.target, f"recipe {args.recipe!r}", args.test_target)


def main(argv: list[str] | None = None) -> int:
    """Exit codes as in train.exit_code."""
    return exit_code(lambda: command(argv))


if __name__ == "__main__":
    sys.exit(main())
