"""report.md and figures/accuracy.png of compare.py's grid from results.jsonl: per row the mean over seeds with a 95%
interval, and the paired difference to `after` (same seeds, same images; docs/evaluation.md)."""

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np

from fileio import write_text
from report import pyplot, save_figure, table

GOAL = 0.83  # the scientist's target test accuracy, shown on the built-in benchmark that stands in for their data
COLUMNS = {"test_acc": ("test_acc", "test acc"), "test_auc": ("test_auc", "test AUC"),
           "gap_acc": ("final_gap_acc", "train−val gap"), "best_epoch": ("best_epoch", "epochs to best"),
           "wall_s": ("wall_time_s", "wall s/run")}  # column: (summary.json key, heading), mean ± std over seeds
PERCENT = ("test_acc", "gap_acc")
T975 = (math.nan, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # by degrees of freedom
Z95 = 1.96  # beyond 10 degrees of freedom


def pack(correct: np.ndarray) -> str:
    """Per-image correctness as base64 of packed bits: 20,000 images in 3.4 kB."""
    return base64.b64encode(np.packbits(correct.astype(bool))).decode()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:n].astype(bool)


def correctness(runs: list[dict[str, Any]]) -> np.ndarray:
    """(seeds, images) 0/1 floats: which held-out images each run classified right."""
    return np.stack([unpack(r["heldout"]["correct"], r["heldout"]["n"]) for r in runs]).astype(float)


def interval(per_image: np.ndarray) -> tuple[float, float]:
    """Mean over seeds of (seeds, images) scores, 95% half-width: seed spread and image sampling in quadrature."""
    k, n = per_image.shape
    per_seed = per_image.mean(axis=1)
    t = T975[k - 1] if k - 1 < len(T975) else Z95
    seeds = t * per_seed.std(ddof=1) / math.sqrt(k) if k > 1 else math.nan
    images = Z95 * per_image.mean(axis=0).std(ddof=1) / math.sqrt(n)
    return float(per_seed.mean()), float(math.hypot(seeds, images))


def heldout_accuracy(runs: list[dict[str, Any]]) -> tuple[float, float]:
    """Held-out accuracy: mean over seeds and 95% half-width; NaNs without held-out scores."""
    runs = [r for r in runs if r.get("heldout")]
    return interval(correctness(runs)) if runs else (math.nan, math.nan)


