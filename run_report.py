"""What a finished run adds so that a scientist can trust it, and the one page that shows it all (report.md).

After training, `assess` fits the temperature on the validation logits (metrics.py), fits the reference
classifier (reference.py) as a yardstick, describes the training set and checks the test split against it
(drift.py), maps what the model reads over Fourier modes (sensitivity.py), and draws the figures (report.py).
`write_page` puts the summary numbers and every figure of the run folder into report.md. The training
description, the test split's drift flags and the exact likelihood ratios come with the data (data.load_data).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import drift
import metrics
import reference
from config import Config
from data import SPLIT_FILES, DeviceData
from fileio import rounded, write_text
from report import plot_drift, plot_reliability, plot_roc_and_confusion, plot_sensitivity
from sensitivity import (SENSITIVITY_IMAGES, bayes_sensitivity, channel_importance, map_correlation,
                         mode_sensitivity)
from metrics import roc_auc
from symmetry import Views

SPLIT_NAMES = {"valid": "validation", "test": "test"}


@dataclass
class Assessment:
    """What finish writes: calibrated test probabilities and drift flags, entries for best.pt and summary.json,
    the Bayes lines of the learning curves, and lines for the log."""
    test_probabilities: np.ndarray
    test_flags: np.ndarray | None
    checkpoint: dict[str, Any]
    summary: dict[str, Any]
    bayes_curves: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # shifted by the fitted offset: what is predicted


def assess(run_dir: Path, model: nn.Module, cfg: Config, data: DeviceData, info: dict[str, Any],
           logits: dict[str, np.ndarray]) -> Assessment:
    """Calibration, drift check of the test split, sensitivity map and their figures, for the restored best model;
    `logits`: its (view-averaged) logits of the validation and test splits."""
    labels = {name: None if data.y[name] is None else data.y[name].cpu().numpy() for name in ("train", "valid", "test")}
    prior = metrics.reference_prior(data.symmetry.swaps, labels["train"])
    # with the digits of every written score (fileio.rounded): best.pt and summary.json hold the same T and c;
    # an antisymmetric view average (a swapping partner) has no offset to fit (metrics.py)
    temperature, offset = rounded(metrics.fit_calibration(
        logits["valid"], labels["valid"], metrics.prior_weights(labels["valid"], prior),
        offset=not data.symmetry.swaps))
    raw_logits, logits = logits, {name: z + offset for name, z in logits.items()}  # shifted: what is predicted
    yardstick, yard_summary, yard_note = compare_with_reference(data, logits, cfg.seed, info["data_dir"])
    llr = data.bayes_llr
    probabilities = {name: metrics.calibrated(z, temperature) for name, z in logits.items()}
    plot_reliability(run_dir / "reliability.png", reliability_panels(raw_logits, labels, temperature, offset, prior))
    plot_roc_and_confusion(run_dir / "roc_confusion.png", {
        SPLIT_NAMES[n]: (probabilities[n], labels[n], roc_auc(torch.from_numpy(probabilities[n]),
                                                               torch.from_numpy(labels[n])))
        for n in ("valid", "test") if labels[n] is not None})
    result = Assessment(probabilities["test"], None,
                        {"calibration": {"temperature": temperature, "offset": offset, "prior_state_1": prior,
                                         "fitted_on": "valid"}},
                        {"calibration": calibrate_summary(raw_logits, labels, temperature, offset, prior, llr),
                         "reference": yard_summary}, logits=logits)
    bound = metrics.at_bound(temperature)
    if bound:
        result.summary["calibration"]["not_calibrated"] = bound
        result.notes.append(f"WARNING: the calibration temperature {temperature:g} is at the end of its search "
                            f"range: {bound}")
    if yard_note:
        result.notes.append(yard_note)
    if llr:  # the Bayes lines of the learning curves: the exact posterior's validation log loss and accuracy
        result.bayes_curves = {"val_loss": metrics.log_loss(metrics.bayes_posterior(llr["valid"], prior),
                                                                labels["valid"]),
                               "val_acc": info["bayes_accuracy"]["valid"]}
    check_test_split(run_dir, data, result)
    if "density" in info["channels"]:
        result.summary["sensitivity"] = map_sensitivity(run_dir, model, cfg, data, info, temperature, yardstick)
    return result


def compare_with_reference(data: DeviceData, logits: dict[str, np.ndarray], seed: int, data_dir: str = "DIR"
                           ) -> tuple[reference.Reference, dict[str, Any], str]:
    """The reference classifier on the run's own inputs: its validation and test accuracy, the paired gap to the
    model on validation, and a WARNING line when the model trails it by more than reference.Z_SHORT standard
    errors."""
    model, l2 = reference.fit_reference(data.x["train"], data.y["train"], seed)
    out: dict[str, Any] = {"classifier": "logistic regression on pixels, mode power and log mode power", "l2": l2}
    gap = se = None
    for name in ("valid", "test"):
        if data.y[name] is None:
            continue
        y = data.y[name].cpu()
        right = (reference.logits(model, data.x[name]).cpu() > 0).float() == y
        out[f"{name}_acc"] = float(right.float().mean())
        if name == "valid":
            gap, se = reference.paired_gap(right, (torch.from_numpy(logits["valid"]) > 0).float() == y)
            out["valid_gap"], out["valid_gap_se"] = gap, se
    note = ""
    if gap is not None and gap > reference.Z_SHORT * se:
        note = (f"WARNING: the model's validation accuracy is {100 * gap:.1f} ± {100 * se:.1f} points below the "
                f"reference classifier's ({out['valid_acc']:.4f}, a logistic regression on the same inputs); try "
                f"python -m tools.compare --data-dir {data_dir} to see which settings help, --model cnn, or another "
                f"--optimizer or --lr")
    return model, out, note


def check_test_split(run_dir: Path, data: DeviceData, result: Assessment) -> None:
    """The test split against the training description (both from load_data): drift.png and `result`."""
    if data.drift is None:  # possible with --no-whiten only
        result.notes.append("note: the training density has values <= 0, so it has no log-density to describe: "
                            "no drift check")
        return
    reference, checked = data.drift, data.test_drift
    plot_drift(run_dir / "drift.png", reference, {"test split": checked.rings}, checked.outside)
    result.test_flags, result.checkpoint["drift"] = checked.flags, reference
    result.summary["drift"] = {"test": checked.summary()}
    if checked.warn:
        result.notes.append(drift.warning_line(checked, f"the test split ({SPLIT_FILES['test']})"))


def calibrate_summary(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray | None], temperature: float,
                      offset: float, prior: float, llr: dict[str, np.ndarray]) -> dict[str, Any]:
    """Temperature, and per split before/after calibration: ECE and log loss (labelled splits, reweighted to the
    reference prior), mean |p - p_Bayes| (the built-in benchmark)."""
    out: dict[str, Any] = {"temperature": temperature, "offset": offset, "prior_state_1": prior,
                           "ece_bins": metrics.ECE_BINS}
    for name, z in logits.items():
        before, after = metrics.calibrated(z), metrics.calibrated(z + offset, temperature)
        row: dict[str, Any] = {}
        if labels[name] is not None:
            w = metrics.prior_weights(labels[name], prior)
            row["ece"] = {"before": metrics.expected_calibration_error(before, labels[name], w),
                          "after": metrics.expected_calibration_error(after, labels[name], w)}
            row["log_loss"] = {"before": metrics.log_loss(before, labels[name], w),
                               "after": metrics.log_loss(after, labels[name], w)}
        if name in llr:
            exact = metrics.bayes_posterior(llr[name], prior)
            row["mean_abs_diff_bayes"] = {"before": float(np.mean(np.abs(before - exact))),
                                          "after": float(np.mean(np.abs(after - exact)))}
        out[name] = row
    return out


def reliability_panels(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray | None], temperature: float,
                       offset: float, prior: float) -> dict[str, dict[str, dict]]:
    """Reliability tables before and after calibration, per labelled split, each labelled with its ECE."""
    panels: dict[str, dict[str, dict]] = {}
    after = f"after calibration (T = {temperature:.3g}" + (f", c = {offset:.3g})" if offset else ")")
    for title, t, c in (("before calibration", 1.0, 0.0), (after, temperature, offset)):
        panels[title] = {}
        for name in ("valid", "test"):
            if labels[name] is None:
                continue
            p, w = metrics.calibrated(logits[name] + c, t), metrics.prior_weights(labels[name], prior)
            ece = metrics.expected_calibration_error(p, labels[name], w)
            panels[title][f"{SPLIT_NAMES[name]} (ECE {ece:.2%})"] = metrics.reliability(p, labels[name], w)
    return panels


def map_sensitivity(run_dir: Path, model: nn.Module, cfg: Config, data: DeviceData, info: dict[str, Any],
                    temperature: float, yardstick: nn.Module) -> dict[str, Any]:
    """sensitivity.png and its numbers: the model's map in calibrated log-odds beside the exact likelihood
    ratio's on the built-in benchmark, and beside the reference classifier's elsewhere (no exact one is
    known there); each panel on its own colour scale."""
    channel = info["channels"].index("density")
    views = data.symmetry.views
    model_map = mode_sensitivity(model, data.x["valid"], channel, views) / temperature
    if info["source"] == "synthetic":
        other, compared_with = bayes_sensitivity(model_map.shape[-1]), "exact likelihood ratio"
    else:
        other, compared_with = mode_sensitivity(yardstick, data.x["valid"], channel), "reference classifier"
    r = map_correlation(model_map, other)
    slope = float((model_map * other).sum() / max((other**2).sum(), 1e-30))
    effect = {name: change / temperature  # in calibrated log-odds, as the map
              for name, change in zip(info["channels"], channel_importance(model, data.x["valid"], views))}
    title = (f"{cfg.model}, channels {','.join(info['channels'])}: correlation with the {compared_with} {r:.3f}"
             + (f", scale {slope:.2f}" if info["source"] == "synthetic" else "")
             + ("\nmean change of the log-odds when a channel is swapped between images: "
                + ", ".join(f"{k} {v:.3g}" for k, v in effect.items()) if len(effect) > 1 else ""))
    plot_sensitivity(run_dir / "sensitivity.png", {compared_with: other, "model": model_map}, title)
    out = {"correlation": r, "channel_effect": effect, "images": min(SENSITIVITY_IMAGES, len(data.x["valid"])),
           "compared_with": compared_with}
    if info["source"] == "synthetic":
        out["scale_vs_bayes"] = slope
    return out


def trust_line(summary: dict[str, Any]) -> str:
    """The end-of-run line's part on calibration (ECE, |p - p_Bayes|), drift flags and the sensitivity map."""
    cal = summary["calibration"]
    parts = [f"calibration T {cal['temperature']:.3g}"]
    for split in ("valid", "test"):
        if "ece" in cal[split]:
            parts.append(f"{split} ECE {cal[split]['ece']['before']:.2%} -> {cal[split]['ece']['after']:.2%}")
    if "mean_abs_diff_bayes" in cal["test"]:
        diff = cal["test"]["mean_abs_diff_bayes"]
        parts.append(f"test |p - p_Bayes| {diff['before']:.4f} -> {diff['after']:.4f}")
    ref = summary["reference"]
    parts.append("reference classifier " + " ".join(f"{n} acc {ref[f'{n}_acc']:.4f}" for n in ("valid", "test")
                                                    if f"{n}_acc" in ref))
    if "drift" in summary:
        parts.append(f"test drift flags {summary['drift']['test']['share_flagged']:.1%}")
    if "sensitivity" in summary:
        sens = summary["sensitivity"]
        parts.append(f"sensitivity vs {'Bayes' if sens['compared_with'] == 'exact likelihood ratio' else 'reference'}"
                     f" r {sens['correlation']:.3f}")
    return ", ".join(parts)


