"""Training throughput: the scientist's per-sample HDF5 + DataLoader loop against ours, same model and data.

    python -m tools.bench                                   # CPU (CUDA when available): img/s, ratio, FLOPs
    python -m tools.bench --device cuda --batch-size 4096 --precision bf16 --compile
    python -m tools.bench --time-to-target    # wall time of the README's command to 83%, 96% val and 98% test accuracy
    python -m tools.bench --time-to-target --recipe "--optimizer adamw --lr 1e-3"

A benchmark, not a test: it prints what it measured. (a) "original": a torch Dataset that reads every sample
from the HDF5 file with h5py, a DataLoader (batch 64, 2 workers), `.item()` after every step, AdamW with a
LambdaLR warmup-cosine schedule, the model as vision_transformer.py builds it (nn.Dropout, as the scientist's
had). (b) "ours": train.train_epoch on train.build_training's setup, as run_transformer trains: device-resident
tensors (one permutation per epoch on the device, one host sync per epoch), optionally compiled. Both train
the same architecture on the same images; throughput is timed after warm-up steps (DataLoader start-up,
compilation). The original runs this repository's model file (its CUDA attention
kernel choice included), so the ratio leaves out whatever that gains over the scientist's own code.

The flags shared with run_transformer.py come from config.py; the bench's own ViT is wider and shallower
(emb 64, depth 3, mlp 128: the model docs/speed.md measured); --emb-dim 32 --depth 4 --mlp-dim 64 times the
default recipe's.
"""
from __future__ import annotations

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
from torch.utils.flop_counter import FlopCounterMode

import data as data_io
from fileio import provenance, provenance_line
from cli import exit_code
from config import Config, HelpFormatter, Parser, UserError, add_config_flags, checked, non_negative, parse_config
from data import SPLIT_FILES, DeviceData
from train import (StopFlag, TrainState, build_model, build_scheduler, build_training, evaluate, fit, pick_device,
                   resolve_precision, train_epoch)


# ---- (a) the original style -------------------------------------------------------------------------------

class HDF5Samples(Dataset):
    """One sample per __getitem__, read from the HDF5 file with h5py: how the scientist's script loads data.

    The file is opened lazily in each DataLoader worker (h5py handles do not survive fork).
    """

    def __init__(self, path: Path, stats: dict):
        self.path, self.channels = path, stats["channels"]
        self.mean = np.asarray(stats["mean"], np.float32)[:, None, None]
        self.std = np.asarray(stats["std"], np.float32)[:, None, None]
        with h5py.File(path, "r") as h5:
            self.n = len(h5["labels"])
        self.h5 = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.h5 is None:
            self.h5 = h5py.File(self.path, "r")
        x = np.stack([self.h5[c][i] for c in self.channels]).astype(np.float32)
        y = float(self.h5["labels"][i][0])
        return torch.from_numpy((x - self.mean) / self.std), torch.tensor(y)


# A timer trains for `steps` steps (when > 0) or else for at least `seconds`; returns (steps, wall seconds).
Timer = Callable[[int, float], tuple[int, float]]


def enough(done: int, start: float, steps: int, seconds: float) -> bool:
    return done >= steps if steps > 0 else time.perf_counter() - start >= seconds


