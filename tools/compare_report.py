"""The ablation report of compare.py: tables (markdown, CSV) and figures from finished runs.

Every final run is scored on labelled images that no run used for any choice. A row's held-out accuracy is the
mean over its seeds with a 95% interval that adds, in quadrature, the seed spread (Student t with seeds - 1 degrees
of freedom on the seed means) and the sampling error of the images (the standard error of the per-image correctness
averaged over seeds). The difference to the row's reference (`after` on the same input and channels) is paired: the
same seeds on the same images, so the per-image differences carry the sampling error and most of what the images
have in common cancels.
"""
from __future__ import annotations

import base64
import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from fileio import rounded, write_text
from report import pyplot, save_figure

GOAL = 0.83  # the scientist's target test accuracy, shown on the built-in benchmark that stands in for their data

SUMMARY_METRICS = {"val_acc": "val_acc", "test_acc": "test_acc", "test_auc": "test_auc", "val_auc": "val_auc",
                   "gap_acc": "final_gap_acc", "train_loss": "final_train_loss", "best_epoch": "best_epoch",
                   "wall_s": "wall_time_s"}  # report column -> summary.json key


def metrics(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and std over seeds of each column of report.csv."""
    best = mean_std([max((h["val_acc"] for h in r["history"]), default=None) for r in runs])
    return {"best_val_acc": best, **{column: mean_std([r["summary"].get(key) for r in runs])
                                     for column, key in SUMMARY_METRICS.items()}}


COLUMNS = ("best_val_acc", *SUMMARY_METRICS)
PERCENT = ("best_val_acc", "val_acc", "test_acc", "gap_acc")


Z95 = 1.96
T975 = (math.nan, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # by degrees of freedom


def t975(df: int) -> float:
    """The two-sided 95% quantile of Student's t (the normal one beyond 10 degrees of freedom)."""
    return T975[df] if df < len(T975) else Z95


def pack(correct: np.ndarray) -> str:
    """Per-image correctness as base64 of packed bits: 20,000 images in 3.4 kB."""
    return base64.b64encode(np.packbits(correct.astype(bool))).decode()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:n].astype(bool)


def correctness(runs: list[dict[str, Any]]) -> np.ndarray:
    """(seeds, images) bools: which held-out images each run classified right."""
    return np.stack([unpack(r["heldout"]["correct"], r["heldout"]["n"]) for r in runs])


def interval(per_image: np.ndarray) -> tuple[float, float]:
    """Mean over seeds of (seeds, images) per-image scores, and its 95% half-width (seed spread and image
    sampling in quadrature; NaN with one seed, whose spread is unknown)."""
    k, n = per_image.shape
    per_seed = per_image.mean(axis=1)
    seeds = t975(k - 1) * per_seed.std(ddof=1) / math.sqrt(k) if k > 1 else math.nan
    images = Z95 * per_image.mean(axis=0).std(ddof=1) / math.sqrt(n)
    return float(per_seed.mean()), float(math.hypot(seeds, images))


def scored(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r.get("heldout")]


def heldout_accuracy(runs: list[dict[str, Any]]) -> tuple[float, float]:
    """Held-out accuracy: mean over seeds and 95% half-width; NaNs without held-out scores."""
    runs = scored(runs)
    return interval(correctness(runs).astype(float)) if runs else (math.nan, math.nan)


