"""Ablation grid of the requested changes: each row is run_transformer.py in its own folder, scored on labelled
images no run used for a choice; rerun the same command to resume (docs/evaluation.md). E.g. --quick,
--device cuda --jobs 12, --only before,after --seeds 5, --report-only (the report again, nothing trained)."""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: runs from any folder

import h5py
import numpy as np
import torch

import data
import reference
import synthetic
from checkpoints import load_checkpoint, trained_model
from config import (EXECUTION, Config, HelpFormatter, Parser, UserError, add_config_flags,
                    checked, fields_with, flag, non_negative, positive)
from data import ANSWER_FILE, SPLIT_FILES, load_splits, read_split, to_device, to_tensor
from fileio import append_text, changed_files, fingerprint, provenance, rounded, write_json, write_text
from symmetry import SymmetryPlan
from train import Interrupted, exit_code, pick_device, predict_logits, resolve_precision
from tools.compare_report import metrics, pack, write_report

ENTRY = Path(__file__).resolve().parents[1] / "run_transformer.py"

# The pre-change ViT: raw density, CLS token, 4 heads, torch's fan-in init, AdamW + warmup-cosine, BCE.
ADAMW = {"optimizer": "adamw", "weight_decay": 0.05}
BEFORE = {"model": "vit", "heads": 4, "patch_norm": "none", "block_norm": "layer", **ADAMW, "loss": "bce",
          "whiten": False, "pool": "cls", "augment": "off", "tta": "off", "tta_shifts": 2}
SGD_LINEAR = {"optimizer": "sgd", "weight_decay": Config().weight_decay}
CHANGES = {"+patch-bn": {"patch_norm": "batch"}, "+sgd-linear": SGD_LINEAR, "+mse": {"loss": "mse"},
           "+smooth": {"loss": "smooth"}, "+block-bn": {"block_norm": "batch"}}
AFTER = {**BEFORE, "patch_norm": "batch", **SGD_LINEAR, "loss": "smooth"}
REMOVALS = {"after-patch-bn": {"patch_norm": "none"}, "after-sgd-linear": ADAMW,
            "after-smooth+bce": {"loss": "bce"}, "after-smooth+mse": {"loss": "mse"},
            "after+block-bn": {"block_norm": "batch"}}
RAW: dict[str, dict[str, Any]] = {"before": BEFORE, **{n: {**BEFORE, **c} for n, c in CHANGES.items()},
                                  "after": AFTER, **{n: {**AFTER, **c} for n, c in REMOVALS.items()},
                                  "cnn": {**BEFORE, "model": "cnn"}}
CONFIGS: dict[str, dict[str, Any]] = {**RAW, **{f"{n}+whiten": {**c, "whiten": True} for n, c in RAW.items()}}
AUG_TTA = {"augment": "auto", "tta": "auto", "tta_shifts": 4}
CONFIGS.update({
    "after+whiten+mean-pool": {**CONFIGS["after+whiten"], "pool": "mean"},
    "after+whiten+mean-pool+aug-tta": {**CONFIGS["after+whiten"], "pool": "mean", **AUG_TTA},
    "after+whiten+aug-tta": {**CONFIGS["after+whiten"], **AUG_TTA},
    # the README's command as it ships, on its own schedule (the one row that keeps its epochs)
    "default": {"optimizer": Config().optimizer, "loss": "smooth", "epochs": Config().epochs},
    **{f"{n}@trunc02": {**CONFIGS[n], "init": "trunc02"}
       for n in ("before", "after", "before+whiten", "after+whiten")}})