# ---- the page --------------------------------------------------------------------------------------------

def percent(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def number(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def before_after(row: dict[str, Any], key: str, show=percent) -> str:
    return f"{show(row[key]['before'])} → {show(row[key]['after'])}" if key in row else "–"


def wall_time_text(summary: dict[str, Any]) -> str:
    """The run's wall time: `85.2 s` in one attempt, or after a resume the total and each attempt's,
    `651.0 s over 2 attempts (612.0 s, 39.0 s)`."""
    attempts = summary["attempt_seconds"]
    if len(attempts) < 2:
        return f"{summary['wall_time_s']} s"
    each = ", ".join("not recorded" if t is None else f"{t} s" for t in attempts)
    return f"{summary['wall_time_s']} s over {len(attempts)} attempts ({each})"


def write_page(run_dir: Path, summary: dict[str, Any]) -> Path:
    """report.md: the summary numbers and every figure of the run, so that one file tells the story."""
    cal = summary["calibration"]
    valid, test = cal.get("valid", {}), cal.get("test", {})
    bayes, ref = summary.get("bayes_accuracy", {}), summary["reference"]
    data = ("the built-in benchmark" if summary["data_source"] == "synthetic" else "the files") + \
        f" in {summary['data_dir']}"
    views = summary["views"]
    lines = [f"# Run {Path(run_dir).name}", "",
             f"Data: {data} (channels {', '.join(summary['channels'])}); best epoch {summary['best_epoch']} of "
             f"{summary['epochs_run']} run; {wall_time_text(summary)}."
             + (f" Training diverged: {summary['diverged']}." if summary.get("diverged") else ""), "",
             f"Scores of the best epoch's model with all {views} test-time view{'s' * (views > 1)} per image (the "
             f"learning curves' validation uses the views of --epoch-views).", "",
             "| | validation | test |", "|---|---|---|",
             f"| accuracy | {percent(summary['val_acc'])} | {percent(summary.get('test_acc'))} |",
             f"| reference classifier (logistic regression on the same inputs) | {percent(ref.get('valid_acc'))} | "
             f"{percent(ref.get('test_acc'))} |"]
    if bayes:
        lines.append(f"| Bayes limit (exact likelihood ratio) | {percent(bayes.get('valid'))} | "
                     f"{percent(bayes.get('test'))} |")
    lines += [f"| ROC AUC | {number(summary['val_auc'])} | {number(summary.get('test_auc'))} |",
              f"| log loss, before → after calibration | {before_after(valid, 'log_loss', number)} | "
              f"{before_after(test, 'log_loss', number)} |",
              f"| ECE ({cal['ece_bins']} bins), before → after | {before_after(valid, 'ece')} | "
              f"{before_after(test, 'ece')} |"]
    if "mean_abs_diff_bayes" in test:
        lines.append(f"| mean abs(p − p_Bayes), before → after | {before_after(valid, 'mean_abs_diff_bayes', number)}"
                     f" | {before_after(test, 'mean_abs_diff_bayes', number)} |")
    lines += ["", f"Written probabilities are sigmoid((logit + c) / T) with T = {cal['temperature']:.4g} and c = "
              f"{cal['offset']:.4g}, fitted on validation; they refer to a share of state 1 of "
              f"{cal['prior_state_1']:.3g} (validation is reweighted to it). The 0/1 predictions do not depend on T; "
              f"c (fitted only where no symmetry swaps the state) moves their threshold. Accuracies are those of the "
              f"written 0/1 predictions; log losses and AUC are of the raw logits."
              + (f" **Not calibrated:** T is at the end of its search range: {cal['not_calibrated']}."
                 if cal.get("not_calibrated") else ""), ""]
    if "valid_gap" in ref:
        lines += [f"The reference classifier's validation accuracy minus the model's: {100 * ref['valid_gap']:+.1f} "
                  f"± {100 * ref['valid_gap_se']:.1f} points (paired, one standard error).", ""]
    lines += symmetry_section(summary["symmetry"])
    lines += ["## Learning curves", "", "![learning curves](curves.png)", "",
              "## Calibration", "", "![reliability diagram](reliability.png)", "",
              "## ROC curve and confusion matrix at 0.5", "", "![ROC and confusion](roc_confusion.png)", ""]
    lines += drift_section(summary.get("drift"))
    lines += sensitivity_section(summary.get("sensitivity"))
    return write_text(Path(run_dir) / "report.md", "\n".join(lines) + "\n")


def symmetry_section(plan: dict[str, Any]) -> list[str]:
    """Which symmetries the training data showed (z of each rule) and what augmentation and the views used."""
    found, lines = plan.get("found") or {}, ["## Symmetries of the training data", ""]
    used = plan["augment"]
    lines.append("Augmentation used: " + (", ".join(used["keep"][1:] + [f"{n} (swaps the state)" for n in used["swap"]]
                                                    + (["periodic shifts"] if used["shifts"] else [])) or "none")
                 + "; test-time views: " + ("none" if plan["views"] is None else ", ".join(
                     f"{n}{' (negated)' if s else ''}" for n, s in plan["views"]["rules"])
                     + f" at {plan['views']['shifts'] ** 2} shift(s) each") + ".")
    if not found:
        return lines + ["", "The check did not run (too few training images of a state), so no symmetry was "
                        "assumed unless forced.", ""]
    lines += ["", f"Each rule was tested on {sum(found['images'].values()):,} training images: z is how many standard "
              f"errors the class-mean statistics move under the symmetry (one-sided, normal under the rule); a rule "
              f"holds while z < {found['z_threshold']:.2f}, so a true symmetry is rejected with probability at most "
              f"{found['false_alarm']:.0%} over all {found['tests']} tests.", "",
              "| symmetry | z if it keeps the state | z if it swaps the state | verdict |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['keep_z']:.1f} | {r['swap_z']:.1f} | {r['verdict']} |"
              for name, r in found["elements"].items()]
    lines.append(f"| periodic shifts | {found['shifts']['keep_z']:.1f} | – | {found['shifts']['verdict']} |")
    return lines + [""]


def drift_section(result: dict[str, Any] | None) -> list[str]:
    lines = ["## Drift check (test split against the training set)", ""]
    if result is None:
        return lines + ["Not run: the training density has values ≤ 0.", ""]
    test = result["test"]
    verdict = "WARNING: more than 1 % flagged" if test["warning"] else "no warning"
    lines += [f"{percent(test['share_flagged'])} of {test['n']} test samples lie outside the training data's range "
              f"({verdict}; a fresh training-like sample is flagged with probability {drift.FALSE_FLAG_RATE:.2%})."
              + ("" if not test["flagged_by"] else " Flagged mainly by: " + ", ".join(
                  f"{k} ({percent(v)})" for k, v in test["flagged_by"].items()) + "."), "",
              "| feature | below the training 0.1 % | above the training 99.9 % |", "|---|---|---|"]
    lines += [f"| {name.replace('|', '&#124;')} | {percent(side['below'])} | {percent(side['above'])} |"
              for name, side in test["outside_training_range"].items()]
    return lines + ["", "![drift check](drift.png)", ""]


def sensitivity_section(result: dict[str, Any] | None) -> list[str]:
    lines = ["## What the model learned", ""]
    if result is None:
        return lines + ["No density channel: no map over its Fourier modes.", ""]
    lines.append(f"Sensitivity of the calibrated log-odds to the amplitude of each Fourier mode of density, "
                 f"averaged over {result['images']} validation images, beside that of the "
                 f"{result['compared_with']} (each on its own colour scale): correlation {result['correlation']:.3f}"
                 + (f", scale {result['scale_vs_bayes']:.2f} (1 = the same strength)" if "scale_vs_bayes" in result
                    else "") + ".")
    if len(result["channel_effect"]) > 1:
        lines.append("Mean change of the calibrated log-odds when one channel is swapped between images: " + ", ".join(
            f"{k} {v:.3g}" for k, v in result["channel_effect"].items()) + ".")
    return lines + ["", "![sensitivity map](sensitivity.png)", ""]
