"""Ablation harness: which of the requested changes make the ViT generalise, measured fairly.

    python -m tools.compare --quick                              # small grid, a few minutes on a CPU
    python -m tools.compare --device cuda --jobs 12              # the full grid (README: results)
    python -m tools.compare --only before,after --seeds 5        # a subset; rerun the same command to resume

Grid: `before` (the pre-change ViT: no BatchNorm in the patch embedding, AdamW + warmup-cosine, BCE), each
requested change alone on top of it, `after` (all requested changes), and the reference CNN (trained like
`before`), each with the confounded date channel kept (`with-date`) and removed (`no-date`); beyond the
request, density-only rows for whitening, the init axis and the ViT levers. The grid lives in tools/grid.py.

Protocol, the same for every configuration: optimizers differ in their useful learning rate, so first one
short probe run (seed 100, --probe-epochs) per rate in that optimizer's grid (LR_GRID); the rate with the
lowest validation log loss (the early-stopping criterion) wins; then --seeds full runs (seeds 0, 1, ...) at
that rate. The report gives mean ± std over those seeds, never the best seed. Every run is one call of
`run_transformer.run` in its own folder; each finished run is appended to results.jsonl, so a rerun of the
same command skips it and an interrupted grid continues where it stopped.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: runs from any folder

import torch

import data
import run_transformer
import synthetic
from cli import exit_code
from config import (EXECUTION, OUTPUT, Config, HelpFormatter, Parser, UserError,
                    add_config_flags, checked, config_from_dict, fields_with, non_negative, positive)
from data import load_splits, read_answer_key
from fileio import append_text, changed_files, write_json, write_text
from fileio import provenance
from train import Diverged, Interrupted, pick_device, resolve_precision
from tools import heldout
from tools.compare_report import METRICS, mean_std, write_report
from tools.grid import (CHANNEL_SETS, CONFIGS, FULL, LR_GRID, PROBE_SEED, QUICK, QUICK_HELDOUT_PER_CLASS, QUICK_SIZES,
                         Settings, Variant, variants)


# --augment/--tta as the keys of stored rows name them: on/off switches before runs checked their symmetries
# (on the built-in benchmark, where those rows ran, the check finds exactly the symmetries the switch applied).
SWITCH_KEYS = {"auto": True, "off": False}


def job_key(cfg: Config) -> str:
    """Identity of a run: every setting that changes its result, not how it is computed or where it is written
    (config.py's EXECUTION and OUTPUT roles)."""
    ignored = fields_with(EXECUTION, OUTPUT)
    fields = {k: SWITCH_KEYS.get(v, v) if k in ("augment", "tta") else v
              for k, v in dataclasses.asdict(cfg).items() if k not in ignored}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def make_job(variant: Variant, stage: str, lr: float, seed: int, epochs: int, base: Config, out: Path
             ) -> dict[str, Any]:
    folder = out / "runs" / variant.config / variant.channels / f"{stage}-lr{lr:g}-seed{seed}"
    cfg = variant.build(base, lr=lr, seed=seed, epochs=epochs, out_dir=str(folder),
                        predictions=str(folder / "predictions.txt"))
    return {"key": job_key(cfg), "variant": variant.name, "stage": stage, "lr": lr, "seed": seed,
            "config": dataclasses.asdict(cfg)}


def rate_grid(variant: Variant, settings: Settings) -> tuple[float, ...]:
    return settings.lr_grid[CONFIGS[variant.config]["optimizer"]]


def probe_jobs(variant: Variant, settings: Settings, base: Config, out: Path) -> list[dict[str, Any]]:
    """One short run per rate of the variant's optimizer; none when there is only one rate to choose from."""
    grid = rate_grid(variant, settings)
    return [make_job(variant, "probe", lr, PROBE_SEED, settings.probe_epochs, base, out) for lr in grid] \
        if len(grid) > 1 else []


def chosen_lr(variant: Variant, settings: Settings, done: list[dict[str, Any]]) -> float | None:
    """The variant's rate once all its probes finished (the only rate when there were none), else None."""
    grid = rate_grid(variant, settings)
    if len(grid) == 1:
        return grid[0]
    return choose_lr(done) if len(done) == len(grid) else None


def final_jobs(variant: Variant, lr: float, settings: Settings, base: Config, out: Path) -> list[dict[str, Any]]:
    epochs = variant.final_epochs(settings.epochs)
    return [{**make_job(variant, "final", lr, seed, epochs, base, out), "heldout": settings.heldout}
            for seed in range(settings.seeds)]


def choose_lr(probes: list[dict[str, Any]]) -> float:
    """The probed rate with the lowest best validation log loss (a diverged probe without a checkpoint loses)."""
    def score(row: dict[str, Any]) -> float:
        loss = row["summary"].get("best_val_loss")
        return math.inf if loss is None or not math.isfinite(loss) else loss
    return min(probes, key=lambda row: (score(row), row["lr"]))["lr"]


# ---- one run (in a worker process or inline) ----------------------------------------------------------

def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (configuration, lr, seed) with run_transformer.run; returns the row for results.jsonl."""
    cfg = config_from_dict(job["config"])
    folder = Path(cfg.out_dir)

    def log(message: str) -> None:
        append_text(folder / "log.txt", message + "\n")

    earlier = set(folder.glob("*/summary.json"))  # an earlier, killed or diverged attempt's folder may be here
    try:
        summary = run_transformer.run(cfg, log=log, progress=False)
    except Diverged as e:  # run() wrote summary.json if an epoch finished before the NaN; else nothing to read
        written = [p for p in folder.glob("*/summary.json") if p not in earlier]  # this attempt's, if any
        summary = {**(json.loads(written[0].read_text()) if written else {}), "diverged": str(e)}
    run_dir = Path(summary["run_dir"]) if "run_dir" in summary else None
    history = read_history(run_dir / "metrics.csv") if run_dir else []
    device = torch.cuda.get_device_name(0) if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    row = {**{k: job[k] for k in ("key", "variant", "stage", "lr", "seed")}, "summary": summary,
           "history": history, "device": f"{device} ({os.cpu_count()} cores)", "provenance": provenance()}
    if job.get("heldout") and job["stage"] == "final" and run_dir and (run_dir / "best.pt").exists():
        row["heldout"] = heldout.score_run(run_dir, Path(job["heldout"]), pick_device(cfg.device))
    return row


def read_history(path: Path) -> list[dict[str, float]]:
    """Per-epoch train/validation loss and accuracy from a run's metrics.csv."""
    with open(path, newline="") as f:
        return [{k: float(row[k]) for k in ("epoch", "train_loss", "val_loss", "train_acc", "val_acc")}
                for row in csv.DictReader(f)]


def init_worker(threads: int) -> None:
    torch.set_num_threads(threads)  # N runs share the cores; oversubscribed OpenMP threads crawl


# ---- bookkeeping ---------------------------------------------------------------------------------------

def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """Finished runs by key. A line torn by a kill is dropped and the file rewritten (atomically) without it."""
    if not path.exists():
        return {}
    text, rows, good = path.read_text(), {}, []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            rows[row["key"]] = row
            good.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if text and (not text.endswith("\n") or len(good) != len(text.splitlines())):
        write_text(path, "".join(line + "\n" for line in good))
    return rows


def check_same_data(results: Path, data_dir: Path) -> None:
    """Refuse to continue a grid whose finished runs read other contents of data_dir: they would be skipped, and
    the report would mix two data sets. Each run's config.json records the files it read."""
    current: dict[bool, dict[str, Any]] = {}  # by whether the runs used the answer key: each hashed once
    for row in load_results(results).values():
        if "run_dir" not in row["summary"]:  # a divergence before the first epoch: no run folder to read
            continue
        run_dir = Path(row["summary"]["run_dir"])
        try:
            seen = data.recorded_data(run_dir)
        except UserError:  # no record to compare with: the run folder was moved away
            continue
        if seen.get("data_dir") != str(data_dir):
            continue  # another --data-dir: other run keys, never mixed in
        answers = "test_answers" in seen["files"]
        if answers not in current:
            current[answers] = data.data_files(data_dir, answers)
        changed = changed_files(seen["files"], current[answers])
        if changed:
            raise UserError(f"{results} holds runs on other data: {changed[0]} changed since {run_dir} read it; "
                            f"pass another --out-dir to start a grid on this data (or restore the file)")


def append_result(path: Path, row: dict[str, Any]) -> None:
    """One whole line per finished run, on disk before the next run is recorded."""
    append_text(path, json.dumps(row, sort_keys=True) + "\n")


def run_grid(chosen: list[Variant], settings: Settings, base: Config, out: Path, jobs: int, threads: int,
             deadline: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Probe, choose, then run the seeds; skips what results.jsonl already holds. Returns all finished rows.

    --jobs 1 trains in this process; more use spawned worker processes (CUDA-safe), at most `jobs` at a time.
    The density-only variants (the ones that matter) go first, so a grid cut short by --max-minutes has them.
    """
    path = out / "results.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    rows = load_results(path)
    probes = {v.name: probe_jobs(v, settings, base, out) for v in chosen}
    by_name = {v.name: v for v in chosen}
    queue = [job for p in probes.values() for job in p if job["key"] not in rows]

    def unlock(name: str) -> None:
        """Once every probe of a variant is done, queue its seeds at the chosen rate."""
        lr = chosen_lr(by_name[name], settings, [rows[j["key"]] for j in probes[name] if j["key"] in rows])
        if lr is not None:
            queue.extend(j for j in final_jobs(by_name[name], lr, settings, base, out) if j["key"] not in rows)
            queue.sort(key=lambda j: j["variant"].endswith("/with-date"))  # stable: keeps the order within

    for name in probes:
        unlock(name)
    queue.sort(key=lambda j: j["variant"].endswith("/with-date"))
    waiting = [n for n, p in probes.items() if not all(j["key"] in rows for j in p)]  # seeds not queued yet
    todo, finished = len(queue) + settings.seeds * len(waiting), 0
    log(f"{todo} runs to do" + (f"; {len(rows)} finished runs in {path} are not rerun" if rows else ""))

    def record(job: dict[str, Any], row: dict[str, Any]) -> None:
        nonlocal finished
        row["finished_at"] = time.time()
        append_result(path, row)
        rows[row["key"]], finished, s = row, finished + 1, row["summary"]
        scored = [f"val acc {s['val_acc']:.4f}" if "val_acc" in s else ""]
        scored += [f"test acc {s['test_acc']:.4f}"] if "test_acc" in s else []
        scored += [f"held-out acc {row['heldout']['acc']:.4f}"] if "heldout" in row else []
        log(f"[{finished}/{todo}] {row['stage']} {row['variant']} lr {row['lr']:g} seed {row['seed']}: "
            f"{' '.join(filter(None, scored))} ({s.get('wall_time_s', 0):.0f} s)"
            + ("  DIVERGED" if s.get("diverged") else ""))
        if job["stage"] == "probe":
            unlock(job["variant"])

    pool = None if jobs == 1 else ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker, initargs=(threads,))
    running: dict[Future, dict[str, Any]] = {}
    try:
        while queue or running:
            if deadline and queue and time.time() >= deadline:
                log(f"--max-minutes reached: {len(queue)} queued runs not started; waiting for the running ones")
                queue.clear()
            if pool is None:
                if queue:
                    job = queue.pop(0)
                    record(job, run_job(job))
                continue
            while queue and len(running) < jobs:
                job = queue.pop(0)
                running[pool.submit(run_job, job)] = job
            timeout = max(deadline - time.time(), 0.1) if deadline and queue else None
            ready, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
            for f in ready:
                record(running.pop(f), f.result())  # a UserError or an interruption in a run ends the grid
    except BaseException:
        for worker in multiprocessing.active_children():  # stop the running runs too (they keep last.pt)
            worker.terminate()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return rows


# ---- the report ----------------------------------------------------------------------------------------

def summarise(chosen: list[Variant], settings: Settings, base: Config, out: Path, rows: dict[str, Any]
              ) -> list[dict[str, Any]]:
    """One line per variant: chosen rate, probes, and mean ± std of every metric over the finished seeds."""
    lines = []
    for v in chosen:
        probes = [rows[j["key"]] for j in probe_jobs(v, settings, base, out) if j["key"] in rows]
        cfg = v.build(base)
        line: dict[str, Any] = {"variant": v.name, "config": v.config, "channels": CHANNEL_SETS[v.channels],
                                "init": cfg.init, "whiten": cfg.whiten,
                                "reference": f"{'after+whiten' if cfg.whiten else 'after'}/{v.channels}",
                                "probes": probes, "lr": None, "runs": []}
        line["lr"] = chosen_lr(v, settings, probes)
        if line["lr"] is not None:
            line["runs"] = [rows[j["key"]] for j in final_jobs(v, line["lr"], settings, base, out)
                            if j["key"] in rows]
        line.update({m: mean_std([read(r) for r in line["runs"]]) for m, (_, read) in METRICS.items()})
        lines.append(line)
    return lines


def commits(rows: list[dict[str, Any]]) -> str:
    """Which code produced the rows: `code a1b2c3d4e5f6 (12 runs), not recorded (75 runs)`."""
    count: dict[str, int] = {}
    for row in rows:
        record = row.get("provenance")
        name = "not recorded" if record is None else record["commit"][:12] + (" with changes" if record["dirty"] else "")
        count[name] = count.get(name, 0) + 1
    return "runs by code version: " + ", ".join(f"{name} ({n} runs)" for name, n in count.items())


def grid_bayes_accuracy(data_dir: Path, rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Accuracy of the exact likelihood-ratio test per split when the data are the built-in benchmark."""
    for row in rows:  # run_transformer records it in every summary on the benchmark
        if "bayes_accuracy" in row["summary"]:
            return row["summary"]["bayes_accuracy"]
    data_dir = next((d for d in (data_dir, data_dir / "synthetic") if (d / synthetic.MANIFEST).exists()), None)
    if data_dir is None:
        return None
    splits = load_splits(data_dir)
    return synthetic.bayes_accuracy(splits, read_answer_key(data_dir, len(splits["test"])))


# ---- command line --------------------------------------------------------------------------------------

def rate_grids(text: str) -> dict[str, tuple[float, ...]]:
    """--lrs 'sgd=0.05,adamw=0.001+0.003' -> {"sgd": (0.05,), "adamw": (0.001, 0.003)}."""
    grids: dict[str, tuple[float, ...]] = {}
    try:
        for item in filter(None, (t.strip() for t in text.split(","))):
            name, rates = item.split("=")
            grids[name.strip()] = tuple(float(r) for r in rates.split("+"))
    except ValueError:
        grids = {"": ()}
    if not grids or not set(grids) <= set(LR_GRID) or not all(r and all(x > 0 for x in r) for r in grids.values()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 'sgd=0.05,adamw=0.001+0.003' (optimizers "
                                         f"{', '.join(LR_GRID)}; positive rates)")
    return grids


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = Parser(prog="python -m tools.compare", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small grid ({', '.join(QUICK.configs)}; "
                   f"{QUICK.epochs} epochs, {QUICK.seeds} seeds) on a small built-in benchmark")
    add_config_flags(p, ("data_dir", "epochs", "device", "compile"), defaults={"data_dir": "", "epochs": None},
                     notes={"data_dir": "here: data/ unless given, and with --quick a small benchmark in "
                            "data/synthetic-quick", "epochs": f"here: of each reported run (full grid "
                            f"{FULL.epochs}, --quick {QUICK.epochs}; the default row keeps its own)",
                            "compile": "here: of each run (same results)"})
    p.add_argument("--out-dir", default="", help="the grid's folder (results.jsonl, runs, report; default "
                   "compare_out/full or compare_out/quick)")
    p.add_argument("--probe-epochs", type=checked(int, "probe_epochs", positive),
                   help=f"epochs of each learning-rate probe (full: {FULL.probe_epochs})")
    p.add_argument("--seeds", type=checked(int, "seeds", positive), help=f"seeds per configuration (full: "
                   f"{FULL.seeds})")
    p.add_argument("--lrs", type=rate_grids, default={}, help="learning rates per optimizer instead of LR_GRID, "
                   "e.g. 'sgd=0.05,adamw=0.003'; an optimizer given one rate runs no probes")
    p.add_argument("--only", default="", help="comma-separated configurations: " + ", ".join(CONFIGS))
    p.add_argument("--jobs", type=checked(int, "jobs", non_negative), default=0, help="parallel runs (0: 1 on "
                   "CPU, min(12, cores) on CUDA, where they share the GPU)")
    p.add_argument("--max-minutes", type=checked(float, "max_minutes", non_negative), default=0.0,
                   help="start no new run after this long (0: no limit); rerun to finish the grid")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite the report from the results.jsonl in --out-dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit codes as in cli.exit_code; stopped by --max-minutes is done (0). An interrupted grid still
    writes the report of what finished."""
    argv = sys.argv[1:] if argv is None else argv
    return exit_code(lambda: grid_command(argv, parse_args(argv)),
                     lambda e: "finished runs are kept: rerun the same command to continue")


def grid_command(argv: list[str], args: argparse.Namespace) -> None:
    start, interrupted = time.time(), None
    preset = QUICK if args.quick else FULL
    configs = tuple(c.strip() for c in args.only.split(",") if c.strip()) or preset.configs
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise UserError(f"--only: unknown configuration {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    settings = dataclasses.replace(preset, configs=configs, epochs=args.epochs or preset.epochs,
                                   lr_grid={**preset.lr_grid, **args.lrs},
                                   probe_epochs=args.probe_epochs or preset.probe_epochs,
                                   seeds=args.seeds or preset.seeds)
    out = Path(args.out_dir or f"compare_out/{'quick' if args.quick else 'full'}")
    device = pick_device(args.device)
    jobs = args.jobs or (1 if device.type == "cpu" else min(12, os.cpu_count() or 1))
    data_dir = args.data_dir or "data"
    if args.quick and not args.data_dir:
        data_dir = str(synthetic.ensure_benchmark(Path("data") / "synthetic-quick", 0, QUICK_SIZES))
    # precision resolved here: a run's key names what ran (bf16 or fp32), not "auto"
    base = resolve_precision(Config(data_dir=data_dir, device=args.device, compile=args.compile),
                             pick_device(args.device))
    chosen = variants(configs, settings.channel_sets)
    if args.report_only:
        resolved = Path(data_dir)
        if (out / "data" / heldout.CARVE_MANIFEST).exists():  # a grid on the user's data: its runs' data
            resolved = out / "data"
            base = dataclasses.replace(base, data_dir=str(resolved))
        rows = load_results(out / "results.jsonl")
    else:  # generates the built-in benchmark once, here, rather than in racing workers
        resolved, _ = data.resolve_data_dir(base, log=lambda m: None)
        if (resolved / synthetic.MANIFEST).exists():  # the built-in benchmark: score on its held-out set too
            per_class = QUICK_HELDOUT_PER_CLASS if args.quick else heldout.PER_CLASS
            seed = json.loads((resolved / synthetic.MANIFEST).read_text()).get("seed", 0)
            folder = resolved.parent / f"{resolved.name}-heldout"  # beside the benchmark, which stays as generated
            evaluation_file = heldout.ensure_heldout(folder, seed, per_class)
        else:  # the user's files: choices on a carved part of the training file, scores on the validation file
            resolved, evaluation_file = heldout.carve(resolved, out / "data")
            base = dataclasses.replace(base, data_dir=str(resolved))
            write_json(out / "reference.json", heldout.reference_accuracy(resolved, evaluation_file, device))
        settings = dataclasses.replace(settings, heldout=str(evaluation_file))
        check_same_data(out / "results.jsonl", resolved)
        print(f"{len(chosen)} variants (configuration x channel set) on {resolved}, scored on {evaluation_file}, "
              f"{device}, {jobs} parallel run(s); results in {out}/")
        deadline = start + 60 * args.max_minutes if args.max_minutes > 0 else 0.0
        try:
            rows = run_grid(chosen, settings, base, out, jobs, max(1, (os.cpu_count() or 1) // jobs), deadline)
        except (Interrupted, KeyboardInterrupt) as e:  # still report what finished, then exit as interrupted
            interrupted, rows = e, load_results(out / "results.jsonl")
    lines = summarise(chosen, settings, base, out, rows)
    reported = [r for line in lines for r in line["runs"] + line["probes"]]
    bayes = grid_bayes_accuracy(resolved, reported)
    user_data = resolved == out / "data"
    header = (f"Command: `python -m tools.compare {' '.join(argv)}`; data {args.data_dir or resolved}"
              + (" (runs train on a stratified 5/6 of its training file and make every choice, early stopping, "
                 "temperature and rate probes, on the other 1/6; every run is scored on its validation file, "
                 "which no run used)" if user_data else "")
              + f"; {settings.epochs} epochs (a row that names its own keeps them; probes {settings.probe_epochs}), "
              f"{settings.seeds} seeds, {jobs} parallel run(s); this invocation took {time.time() - start:.0f} s; "
              f"{commits(reported)}.")
    reference = out / "reference.json"
    yardstick = json.loads(reference.read_text()) if user_data and reference.exists() else None
    print(write_report(lines, bayes, out, header, settings.seeds, PROBE_SEED, yardstick))
    print(f"report: {out}/report.md, {out}/report.csv, {out}/figures/")
    if interrupted is not None:
        raise interrupted


if __name__ == "__main__":
    sys.exit(main())