# Each requested change as (with it, without it): on `before`, and in the company of the others (`after`).
EFFECTS = {
    "BatchNorm after the patch convolution": (("+patch-bn", "before"), ("after", "after-patch-bn")),
    "SGD + LinearLR instead of AdamW + warmup-cosine": (("+sgd-linear", "before"), ("after", "after-sgd-linear")),
    "label-smoothed BCE instead of BCE": (("+smooth", "before"), ("after", "after-smooth+bce")),
    "MSE on sigmoid instead of BCE": (("+mse", "before"), ("after-smooth+mse", "after-smooth+bce")),
    "BatchNorm inside the blocks (optional)": (("+block-bn", "before"), ("after+block-bn", "after")),
}
WITH_DATE = ("before", *CHANGES, "after", "cnn")  # the rows also run with the confounded date channel
CHANNEL_SETS = {"with-date": "density,recording_date", "no-date": "density"}
LRS = {"adamw": 4e-3, "sgd": Config().lr}  # per optimizer, checked in docs/evaluation.md


@dataclasses.dataclass(frozen=True)
class Settings:
    """How big a grid: the full defaults, or --quick."""
    configs: tuple[str, ...]
    epochs: int
    seeds: int
    lrs: dict[str, float] = dataclasses.field(default_factory=lambda: dict(LRS))
    channel_sets: tuple[str, ...] = tuple(CHANNEL_SETS)
    heldout: str = ""  # the labelled file every final run is scored on


FULL = Settings(tuple(CONFIGS), epochs=8, seeds=3)
QUICK = Settings(("before", *(c for c in CHANGES if c != "+block-bn"), "after", "cnn"), epochs=4, seeds=2,
                 channel_sets=("no-date",))
QUICK_SIZES = synthetic.Sizes(1000, 1800, 250, 450, 250, 250)  # 1/10 of the benchmark
QUICK_HELDOUT_PER_CLASS = 1000


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration with one channel set."""
    config: str
    channels: str  # a key of CHANNEL_SETS

    @property
    def name(self) -> str:
        return f"{self.config}/{self.channels}"

    def build(self, base: Config, **changes: Any) -> Config:
        return dataclasses.replace(base, **{**CONFIGS[self.config], **changes}, channels=CHANNEL_SETS[self.channels])


def variants(configs: tuple[str, ...], channel_sets: tuple[str, ...] = tuple(CHANNEL_SETS)) -> list[Variant]:
    return [Variant(c, ch) for c in configs for ch in channel_sets if ch == "no-date" or c in WITH_DATE]


def job_key(cfg: Config) -> str:
    """A run's identity: every setting but how it is computed, how random numbers are drawn and where it is written."""
    ignored = fields_with(EXECUTION)
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignored}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def seed_jobs(variant: Variant, settings: Settings, base: Config, out: Path) -> list[dict[str, Any]]:
    """The variant's runs, one per seed, at its optimizer's rate."""
    lr = settings.lrs[CONFIGS[variant.config]["optimizer"]]
    epochs = CONFIGS[variant.config].get("epochs", settings.epochs)
    jobs = []
    for seed in range(settings.seeds):
        folder = out / "runs" / variant.config / variant.channels / f"lr{lr:g}-seed{seed}"
        cfg = variant.build(base, lr=lr, seed=seed, epochs=epochs, out_dir=str(folder),
                            predictions=str(folder / "predictions.txt"))
        jobs.append({"key": job_key(cfg), "variant": variant.name, "lr": lr, "seed": seed,
                     "config": dataclasses.asdict(cfg), "heldout": settings.heldout})
    return jobs


HELDOUT_FILE, HELDOUT_MANIFEST, CARVE_MANIFEST = "heldout.hdf5", "heldout.json", "carve.json"
PER_CLASS = 10_000  # accuracy near 98% to ±0.1 point
STREAM = 1000  # the benchmark draws split i from the stream (seed, i), i < 3
CHOICE_SHARE = 6  # on the user's data, 1 in 6 training images of each state is kept for choices