def paired_difference(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[float, float]:
    """Held-out accuracy minus the reference's, seed by seed on the same images: mean and 95% half-width."""
    by_seed = {r["seed"]: r for r in reference if r.get("heldout")}
    pairs = [(r, by_seed[r["seed"]]) for r in runs if r.get("heldout") and r["seed"] in by_seed]
    if not pairs:
        return math.nan, math.nan
    return interval(correctness([a for a, _ in pairs]) - correctness([b for _, b in pairs]))


def metrics(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and sample std over seeds of each of COLUMNS (a diverged run without a value is left out)."""
    out = {}
    for column, (key, _) in COLUMNS.items():
        x = np.array([r["summary"].get(key) for r in runs], float)  # None: NaN
        x = x[np.isfinite(x)]
        std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
        out[column] = (float(x.mean()), std) if len(x) else (math.nan, math.nan)
    return out


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


def write_report(lines: list[dict[str, Any]], out: Path, header: str, seeds: int, effects: dict[str, Any],
                 yardstick: dict[str, float] | None = None) -> str:
    """report.md and figures/accuracy.png; returns the markdown. yardstick: the reference classifier's score."""
    runs_of = {l["variant"]: l["runs"] for l in lines}
    for l in lines:  # a row is no reference for itself
        l["heldout_acc"] = heldout_accuracy(l["runs"])
        reference = [] if l["reference"] == l["variant"] else runs_of.get(l["reference"], [])
        l["diff"] = paired_difference(l["runs"], reference)
    complete = all(len(l["runs"]) == seeds for l in lines)
    runs = [r for l in lines for r in l["runs"] if "finished_at" in r]
    if runs:  # the grid's own wall time, across invocations and parallel workers
        first = min(r["finished_at"] - (r["summary"].get("wall_time_s") or 0) for r in runs)
        header += (f" {len(runs)} runs on {', '.join(sorted({r.get('device', '?') for r in runs}))}, first "
                   f"start to last finish {(max(r['finished_at'] for r in runs) - first) / 60:.1f} min.")
    # the benchmark's held-out set carries its exact Bayes accuracy; the user's data has none
    bayes = next((r["heldout"].get("bayes_acc") for l in lines for r in l["runs"] if r.get("heldout")), None)
    evaluated = "held-out" if bayes else "validation file"
    tested = any(math.isfinite(l["test_acc"][0]) for l in lines)
    md = ["# Ablation of the requested changes", "", header, ""]
    if not complete:
        md += ["**Incomplete grid**: rerun the same command to finish it.", ""]
    if bayes:
        md += [f"Bayes limit (exact likelihood-ratio test on density) on the held-out set: {100 * bayes:.2f}%", ""]
    if yardstick:
        md += [f"Reference classifier (logistic regression on whitened density, reference.py) on the {evaluated}: "
               f"{pct((yardstick['acc'], yardstick['half_width']))}% ({yardstick['n']:,} images, 95% interval).", ""]
    md += [f"Accuracies in %. {evaluated.capitalize()}: mean over seeds ± the 95% interval (seed spread and image "
           f"sampling); Δ: paired difference to `after` on the same input and channels (same seeds, same images)."
           + (" Test: the test file, mean ± std over seeds." if tested else "")
           + (f" Goal: the scientist's {100 * GOAL:.0f}% (held-out, else test)." if bayes else ""), ""]
    shown = (("test_acc", "test_auc") if tested else ()) + ("gap_acc", "best_epoch", "wall_s")
    heads = ["configuration", "channels", "init", "lr", "seeds", f"{evaluated} acc", "Δ vs after",
             *(COLUMNS[m][1] for m in shown)] + ([f"≥ {100 * GOAL:.0f}%?"] if bayes else [])
    rows = []
    for l in lines:
        diverged = sum(bool(r["summary"].get("diverged")) for r in l["runs"])
        cells = [l["config"], l["channels"], l["init"], f"{l['lr']:g}",
                 f"{len(l['runs'])}" + (f" ({diverged} diverged)" if diverged else ""),
                 pct(l["heldout_acc"]), "reference" if l["reference"] == l["variant"] else pct(l["diff"], "+")]
        cells += [fmt(l[m], m) for m in shown]
        if bayes:
            reached = l["heldout_acc"][0] if math.isfinite(l["heldout_acc"][0]) else l["test_acc"][0]
            cells.append("–" if not math.isfinite(reached) else "yes" if reached >= GOAL else "no")
        rows.append(cells)
    md += effects_table(lines, effects, evaluated) + ["All rows:", ""] + table(heads, rows)
    above = [l["variant"] for l in lines if bayes and l["heldout_acc"][0] > bayes]
    if above:  # possible only through a leak on 20,000 images: look before trusting it
        md += [f"**Warning**: above the Bayes limit on the held-out set: {', '.join(above)}.", ""]
    md += ["![accuracy](figures/accuracy.png)", ""]
    markdown = "\n".join(md)
    write_text(out / "report.md", markdown)
    marks = {f"Bayes limit {100 * bayes:.2f}%": bayes} if bayes else \
        {f"reference classifier {100 * yardstick['acc']:.1f}%": yardstick["acc"]} if yardstick else {}
    plot_accuracy(lines, marks, out / "figures" / "accuracy.png", evaluated)
    return markdown


def effects_table(lines: list[dict[str, Any]], effects: dict[str, Any], evaluated: str = "held-out") -> list[str]:
    """Markdown: each change's paired effect, added to `before` and taken from `after`; [] without data."""
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
             "Density only.", ""] + table(heads, rows))


def plot_accuracy(lines: list[dict[str, Any]], marks: dict[str, float], path: Path, evaluated: str) -> None:
    """A forest plot of the accuracy and the paired difference to `after` (95% intervals), `marks` drawn across."""
    panels = {f"{evaluated} accuracy, % (95% interval)": ([l["heldout_acc"] for l in lines], marks),
              "Δ vs after, points (paired, 95%)": ([l["diff"] for l in lines], {"no difference": 0.0})}
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 0.28 * len(lines) + 1.5), sharey=True, squeeze=False)
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
    save_figure(fig, path)