def paired_difference(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[float, float]:
    """Held-out accuracy minus the reference's, seed by seed on the same images: mean and 95% half-width."""
    by_seed = {r["seed"]: r for r in scored(reference)}
    pairs = [(r, by_seed[r["seed"]]) for r in scored(runs) if r["seed"] in by_seed]
    if not pairs:
        return math.nan, math.nan
    ours, theirs = correctness([a for a, _ in pairs]), correctness([b for _, b in pairs])
    return interval(ours.astype(float) - theirs.astype(float))


def mean_std(values: list[Any]) -> tuple[float, float]:
    """Mean and sample std over seeds (a diverged run without a checkpoint has no value and is left out)."""
    x = np.array([math.nan if v is None else float(v) for v in values])
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def fmt(pair: tuple[float, float], metric: str) -> str:
    mean, std = pair
    if not math.isfinite(mean):
        return "–"
    scale, digits = (100, 1) if metric in PERCENT else (1, 1 if metric in ("best_epoch", "wall_s") else 3)
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def pct(pair: tuple[float, float], sign: str = "") -> str:
    """(value, 95% half-width) in points: "98.1 ± 0.2"; "–" when missing."""
    value, half = pair
    if not math.isfinite(value):
        return "–"
    return f"{100 * value:{sign}.2f}" + (f" ± {100 * half:.2f}" if math.isfinite(half) else " (1 seed)")


def add_heldout(lines: list[dict[str, Any]]) -> None:
    """Per line: held-out accuracy, paired difference to its reference, and the evaluation set's size."""
    by_name = {l["variant"]: l for l in lines}
    for l in lines:
        l["heldout_acc"] = heldout_accuracy(l["runs"])
        reference = by_name.get(l.get("reference", ""))
        l["diff"] = (math.nan, math.nan) if reference is None or reference is l else \
            paired_difference(l["runs"], reference["runs"])
        l["eval_n"] = next((r["heldout"]["n"] for r in scored(l["runs"])), None)


def write_report(lines: list[dict[str, Any]], bayes: dict[str, float] | None, out: Path, header: str,
                 seeds: int, probe_seed: int, effects: dict[str, Any], yardstick: dict[str, float] | None = None
                 ) -> str:
    """report.md, report.csv and the figures; returns the markdown. bayes: the exact Bayes accuracies (the
    built-in benchmark only); yardstick: the reference classifier's accuracy on the evaluation set (the user's
    data, where no Bayes limit is known)."""
    add_heldout(lines)
    complete = all(l["lr"] is not None and len(l["runs"]) == seeds for l in lines)
    runs = [r for l in lines for r in l["runs"] + l["probes"] if "finished_at" in r]
    if runs:  # the grid's own wall time, across invocations and parallel workers
        first = min(r["finished_at"] - (r["summary"].get("wall_time_s") or 0) for r in runs)
        header += (f" {len(runs)} runs on {', '.join(sorted({r.get('device', '?') for r in runs}))}, first "
                   f"start to last finish {(max(r['finished_at'] for r in runs) - first) / 60:.1f} min.")
    held, goal = heldout_bayes(lines), bool(bayes)
    evaluated = "held-out" if goal else "validation file"
    tested = any(math.isfinite(l["test_acc"][0]) for l in lines)
    md = ["# Ablation of the requested changes", "", header, ""]
    if not complete:
        md += ["**Incomplete grid**: rerun the same command to finish it.", ""]
    if bayes:
        md += ["Bayes limit (exact likelihood-ratio test on density): "
               + ", ".join(f"{k} {100 * v:.2f}%" for k, v in {**bayes, **held}.items()), ""]
    if yardstick:
        md += [f"Reference classifier (logistic regression on whitened density, reference.py) on the {evaluated}: "
               f"{pct((yardstick['acc'], yardstick['half_width']))}% ({yardstick['n']:,} images, 95% interval).", ""]
    md += [f"Accuracies in %. {evaluated.capitalize()}: mean over seeds ± the 95% interval (seed spread and image "
           f"sampling); Δ: paired difference to `after` on the same input and channels (same seeds, same images)."
           + (" Test: the test file, mean ± std over seeds." if tested else "")
           + (f" Goal: the scientist's {100 * GOAL:.0f}% (held-out, else test)." if goal else ""), ""]
    heads = ["configuration", "channels", "init", "lr", "seeds", f"{evaluated} acc", "Δ vs after"]
    heads += ["test acc", "test AUC"] if tested else []
    heads += ["train−val gap", "epochs to best", "wall s/run"] + ([f"≥ {100 * GOAL:.0f}%?"] if goal else [])
    md += effects_table(lines, effects, evaluated)
    md += ["All rows:", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for l in lines:
        diverged = sum(bool(r["summary"].get("diverged")) for r in l["runs"])
        cells = [l["config"], l["channels"], l["init"], "–" if l["lr"] is None else f"{l['lr']:g}",
                 f"{len(l['runs'])}" + (f" ({diverged} diverged)" if diverged else ""),
                 pct(l["heldout_acc"]), "reference" if l["reference"] == l["variant"] else pct(l["diff"], "+")]
        metrics = (("test_acc", "test_auc") if tested else ()) + ("gap_acc", "best_epoch", "wall_s")
        cells += [fmt(l[m], m) for m in metrics]
        if goal:
            reached = l["heldout_acc"][0] if math.isfinite(l["heldout_acc"][0]) else l["test_acc"][0]
            cells.append("–" if not math.isfinite(reached) else "yes" if reached >= GOAL else "no")
        md.append("| " + " | ".join(cells) + " |")
    above = [l["variant"] for l in lines if held and l["heldout_acc"][0] > held["held-out"]]
    if above:  # possible only through a leak on 20,000 images: look before trusting it
        md += ["", f"**Warning**: above the Bayes limit on the held-out set: {', '.join(above)}."]
    probed = [l for l in lines if l["probes"]]
    if probed:
        md += ["", f"Learning-rate probes (seed {probe_seed}, best validation log loss; * chosen):", ""]
    for l in probed:
        md.append(f"- {l['variant']}: " + ", ".join(
            f"{r['lr']:g}{'*' if r['lr'] == l['lr'] else ''} → " + (f"{r['summary']['best_val_loss']:.4f}"
            if r["summary"].get("best_val_loss") is not None else "diverged")
            for r in sorted(l["probes"], key=lambda r: r["lr"])))
    md += ["", "![accuracy](figures/accuracy.png)", ""]
    markdown = "\n".join(md)
    write_text(out / "report.md", markdown)
    write_csv(lines, out / "report.csv")
    marks = {f"Bayes limit {100 * held['held-out']:.2f}%": held["held-out"]} if held else \
        {f"reference classifier {100 * yardstick['acc']:.1f}%": yardstick["acc"]} if yardstick else {}
    plot_figures(lines, marks, out, evaluated)
    return markdown


def effects_table(lines: list[dict[str, Any]], effects: dict[str, Any], evaluated: str = "held-out") -> list[str]:
    """Markdown: each requested change's paired held-out effect (with it minus without it, same seeds), added to
    `before` and taken from `after`, on raw and whitened density without the date channel; [] without data."""
    runs = {l["variant"]: l["runs"] for l in lines}
    inputs = {"raw": "", "whitened": "+whiten"}

    def cell(pair: tuple[str, str], suffix: str) -> str:
        ours, theirs = (runs.get(f"{name}{suffix}/no-date", []) for name in pair)
        mean, half = paired_difference(ours, theirs)
        text = pct((mean, half), "+")
        return f"**{text}**" if math.isfinite(half) and abs(mean) > half else text

    rows = [[change] + [cell(pair, suffix) for suffix in inputs.values() for pair in both]
            for change, both in effects.items()]
    if all(c == "–" for row in rows for c in row[1:]):
        return []
    heads = ["requested change"] + [f"{where}, {name}" for name in inputs for where in ("on before", "in after")]
    return ([f"What each requested change does to {evaluated} accuracy, in points: the row with it minus the row "
             "without it, paired (same seeds, same images), 95% interval; **bold**: the interval excludes 0. "
             "Density only.", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def heldout_bayes(lines: list[dict[str, Any]]) -> dict[str, float]:
    """{"held-out": Bayes accuracy} when the runs were scored on the benchmark's held-out set."""
    bayes = next((r["heldout"].get("bayes_acc") for l in lines for r in scored(l["runs"])), None)
    return {} if bayes is None else {"held-out": bayes}


def write_csv(lines: list[dict[str, Any]], path: Path) -> None:
    """One row per variant: where its numbers come from (init, input, seeds, evaluation set) and the numbers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "config", "channels", "init", "whiten", "lr", "seeds", "eval_set", "eval_n",
                     "heldout_acc", "heldout_acc_ci95", "reference", "diff_vs_reference", "diff_ci95"]
                    + [f"{m}_{s}" for m in COLUMNS for s in ("mean", "std")])
    for l in lines:
        writer.writerow([l["variant"], l["config"], l["channels"], l["init"], l["whiten"],
                         "" if l["lr"] is None else l["lr"], len(l["runs"]),
                         "held-out" if l["eval_n"] else "", l["eval_n"] or ""]
                        + rounded([*l["heldout_acc"], l["reference"], *l["diff"], *(x for m in COLUMNS for x in l[m])]))
    write_text(path, buffer.getvalue())


def plot_figures(lines: list[dict[str, Any]], marks: dict[str, float], out: Path, evaluated: str = "held-out"
                 ) -> None:
    """Learning curves per variant; a forest plot of the accuracy on the evaluation set and the paired difference
    to `after` (95% intervals; the test file's mean ± std where no run was scored), `marks` drawn across."""
    for l in lines:
        plot_loss_curves(out / "figures" / f"curves_{l['variant'].replace('/', '_')}.png",
                         {f"seed {r['seed']}": r["history"] for r in l["runs"]}, f"{l['variant']}  lr {l['lr']}")
    held = any(l["eval_n"] for l in lines)
    title = f"{evaluated if held else 'test'} accuracy, %" + (" (95% interval)" if held else " (mean ± std)")
    panels = {title: ([l["heldout_acc"] if held else l["test_acc"] for l in lines], marks if held else {})}
    if held:
        panels["Δ vs after, points (paired, 95%)"] = ([l["diff"] for l in lines], {"no difference": 0.0})
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels) + 2, 0.28 * len(lines) + 1.5),
                                  sharey=True, squeeze=False)
    y = np.arange(len(lines))[::-1]
    for ax, (title, (pairs, references)) in zip(axes[0], panels.items()):
        values, halves = (100 * np.array(column, float) for column in zip(*pairs))
        ax.errorbar(values, y, xerr=np.nan_to_num(halves), fmt="o", markersize=3, capsize=2)
        for (label, x), style in zip(references.items(), ("r--", "k:")):
            ax.axvline(100 * x, color=style[0], linestyle=style[1:], label=label)
        ax.set_title(title, fontsize=9), ax.grid(axis="x", alpha=0.3)
        if references:
            ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_yticks(y, [l["variant"] for l in lines], fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "figures" / "accuracy.png")


def plot_loss_curves(path: str | Path, runs: dict[str, list[dict[str, float]]], title: str = "") -> Path:
    """Train (solid) vs validation (dashed) log loss per epoch, one colour per run (e.g. per seed)."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for i, (label, history) in enumerate(runs.items()):
        epochs = [r["epoch"] for r in history]
        ax.plot(epochs, [r["train_loss"] for r in history], color=f"C{i}", label=f"{label} train")
        ax.plot(epochs, [r["val_loss"] for r in history], "--", color=f"C{i}", label=f"{label} validation")
    ax.set_xlabel("epoch"), ax.set_ylabel("log loss (BCE)"), ax.set_title(title)
    if runs:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