def read_manifest(path: Path) -> dict[str, Any]:
    """The JSON object a generator or a grid wrote at path; {} when missing or unreadable (then regenerated)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def ensure_heldout(directory: Path, seed: int = 0, per_class: int = PER_CLASS) -> Path:
    """directory/heldout.hdf5 on a stream of its own, with its exact Bayes accuracy; reused while it matches."""
    path, manifest = directory / HELDOUT_FILE, directory / HELDOUT_MANIFEST
    wanted = {"generator": "fictitious-gas benchmark, held-out set", "seed": seed, "stream": STREAM,
              "per_class": per_class}
    saved = read_manifest(manifest)
    if path.exists() and {k: saved.get(k) for k in wanted} == wanted:
        return path
    if path.exists() and not saved:
        raise UserError(f"{path} was not written by the held-out generator; move it away")
    directory.mkdir(parents=True, exist_ok=True)
    split = synthetic.make_split(per_class, per_class, "test", np.random.default_rng([seed, STREAM]))
    synthetic.write_hdf5(path, {"density": split["density"], "recording_date": split["recording_date"],
                                "labels": split["labels"].astype(np.int8)[:, None]})
    bayes = float(((synthetic.bayes_log_likelihood_ratio(split["density"]) > 0) == split["labels"]).mean())
    write_json(manifest, {**wanted, "bayes_accuracy": bayes})
    return path


def carve(data_dir: Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(folder, the user's validation file): the user's training file split by state into folder/train and /valid."""
    sources = {name: data_dir / f for name, f in SPLIT_FILES.items()}
    answers = data_dir / ANSWER_FILE
    wanted = {"choice_share": CHOICE_SHARE, "seed": seed,
              "sources": {str(p): fingerprint(p) for p in [*sources.values(), answers] if p.exists()}}
    if read_manifest(folder / CARVE_MANIFEST) == wanted:
        return folder, sources["valid"]
    read_split(sources["train"], "train", ("density",))  # refuses a damaged or ill-shaped file in one line
    with h5py.File(sources["train"], "r") as h5:
        arrays = {key: h5[key][()] for key in h5.keys() if isinstance(h5[key], h5py.Dataset)}
    labels, rng = arrays["labels"].reshape(-1), np.random.default_rng(seed)
    choice = np.zeros(len(labels), bool)
    for state in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == state))
        choice[idx[: len(idx) // CHOICE_SHARE]] = True
    folder.mkdir(parents=True, exist_ok=True)
    for name, keep in (("train", ~choice), ("valid", choice)):
        synthetic.write_hdf5(folder / SPLIT_FILES[name], {k: v[keep] for k, v in arrays.items()})
    for source in (sources["test"], answers):
        if source.exists():
            shutil.copyfile(source, folder / source.name)
    write_json(folder / CARVE_MANIFEST, wanted)
    return folder, sources["valid"]


def score_run(run_dir: Path, path: Path, device: torch.device) -> dict[str, Any]:
    """The run's best checkpoint on `path`, as the run predicts: accuracy, n, Bayes accuracy, images right."""
    payload = load_checkpoint(run_dir / "best.pt")
    split = read_split(path, "held-out", tuple(payload["stats"]["channels"]))
    x = to_tensor(split, payload["stats"], device)
    logits = predict_logits(trained_model(payload, device), x, SymmetryPlan.from_dict(payload["symmetry"])).cpu()
    correct = (logits + payload.get("calibration", {}).get("offset", 0.0) > 0).numpy() == split.labels
    bayes = read_manifest(path.parent / HELDOUT_MANIFEST).get("bayes_accuracy")
    return {"acc": rounded(float(correct.mean())), "n": len(correct), "bayes_acc": bayes, "correct": pack(correct)}


def reference_accuracy(data_dir: Path, path: Path, device: torch.device) -> dict[str, Any]:
    """reference.py's classifier fitted on data_dir's training split, scored on `path`: accuracy, 95% half-width."""
    splits = load_splits(data_dir)
    try:
        prepared = to_device(splits, ["density"], device, whiten=True)
    except UserError:  # density <= 0 somewhere: raw density
        prepared = to_device(splits, ["density"], device)
    model, _ = reference.fit_reference(prepared.x["train"], prepared.y["train"])
    split = read_split(path, "held-out", ("density",))
    right = (predict_logits(model, to_tensor(split, prepared.stats, device)).cpu().numpy() > 0) == split.labels
    acc = float(right.mean())
    return rounded({"acc": acc, "half_width": 1.96 * float(np.sqrt(acc * (1 - acc) / len(right))), "n": len(right)})


RUNNING: set[subprocess.Popen] = set()


def config_flags(cfg: Config) -> list[str]:
    """Every setting of cfg as run_transformer.py's flag."""
    argv = []
    for name, value in dataclasses.asdict(cfg).items():
        argv += [flag(name) if value else "--no-" + flag(name)[2:]] if isinstance(value, bool) \
            else [flag(name), str(value)]
    return argv


def train_one(cfg: Config, threads: int = 0) -> dict[str, Any]:
    """Train cfg as a user would, in a process of its own logging to out_dir/log.txt; its summary.json."""
    folder = Path(cfg.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    earlier = set(folder.glob("*/summary.json"))  # an earlier, killed or diverged attempt's folder may be here
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(folder / "log.txt", "a") as log:
        proc = subprocess.Popen([sys.executable, str(ENTRY), *config_flags(cfg)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        RUNNING.add(proc)
        try:
            code = proc.wait()
        except BaseException:  # interrupted here: the run stops too (it keeps last.pt)
            proc.terminate()
            proc.wait()
            raise
        finally:
            RUNNING.discard(proc)
    last = ([""] + (folder / "log.txt").read_text().strip().splitlines())[-1].removeprefix("error: ")
    if code > 128:
        raise Interrupted(signal.Signals(code - 128).name, code - 128)
    if code not in (0, 3):
        raise UserError(f"{folder}: run_transformer.py exited with code {code}: {last}")
    written = [p for p in folder.glob("*/summary.json") if p not in earlier]  # this attempt's, if any
    summary = json.loads(written[0].read_text()) if written else {}
    return {**summary, "diverged": last} if code == 3 else summary


def run_job(job: dict[str, Any], threads: int = 0) -> dict[str, Any]:
    """Train one (configuration, rate, seed); its row for results.jsonl."""
    cfg = Config(**job["config"])
    summary = train_one(cfg, threads)
    run_dir = Path(summary["run_dir"]) if "run_dir" in summary else None
    device = torch.cuda.get_device_name(0) if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    row = {**{k: job[k] for k in ("key", "variant", "lr", "seed")}, "summary": summary,
           "device": f"{device} ({os.cpu_count()} cores)", "provenance": provenance()}
    if job["heldout"] and run_dir and (run_dir / "best.pt").exists():
        row["heldout"] = score_run(run_dir, Path(job["heldout"]), pick_device(cfg.device))
    return row


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """Finished runs by key. A line torn by a kill is dropped and the file rewritten without it."""
    text = path.read_text() if path.exists() else ""
    rows = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            rows[row["key"]] = row
        except (ValueError, KeyError, TypeError):
            continue
    if text and (not text.endswith("\n") or len(rows) != len(text.splitlines())):
        write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows.values()))
    return rows


def run_grid(chosen: list[Variant], settings: Settings, base: Config, out: Path, jobs: int, threads: int,
             deadline: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every seed of every variant not in results.jsonl, `jobs` at a time, density-only variants first."""
    path = out / "results.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    rows = load_results(path)
    queue = [j for v in sorted(chosen, key=lambda v: v.channels == "with-date")
             for j in seed_jobs(v, settings, base, out) if j["key"] not in rows]
    todo, finished = len(queue), 0
    log(f"{todo} runs to do" + (f"; {len(rows)} finished runs in {path} are not rerun" if rows else ""))

    def record(row: dict[str, Any]) -> None:
        nonlocal finished
        row["finished_at"] = time.time()
        append_text(path, json.dumps(row, sort_keys=True) + "\n")
        rows[row["key"]], finished, s = row, finished + 1, row["summary"]
        held = f"held-out acc {row['heldout']['acc']:.4f} " if "heldout" in row else ""
        log(f"[{finished}/{todo}] {row['variant']} lr {row['lr']:g} seed {row['seed']}: {held}"
            f"({s.get('wall_time_s', 0):.0f} s)" + ("  DIVERGED" if s.get("diverged") else ""))

    with ThreadPoolExecutor(jobs) as pool:
        running: set[Any] = set()
        try:
            while queue or running:
                if deadline and queue and time.time() >= deadline:
                    log(f"--max-minutes reached: {len(queue)} queued runs not started; waiting for the running ones")
                    queue.clear()
                if jobs == 1 and queue:  # in this thread
                    record(run_job(queue.pop(0), threads))
                while queue and len(running) < jobs > 1:
                    running.add(pool.submit(run_job, queue.pop(0), threads))
                if running:
                    ready, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in ready:
                        record(f.result())  # an error or an interruption in a run ends the grid
        except BaseException:
            for proc in list(RUNNING):  # stop the runs of the other threads too
                proc.terminate()
            raise
    return rows


def main(argv: list[str] | None = None) -> int:
    """Exit codes as in train.exit_code; an interrupted grid still writes the report of what finished."""
    argv = sys.argv[1:] if argv is None else argv
    return exit_code(lambda: grid_command(argv), lambda e: "finished runs are kept: rerun the same command to continue")


def evaluation_data(base: Config, out: Path, quick: bool, device: torch.device) -> tuple[Config, Path, Path]:
    """(base, the runs' data folder, the evaluation file): the benchmark's held-out set or the user's carved data."""
    resolved, _ = data.resolve_data_dir(base, log=lambda m: None)  # generates the benchmark once, here
    if (resolved / synthetic.MANIFEST).exists():
        seed = read_manifest(resolved / synthetic.MANIFEST).get("seed", 0)
        folder = resolved.parent / f"{resolved.name}-heldout"
        evaluation_file = ensure_heldout(folder, seed, QUICK_HELDOUT_PER_CLASS if quick else PER_CLASS)
    else:
        resolved, evaluation_file = carve(resolved, out / "data")
        write_json(out / "reference.json", reference_accuracy(resolved, evaluation_file, device))
        base = dataclasses.replace(base, data_dir=str(resolved))
    # a grid continued on changed data would mix two data sets in one report: out/data.json names the first
    record, files = out / "data.json", data.data_files(resolved, (resolved / ANSWER_FILE).exists())
    if not record.exists():
        write_json(record, files)
    changed = changed_files(json.loads(record.read_text()), files)
    if changed:
        raise UserError(f"{out / 'results.jsonl'} holds runs on other data: {changed[0]} changed since the grid "
                        f"started; pass another --out-dir to start a grid on this data (or restore the file)")
    return base, resolved, evaluation_file


def grid_command(argv: list[str]) -> None:
    p = Parser(prog="python -m tools.compare", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true", help="small grid, density only, on a small benchmark")
    add_config_flags(p, ("data_dir", "epochs", "device"), defaults={"data_dir": "", "epochs": None},
                     notes={"data_dir": "here: data/, with --quick data/synthetic-quick",
                            "epochs": f"here: {FULL.epochs}, --quick {QUICK.epochs}; the default row keeps its own"})
    p.add_argument("--out-dir", default="", help="the grid's folder (default compare_out/full or compare_out/quick)")
    p.add_argument("--seeds", type=checked(int, "seeds", positive), help=f"per configuration ({FULL.seeds})")
    for optimizer, rate in LRS.items():
        p.add_argument(f"--{optimizer}-lr", type=checked(float, f"{optimizer}_lr", positive), default=rate,
                       help=f"the learning rate of every {optimizer} row")
    p.add_argument("--only", default="", help="comma-separated configurations: " + ", ".join(CONFIGS))
    p.add_argument("--jobs", type=checked(int, "jobs", non_negative), default=0,
                   help="parallel runs (0: 1 on CPU, min(12, cores) sharing the GPU on CUDA)")
    p.add_argument("--max-minutes", type=checked(float, "max_minutes", non_negative), default=0.0,
                   help="start no new run after this long (0: no limit); rerun to finish the grid")
    p.add_argument("--report-only", action="store_true", help="train nothing: rewrite report.md from results.jsonl")
    args = p.parse_args(argv)
    start, interrupted = time.time(), None
    preset = QUICK if args.quick else FULL
    configs = tuple(c.strip() for c in args.only.split(",") if c.strip()) or preset.configs
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise UserError(f"--only: unknown configuration {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    settings = dataclasses.replace(preset, configs=configs, epochs=args.epochs or preset.epochs,
                                   lrs={o: getattr(args, f"{o}_lr") for o in LRS}, seeds=args.seeds or preset.seeds)
    out = Path(args.out_dir or f"compare_out/{'quick' if args.quick else 'full'}")
    device = pick_device(args.device)
    jobs = args.jobs or (1 if device.type == "cpu" else min(12, os.cpu_count() or 1))
    data_dir = args.data_dir or (str(synthetic.ensure_benchmark(Path("data") / "synthetic-quick", 0, QUICK_SIZES))
                                 if args.quick else "data")
    # precision resolved here: a run's key names what ran (bf16 or fp32), not "auto"
    base = resolve_precision(Config(data_dir=data_dir, device=args.device), device)
    chosen = variants(configs, settings.channel_sets)
    if args.report_only:
        resolved = out / "data" if (out / "data" / CARVE_MANIFEST).exists() else Path(data_dir)
        if resolved == out / "data":  # a grid on the user's data: its runs' data
            base = dataclasses.replace(base, data_dir=str(resolved))
        rows = load_results(out / "results.jsonl")
    else:
        base, resolved, evaluation_file = evaluation_data(base, out, args.quick, device)
        settings = dataclasses.replace(settings, heldout=str(evaluation_file))
        print(f"{len(chosen)} variants (configuration x channel set) on {resolved}, scored on {evaluation_file}, "
              f"{device}, {jobs} parallel run(s); results in {out}/")
        deadline = start + 60 * args.max_minutes if args.max_minutes > 0 else 0.0
        try:
            rows = run_grid(chosen, settings, base, out, jobs, max(1, (os.cpu_count() or 1) // jobs), deadline)
        except (Interrupted, KeyboardInterrupt) as e:  # still report what finished, then exit as interrupted
            interrupted, rows = e, load_results(out / "results.jsonl")
    lines = []
    for v in chosen:  # one per variant: its rate, finished runs and mean ± std of the report's columns over seeds
        cfg = v.build(base)
        runs = [rows[j["key"]] for j in seed_jobs(v, settings, base, out) if j["key"] in rows]
        lines.append({"variant": v.name, "config": v.config, "channels": CHANNEL_SETS[v.channels], "init": cfg.init,
                      "reference": f"{'after+whiten' if cfg.whiten else 'after'}/{v.channels}",
                      "lr": settings.lrs[cfg.optimizer], "runs": runs, **metrics(runs)})
    user_data = resolved == out / "data"
    header = (f"Command: `python -m tools.compare {' '.join(argv)}`; data {args.data_dir or resolved}"
              + (" (runs train on a stratified 5/6 of its training file and make every choice, early stopping and "
                 "temperature, on the other 1/6; every run is scored on its validation file, which no run used)"
                 if user_data else "")
              + f"; {settings.epochs} epochs (a row that names its own keeps them), {settings.seeds} seeds, {jobs} "
              f"parallel run(s); this invocation took {time.time() - start:.0f} s.")
    yardstick = read_manifest(out / "reference.json") if user_data else None
    print(write_report(lines, out, header, settings.seeds, EFFECTS, yardstick))
    print(f"report: {out}/report.md, {out}/figures/")
    if interrupted is not None:
        raise interrupted


if __name__ == "__main__":
    sys.exit(main())
