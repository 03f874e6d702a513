"""The ablation report of compare.py: mean ± std tables (markdown, CSV) and figures from finished runs."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from fileio import write_text
from report import plot_bars, plot_loss_curves

GOAL = 0.83  # the scientist's target test accuracy

METRICS = {  # column -> (heading, how to read it from a row)
    "best_val_acc": ("best val acc", lambda r: max((h["val_acc"] for h in r["history"]), default=None)),
    "val_acc": ("val acc (ckpt)", lambda r: r["summary"].get("val_acc")),
    "test_acc": ("test acc", lambda r: r["summary"].get("test_acc")),
    "test_auc": ("test AUC", lambda r: r["summary"].get("test_auc")),
    "val_auc": ("val AUC", lambda r: r["summary"].get("val_auc")),
    "gap_acc": ("train−val acc gap (end)", lambda r: r["summary"].get("final_gap_acc")),
    "train_loss": ("train loss (end)", lambda r: r["summary"].get("final_train_loss")),
    "best_epoch": ("epochs to best", lambda r: r["summary"].get("best_epoch")),
    "wall_s": ("wall s/run", lambda r: r["summary"].get("wall_time_s")),
}
TABLE = ("best_val_acc", "test_acc", "test_auc", "gap_acc", "train_loss", "best_epoch", "wall_s")
PERCENT = ("best_val_acc", "val_acc", "test_acc", "gap_acc")


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


def write_report(lines: list[dict[str, Any]], bayes: dict[str, float] | None, out: Path, header: str,
                 seeds: int, probe_seed: int, channel_tags: tuple[str, ...]) -> str:
    """report.md, report.csv and the figures; returns the markdown."""
    complete = all(l["lr"] is not None and len(l["runs"]) == seeds for l in lines)
    runs = [r for l in lines for r in l["runs"] + l["probes"] if "finished_at" in r]
    if runs:  # the grid's own wall time, across invocations and parallel workers
        first = min(r["finished_at"] - (r["summary"].get("wall_time_s") or 0) for r in runs)
        header += (f" {len(runs)} runs on {', '.join(sorted({r.get('device', '?') for r in runs}))}, first "
                   f"start to last finish {(max(r['finished_at'] for r in runs) - first) / 60:.1f} min.")
    has_test = any(math.isfinite(l["test_acc"][0]) for l in lines)
    goal_metric = "test_acc" if has_test else "val_acc"
    md = ["# Ablation of the requested changes", "", header, ""]
    if not complete:
        md += ["**Incomplete grid**: rerun the same command to finish it.", ""]
    if bayes:
        md += ["Bayes limit (exact likelihood-ratio test on density): "
               + ", ".join(f"{k} {100 * v:.1f}%" for k, v in bayes.items()), ""]
    md += [f"Accuracies in %, mean ± std over seeds at each configuration's chosen learning rate. Goal: "
           f"{100 * GOAL:.0f}% {goal_metric.split('_')[0]} accuracy.", ""]
    heads = ["configuration", "channels", "lr", "seeds"] + [METRICS[m][0] for m in TABLE] + ["≥ 83%?"]
    md += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for l in lines:
        diverged = sum(bool(r["summary"].get("diverged")) for r in l["runs"])
        cells = [l["config"], l["channels"], "–" if l["lr"] is None else f"{l['lr']:g}",
                 f"{len(l['runs'])}" + (f" ({diverged} diverged)" if diverged else "")]
        cells += [fmt(l[m], m) for m in TABLE] + ["yes" if l[goal_metric][0] >= GOAL else "no"]
        md.append("| " + " | ".join(cells) + " |")
    if bayes and "test" in bayes and has_test:
        md += ["", "Model vs Bayes limit (test): " + "; ".join(
            f"{l['variant']} {100 * l['test_acc'][0]:.1f}% vs {100 * bayes['test']:.1f}%"
            for l in lines if math.isfinite(l["test_acc"][0]))]
        above = [l["variant"] for l in lines if l["test_acc"][0] > bayes["test"]]
        if above:  # possible only by chance on a small test set, or through a leak: look before trusting it
            md += ["", f"**Warning**: above the Bayes limit on test: {', '.join(above)}."]
    md += ["", f"Learning-rate probes (seed {probe_seed}, best validation log loss; * chosen):", ""]
    for l in lines:
        md.append(f"- {l['variant']}: " + ", ".join(
            f"{r['lr']:g}{'*' if r['lr'] == l['lr'] else ''} → " + (f"{r['summary']['best_val_loss']:.4f}"
            if r["summary"].get("best_val_loss") is not None else "diverged")
            for r in sorted(l["probes"], key=lambda r: r["lr"])))
    md += ["", "![accuracy](figures/accuracy.png)", ""]
    markdown = "\n".join(md)
    write_text(out / "report.md", markdown)
    write_csv(lines, out / "report.csv")
    plot_figures(lines, bayes, out, goal_metric, channel_tags)
    return markdown


def write_csv(lines: list[dict[str, Any]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "config", "channels", "lr", "seeds"]
                    + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
    for l in lines:
        writer.writerow([l["variant"], l["config"], l["channels"], "" if l["lr"] is None else l["lr"],
                         len(l["runs"])] + [f"{x:.6g}" for m in METRICS for x in l[m]])
    write_text(path, buffer.getvalue())


def plot_figures(lines: list[dict[str, Any]], bayes: dict[str, float] | None, out: Path, metric: str,
                 channel_tags: tuple[str, ...]) -> None:
    """Learning curves per variant (all seeds), and mean ± std accuracy per configuration with/without date."""
    for l in lines:
        plot_loss_curves(out / "figures" / f"curves_{l['variant'].replace('/', '_')}.png",
                         {f"seed {r['seed']}": r["history"] for r in l["runs"]}, f"{l['variant']}  lr {l['lr']}")
    configs = list(dict.fromkeys(l["config"] for l in lines))
    by_name = {l["variant"]: l[metric] for l in lines}
    series = {tag: [by_name.get(f"{c}/{tag}", (math.nan, math.nan)) for c in configs] for tag in channel_tags}
    split = "test" if metric == "test_acc" else "valid"
    references = {f"Bayes limit {100 * bayes[split]:.1f}%": bayes[split]} if bayes and split in bayes else {}
    references[f"goal {100 * GOAL:.0f}%"] = GOAL
    plot_bars(out / "figures" / "accuracy.png", configs, series, references,
              f"{split} accuracy (mean ± std over seeds)")