def original_loop(cfg: Config, data_dir: Path, stats: dict, image_size: int, device: torch.device,
                  warmup: int, workers: int) -> Timer:
    """The per-sample DataLoader loop, batch 64, .item() every step, AdamW + LambdaLR, the model as built
    (nn.Dropout), warmed up."""
    torch.manual_seed(cfg.seed)
    loader = DataLoader(HDF5Samples(data_dir / SPLIT_FILES["train"], stats), batch_size=64, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    model = build_model(cfg, len(stats["channels"]), image_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(dataclasses.replace(cfg, optimizer="adamw"), optimizer, len(loader))
    model.train()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epochs back to back
    totals = {"loss": 0.0, "correct": 0}

    def run(steps: int, seconds: float) -> tuple[int, float]:
        start, done = time.perf_counter(), 0  # the previous step's .item() already waited for the device
        while not enough(done, start, steps, seconds):
            xb, yb = next(batches)
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            totals["loss"] += loss.item()
            totals["correct"] += ((logits > 0).float() == yb).sum().item()
            done += 1
        return done, time.perf_counter() - start

    run(warmup, 0.0)  # worker start-up and first batches
    return run


# ---- (b) our loop -----------------------------------------------------------------------------------------

def training_images(data: DeviceData, n: int) -> DeviceData:
    """`data` with its training split cut to the first n images (n <= len), all on the same device."""
    x, y = dict(data.x), dict(data.y)
    x["train"], y["train"] = data.x["train"][:n], data.y["train"][:n]
    return dataclasses.replace(data, x=x, y=y)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def our_loop(cfg: Config, data: DeviceData, device: torch.device, chunk: int, warmup: int) -> Timer:
    """train.train_epoch itself, over the whole resident training set (chunk = 0) or over its first `chunk`
    batches, so that a timer can stop between calls; warmed up (and compiled when asked) with `warmup` steps."""
    torch.manual_seed(cfg.seed)
    bs, n = cfg.batch_size, len(data.x["train"])
    if bs > n:
        raise UserError(f"--batch-size {bs} is larger than the training set ({n} images)")
    training = build_training(cfg, len(data.stats["channels"]), data.image_size, n, device)
    stop = StopFlag()

    def epoch(d: DeviceData, e: int) -> int:
        train_epoch(training, d, cfg, e, stop, False)
        return len(d.x["train"]) // bs

    timed = training_images(data, chunk * bs) if 0 < chunk * bs < n else data
    epochs = itertools.count()

    def run(steps: int, seconds: float) -> tuple[int, float]:
        sync(device)
        start, done = time.perf_counter(), 0
        while not enough(done, start, steps, seconds):
            done += epoch(timed, next(epochs))
        sync(device)
        return done, time.perf_counter() - start

    epoch(training_images(data, min(warmup, n // bs) * bs), next(epochs))
    return run


def flops_per_image(cfg: Config, in_channels: int, image_size: int) -> float:
    """FLOPs of one training step (forward + backward) per image, counted by FlopCounterMode on CPU."""
    model = build_model(cfg, in_channels, image_size)
    x = torch.randn(8, in_channels, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / len(x)


def measure(timers: dict[str, Timer], steps: int, seconds: float, rounds: int) -> dict[str, list[int | float]]:
    """Steps and seconds per style, the styles taking turns `rounds` times: on a shared machine both see
    the same load."""
    totals = {name: [0, 0.0] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            done, took = timer(steps, seconds)
            totals[name][0] += done
            totals[name][1] += took
    return totals


def print_table(rows: list[dict], flops: float) -> None:
    base = rows[0]["img_s"]
    print(f"{'style':<72} {'batch':>6} {'prec':>5} {'steps':>6} {'img/s':>11} {'ratio':>8} {'GFLOP/s':>9}")
    for r in rows:
        print(f"{r['style']:<72} {r['batch']:>6} {r['precision']:>5} {r['steps']:>6} {r['img_s']:>11,.0f} "
              f"{r['img_s'] / base:>7.2f}x {r['img_s'] * r.get('flops', flops) / 1e9:>9,.1f}")


# ---- time to the scientist's target ------------------------------------------------------------------------

class TargetReached(Exception):
    pass


def time_to_target(cfg: Config, targets: list[float], recipe: str = "default recipe", test_target: float = 0.0
                   ) -> None:
    """Train the recipe `cfg` (run_transformer's defaults unless --recipe changes them) and report the wall time
    until the validation accuracy (as fit scores it after each epoch) first reaches each of `targets`, and the
    test accuracy (all test-time views, as the run reports it) reaches `test_target`. Training time counts from
    the first step, with the per-epoch validation included and the test scoring, which a run does only once at
    its end, left out of the clock. Stops when every target is reached."""
    device = pick_device(cfg.device)
    cfg = resolve_precision(cfg, device)
    torch.manual_seed(cfg.seed)  # as run_transformer.run does
    t0 = time.perf_counter()
    data, info = data_io.load_data(cfg, device, lambda message: None)
    load_s = time.perf_counter() - t0
    training = build_training(cfg, len(info["channels"]), data.image_size, len(data.x["train"]), device)
    goals = ", ".join(f"{t:.0%}" for t in targets) + " validation" + (
        f" and {test_target:.0%} test" if test_target and data.y["test"] is not None else "")
    print(f"time to {goals} accuracy: {recipe} ({cfg.model}, {cfg.optimizer}, {cfg.loss}, "
          f"batch {cfg.batch_size}, {cfg.precision}, up to {cfg.epochs} epochs) on {info['source']} data "
          f"{info['sizes']}, channels {','.join(info['channels'])}, {device}; data loading {load_s:.1f} s")
    pending = sorted(targets)
    test_pending = test_target > 0 and data.y["test"] is not None
    clock = {"start": time.perf_counter(), "paused": 0.0}

    def on_epoch(state: TrainState, improved: bool) -> None:
        nonlocal test_pending
        row, elapsed = state.history[-1], time.perf_counter() - clock["start"] - clock["paused"]
        test = ""
        if test_pending:
            paused = time.perf_counter()
            test_acc = evaluate(training.model, data.x["test"], data.y["test"], data.symmetry.views)["acc"]
            clock["paused"] += time.perf_counter() - paused
            test = f"  test acc {test_acc:.4f}"
        print(f"  epoch {row['epoch']:3d}  {elapsed:8.1f} s  train acc {row['train_acc']:.4f}  "
              f"val acc {row['val_acc']:.4f}  val loss {row['val_loss']:.4f}{test}", flush=True)
        while pending and row["val_acc"] >= pending[0]:
            print(f"time to {pending.pop(0):.0%} validation: reached {row['val_acc']:.4f} at epoch {row['epoch']} "
                  f"after {elapsed:.1f} s of training ({elapsed / row['epoch']:.1f} s/epoch)", flush=True)
        if test_pending and test_acc >= test_target:
            test_pending = False
            print(f"time to {test_target:.0%} test: reached {test_acc:.4f} at epoch {row['epoch']} after "
                  f"{elapsed:.1f} s of training, {elapsed + load_s:.1f} s with data loading", flush=True)
        if not pending and not test_pending:
            raise TargetReached

    try:
        state = fit(training, data, cfg, TrainState(), on_epoch, log=lambda message: None)
    except TargetReached:
        return
    missed = [f"{t:.0%} validation" for t in pending] + ([f"{test_target:.0%} test"] if test_pending else [])
    best = max(r["val_acc"] for r in state.history)
    print(f"time to {', '.join(missed)}: not reached in {state.epoch} epochs "
          f"({time.perf_counter() - clock['start'] - clock['paused']:.1f} s); best validation accuracy {best:.4f}")


# ---- command line -----------------------------------------------------------------------------------------

def accuracies(text: str) -> list[float]:
    """--target: comma-separated accuracies in (0, 1]."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of accuracies in (0, 1] such as 0.83,0.96")
    return values


# The bench's own ViT and per-device defaults (None: chosen per device in main); the rest as run_transformer.
BENCH_DEFAULTS = {"emb_dim": 64, "depth": 3, "heads": 4, "mlp_dim": 128, "batch_size": None}
BENCH_NOTES = {"batch_size": "our loop's batch; here 4096 on CUDA and 128 on CPU unless given (128 also fits "
               "the CPU caches best)",
               "precision": "our loops; auto: bf16 on CUDA, and fp32 on CPU for the loop rows (the original is fp32) "
               "and the run's own choice for the default-recipe row",
               "optimizer": "here: for our loop (the original trains with AdamW)",
               "data_dir": "train.hdf5 here, else the built-in benchmark in DATA_DIR/synthetic"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m tools.bench", description=__doc__, formatter_class=HelpFormatter)
    add_config_flags(p, ("device", "data_dir", "optimizer", "emb_dim", "depth", "heads", "mlp_dim", "batch_size",
                         "precision", "compile"), BENCH_DEFAULTS, BENCH_NOTES)
    count = lambda name: checked(int, name, non_negative)  # noqa: E731
    p.add_argument("--seconds", type=checked(float, "seconds", non_negative), default=0.0, help="timed seconds "
                   "per style and round (0: 3 CUDA, 8 CPU); our loop stops at the end of a train_epoch call "
                   "(CUDA: a whole epoch)")
    p.add_argument("--steps", type=count("steps"), default=0,
                   help="instead of --seconds: timed steps per style and round")
    p.add_argument("--warmup", type=count("warmup"), default=0,
                   help="our untimed steps first, compilation included (0: 30 CUDA, 4 CPU)")
    p.add_argument("--rounds", type=count("rounds"), default=0, help="the styles take turns this often (0: 1 "
                   "CUDA, 3 CPU): a shared machine's load then falls on both alike")
    p.add_argument("--threads", type=count("threads"), default=0, help="torch threads of the training process, "
                   "both styles (0: torch's choice). On a CPU shared with other jobs, 1 avoids OpenMP threads "
                   "waiting for each other at every operation")
    p.add_argument("--workers", type=count("workers"), default=2, help="DataLoader workers of the original style")
    p.add_argument("--time-to-target", action="store_true", help="instead: time the default recipe "
                   "(run_transformer's defaults, --device and --data-dir honoured) to --target validation accuracy")
    p.add_argument("--target", type=accuracies, default="0.83,0.96",
                   help="validation accuracies to time, comma separated")
    p.add_argument("--test-target", type=checked(float, "test_target", non_negative), default=0.98,
                   help="test accuracy to time (all test-time views; the built-in benchmark's answer key), 0: none")
    p.add_argument("--recipe", default="--loss smooth", help="with --time-to-target: the run_transformer flags "
                   "of the recipe timed (the README's command by default), e.g. --recipe '--optimizer adamw --lr 1e-3'")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit codes as in cli.exit_code."""
    def body() -> None:
        args = parse_args(argv)
        print(provenance_line(provenance(None if argv is None else [__file__, *argv])))
        if args.threads:
            torch.set_num_threads(args.threads)
        time_to_target_command(args) if args.time_to_target else throughput(args)
    return exit_code(body)


def time_to_target_command(args: argparse.Namespace) -> None:
    recipe = ["--device", args.device, "--data-dir", args.data_dir, *shlex.split(args.recipe)]
    time_to_target(parse_config(recipe), args.target, f"recipe {args.recipe!r}", args.test_target)


def throughput(args: argparse.Namespace) -> None:
    """The original style against ours: one table."""
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    args.rounds = args.rounds or (1 if cuda else 3)
    # Raw density, no augmentation, CLS head: both styles do the same work per image, so the ratio is the
    # loop's (the default recipe's whitening is done once before training and costs no step time).
    # The scientist's block dropout (0.1) and, unless asked, fp32 on CPU: the ratio is the loop's, not bf16's.
    cfg = Config(whiten=False, augment="off", tta="off", pool="cls", dropout=0.1,
                 device=args.device, data_dir=args.data_dir, emb_dim=args.emb_dim, depth=args.depth,
                 heads=args.heads, mlp_dim=args.mlp_dim, optimizer=args.optimizer, compile=args.compile,
                 batch_size=args.batch_size or (4096 if cuda else 128),
                 precision=args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32"))
    data, info = data_io.load_data(cfg, device, lambda message: None)
    data_dir, channels = Path(info["data_dir"]), info["channels"]
    flops = flops_per_image(cfg, len(channels), data.image_size)
    where = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or 'CPU'}, " \
        f"{torch.get_num_threads()} threads"
    print(f"device: {device} ({where}) | torch {torch.__version__} | python {platform.python_version()}")
    print(f"model: ViT emb {cfg.emb_dim}, depth {cfg.depth}, heads {cfg.heads}, mlp {cfg.mlp_dim}, patch "
          f"{cfg.patch_size}, channels {','.join(channels)} | data: {info['source']}, "
          f"{len(data.x['train']):,} training images | {flops / 1e6:.1f} MFLOP per image per training step "
          f"(forward + backward, FlopCounterMode)", flush=True)
    chunk, warmup = (0, args.warmup or 30) if cuda else (16, args.warmup or 4)
    timers = {"original": original_loop(cfg, data_dir, data.stats, data.image_size, device, 5, args.workers),
              "ours": our_loop(cfg, data, device, chunk, warmup)}
    # what `python run_transformer.py --loss smooth` trains: its model, whitened input, augmentation
    recipe = Config(loss="smooth", device=args.device, data_dir=args.data_dir, compile=args.compile,
                    batch_size=args.batch_size or Config.batch_size, precision=args.precision)
    recipe = resolve_precision(recipe, device)
    recipe_data, _ = data_io.load_data(recipe, device, lambda message: None)
    timers["default recipe"] = our_loop(recipe, recipe_data, device, chunk, warmup)
    load = os.getloadavg()[0]
    seconds = args.seconds or (3.0 if cuda else 8.0)
    totals = measure(timers, args.steps, seconds, args.rounds)
    budget = f"{args.steps} steps" if args.steps else f">= {seconds:g} s"
    print(f"timed: {args.rounds} rounds of {budget} per style, styles taking turns; load average "
          f"{load:.1f} before, {os.getloadavg()[0]:.1f} after (on {os.cpu_count()} CPUs)")
    compiled = f", torch.compile{' (CUDA graphs)' if cuda else ''}" if cfg.compile else ""
    rows = [{"style": f"original: HDF5 Dataset + DataLoader ({args.workers} workers), .item()/step, AdamW",
             "batch": 64, "precision": "fp32"},
            {"style": f"ours: resident tensors, 1 sync/epoch, {cfg.optimizer.upper()}{compiled}",
             "batch": cfg.batch_size, "precision": cfg.precision}]
    rows.append({"style": f"the default recipe: ViT emb {recipe.emb_dim} depth {recipe.depth} heads {recipe.heads}, "
                 f"whitened, augmented, {recipe.optimizer.upper()}", "batch": recipe.batch_size, "precision": recipe.precision,
                 "flops": flops_per_image(recipe, len(recipe_data.stats["channels"]), recipe_data.image_size)})
    for row, name in zip(rows, timers):
        row["steps"], took = totals[name]
        row["img_s"] = row["steps"] * row["batch"] / took
    print_table(rows, flops)
    print("(ratio: img/s against the original's; the default recipe trains a smaller model, so its ratio is not "
          "the loop's alone)")
    if cuda and cfg.compile:  # CUDA graphs fall back silently to plain kernels when they cannot be used
        from torch._dynamo.utils import counters
        print(f"CUDA graph skips: {counters['inductor']['cudagraph_skips']} (0: the steps ran as CUDA graphs)")


if __name__ == "__main__":
    sys.exit(main())
