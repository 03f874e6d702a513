"""The end of a run: calibration, the yardstick, the drift check and the sensitivity map of the best model, and
what they leave for a person: metrics.csv, predictions, figures and report.md."""

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import drift
import metrics
import reference
import synthetic
from config import Config
from data import SPLIT_FILES, DeviceData
from fileio import atomic_write, rounded, save_torch, write_json, write_text
from symmetry import SymmetryPlan, view_averaged_logits
from train import TrainState, predict_logits

SPLIT_NAMES = {"valid": "validation", "test": "test"}
SENSITIVITY_IMAGES = 512  # validation images averaged: the map's noise is a few % of its peak
SENSITIVITY_BATCH = 64


def finish(run_dir: Path, cfg: Config, data: DeviceData, info: dict[str, Any], model: nn.Module, state: TrainState,
           attempts: list[float], diverged: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score best.pt with all views; calibrate, compare with the yardstick, check drift and map sensitivity; write
    the predictions, figures, summary.json and report.md."""
    best = torch.load(run_dir / "best.pt", weights_only=True)  # written by this run
    model.load_state_dict(best["model"])
    # the best epoch was picked with the unshifted views; the final scores use all
    logits = {name: predict_logits(model, data.x[name], data.symmetry).cpu().numpy() for name in ("valid", "test")}
    labels = {name: None if data.y[name] is None else data.y[name].cpu().numpy() for name in ("train", "valid", "test")}
    # the share of state 1 the probabilities refer to: 50/50 under a state-swapping symmetry, else training's
    prior = 0.5 if data.symmetry.swaps else float(np.mean(labels["train"]))
    # an antisymmetric view average (a swapping partner) has no offset to fit; rounded as every written score
    temperature, offset = rounded(metrics.fit_calibration(logits["valid"], labels["valid"],
                                                          metrics.prior_weights(labels["valid"], prior),
                                                          offset=not data.symmetry.swaps))
    calibration, reliability = calibrate_summary(logits, labels, temperature, offset, prior, data.bayes_llr)
    probabilities = {name: metrics.sigmoid(z + offset, temperature) for name, z in logits.items()}
    plot_calibration(run_dir / "calibration.png", reliability, {
        SPLIT_NAMES[n]: (probabilities[n], labels[n]) for n in ("valid", "test") if labels[n] is not None})
    yardstick, yard_summary, notes = compare_with_reference(data, logits["valid"] + offset, cfg.seed, info["data_dir"])
    if bound := metrics.at_bound(temperature):
        calibration["not_calibrated"] = bound
        notes.append(f"WARNING: the calibration temperature {temperature:g} is at the end of its search range: {bound}")
    summary = {"calibration": calibration, "reference": yard_summary}
    if data.drift is None:  # possible with --no-whiten only
        notes.append("note: no drift check: the training density has values <= 0 (no log-density)")
    else:  # the test split against the training description
        summary["drift"] = {"test": data.test_drift.summary()}
        if data.test_drift.warn:
            notes.append(drift.warning_line(data.test_drift, f"the test split ({SPLIT_FILES['test']})"))
    if "density" in info["channels"]:
        summary["sensitivity"] = map_sensitivity(run_dir, model, cfg, data, info, temperature, yardstick)
    save_torch(run_dir / "best.pt", {**best, "drift": data.drift, "calibration": {
        "temperature": temperature, "offset": offset, "prior_state_1": prior, "fitted_on": "valid"}})
    for path in (run_dir / "predictions.txt", cfg.predictions):
        write_predictions(path, probabilities["test"])
    write_probabilities(run_dir / "test_probabilities.csv", probabilities["test"],
                        None if data.test_drift is None else data.test_drift.flags)
    bayes = {} if not data.bayes_llr else {"val_acc": info["bayes_accuracy"]["valid"], "val_loss": metrics.log_loss(
        metrics.bayes_posterior(data.bayes_llr["valid"], prior), labels["valid"])}
    plot_curves(run_dir / "curves.png", state.history, f"{cfg.model} {cfg.optimizer} {cfg.loss} "
                f"channels={','.join(info['channels'])}", bayes)
    final, attempts = state.history[-1], [round(t, 1) for t in attempts]  # best.pt exists, so an epoch finished
    summary.update({"run_dir": str(run_dir), "data_source": info["source"], "data_dir": info["data_dir"],
                    "channels": info["channels"], "symmetry": info["symmetry"], "epochs_run": state.epoch,
                    "best_epoch": state.best_epoch, "diverged": diverged,
                    "best_val_loss": state.history[state.best_epoch - 1]["val_loss"],
                    "views": data.symmetry.view_count(), "final_train_loss": final["train_loss"],
                    "final_train_acc": final["train_acc"], "final_gap_acc": final["gap_acc"],
                    "wall_time_s": round(sum(attempts), 1), "attempt_seconds": attempts})
    for name, prefix in (("valid", "val"), ("test", "test")):
        if labels[name] is not None:  # loss and AUC of the raw logits; accuracy of the written predictions
            split = metrics.scores(torch.sigmoid(torch.from_numpy(logits[name])), torch.from_numpy(labels[name]))
            split["acc"] = float(np.mean((probabilities[name] > 0.5) == labels[name]))
            summary.update({f"{prefix}_{k}": v for k, v in split.items()})
    if "bayes_accuracy" in info:
        summary["bayes_accuracy"] = info["bayes_accuracy"]
    summary = rounded(summary)
    write_page(run_dir, summary)
    write_json(run_dir / "summary.json", summary)  # last: a run folder with it holds all the run's results
    log(f"best epoch {state.best_epoch}, scored with all {summary['views']} view(s) per image: val acc "
        f"{summary['val_acc']:.4f} auc {summary['val_auc']:.4f}"
        + (f" | test acc {summary['test_acc']:.4f}" if "test_acc" in summary else "")
        + (f" vs Bayes limit {info['bayes_accuracy']['test']:.4f}" if "bayes_accuracy" in info else "")
        + f" | predictions: {run_dir}/predictions.txt and {cfg.predictions}, report: {run_dir}/report.md")
    for note in notes:
        log(note)
    return summary


def compare_with_reference(data: DeviceData, valid_logits: np.ndarray, seed: int, data_dir: str = "DIR"
                           ) -> tuple[reference.Reference, dict[str, Any], list[str]]:
    """The yardstick's accuracies and paired validation gap, and a WARNING when the model trails by > Z_SHORT SE."""
    model, l2 = reference.fit_reference(data.x["train"], data.y["train"], seed)
    out: dict[str, Any] = {"classifier": "logistic regression on pixels, mode power and log mode power", "l2": l2}
    right = {name: (predict_logits(model, data.x[name]).cpu() > 0).float() == data.y[name].cpu()
             for name in ("valid", "test") if data.y[name] is not None}
    out.update({f"{name}_acc": float(r.float().mean()) for name, r in right.items()})
    # reference minus model on the same images, and the standard error of that paired difference
    gap = right["valid"].float() - ((torch.from_numpy(valid_logits) > 0).float() == data.y["valid"].cpu()).float()
    out["valid_gap"] = float(gap.mean())
    out["valid_gap_se"] = float(gap.std() / math.sqrt(len(gap))) if len(gap) > 1 else math.inf
    if out["valid_gap"] <= reference.Z_SHORT * out["valid_gap_se"]:
        return model, out, []
    return model, out, [f"WARNING: the model's validation accuracy is {100 * out['valid_gap']:.1f} ± "
                        f"{100 * out['valid_gap_se']:.1f} points below the reference classifier's "
                        f"({out['valid_acc']:.4f}); try --model cnn, another --optimizer or --lr, or python -m "
                        f"tools.compare --data-dir {data_dir}"]


def calibrate_summary(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray | None], temperature: float,
                      offset: float, prior: float, llr: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict]:
    """Per split, ECE, log loss and |p - p_Bayes| before/after calibration; the reliability tables per panel."""
    out: dict[str, Any] = {"temperature": temperature, "offset": offset, "prior_state_1": prior,
                           "ece_bins": metrics.ECE_BINS}
    panels: dict[str, dict[str, dict]] = {"before calibration": {}, f"after calibration (T = {temperature:.3g}"
                                          + (f", c = {offset:.3g})" if offset else ")"): {}}
    for name, z in logits.items():
        p = {"before": metrics.sigmoid(z), "after": metrics.sigmoid(z + offset, temperature)}
        row: dict[str, Any] = {}
        if labels[name] is not None:
            w = metrics.prior_weights(labels[name], prior)
            row["ece"] = {k: metrics.expected_calibration_error(v, labels[name], w) for k, v in p.items()}
            row["log_loss"] = {k: metrics.log_loss(v, labels[name], w) for k, v in p.items()}
            for panel, k in zip(panels.values(), p):
                panel[f"{SPLIT_NAMES[name]} (ECE {row['ece'][k]:.2%})"] = metrics.reliability(p[k], labels[name], w)
        if name in llr:
            exact = metrics.bayes_posterior(llr[name], prior)
            row["mean_abs_diff_bayes"] = {k: float(np.mean(np.abs(v - exact))) for k, v in p.items()}
        out[name] = row
    return out, panels


def mode_sensitivity(model: nn.Module, x: torch.Tensor, channel: int, plan: SymmetryPlan | None = None,
                     images: int = SENSITIVITY_IMAGES) -> np.ndarray:
    """The (S, S) map s_k = d logit / d log a_k of input `channel` (k = 0 at [0, 0]): the logit's sensitivity to the
    amplitude of each Fourier mode k, by Parseval Re(conj(G_k) X_k) / S^2 for the input X and the logit's gradient G,
    over `images` random images of x (N, C, S, S). Scaling a mode commutes with whitening and normalisation, so s_k
    is the same in raw and input space (docs/usage.md). The logit is the model's, or its mean over the unshifted
    views of `plan` (unit 1: all offsets 0; shifts change no mode's power); the model is left in eval mode."""
    model.eval()
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:images].to(x.device)]
    forward = model if plan is None else lambda batch: view_averaged_logits(model, batch, 1, plan)
    total = torch.zeros(x.shape[-2:], dtype=torch.float64, device=x.device)
    for xb in x.split(SENSITIVITY_BATCH):
        xb = xb.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(forward(xb).float().sum(), xb)
        g_k, x_k = torch.fft.fft2(grad[:, channel].double()), torch.fft.fft2(xb[:, channel].detach().double())
        total += (g_k.conj() * x_k).real.sum(dim=0)
    return (total / (len(x) * x.shape[-1] ** 2)).cpu().numpy()


def bayes_sensitivity(grid: int = synthetic.GRID) -> np.ndarray:
    """The exact log-likelihood ratio's map on the benchmark (50/50 states, float16 noise included)."""
    noise = synthetic.quantisation_variance(grid)
    lam0, lam1 = (synthetic.class_spectrum(c, grid) + noise for c in (0, 1))
    weights = 0.5 * (lam0 + lam1) * (1 / lam0 - 1 / lam1)
    weights[0, 0] = 0.0  # the offset mode is the same for both states
    return weights


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (S, S) maps over the modes k != 0 (nan where one is flat)."""
    a, b = a.ravel()[1:], b.ravel()[1:]
    return float("nan") if np.ptp(a) == 0 or np.ptp(b) == 0 else float(np.corrcoef(a, b)[0, 1])


def map_sensitivity(run_dir: Path, model: nn.Module, cfg: Config, data: DeviceData, info: dict[str, Any],
                    temperature: float, yardstick: nn.Module) -> dict[str, Any]:
    """sensitivity.png and its numbers: the model's map beside the exact one (benchmark) or the yardstick's."""
    channel, synthetic = info["channels"].index("density"), info["source"] == "synthetic"
    model_map = mode_sensitivity(model, data.x["valid"], channel, data.symmetry) / temperature
    if synthetic:
        other, compared_with = bayes_sensitivity(model_map.shape[-1]), "exact likelihood ratio"
    else:
        other, compared_with = mode_sensitivity(yardstick, data.x["valid"], channel), "reference classifier"
    r = map_correlation(model_map, other)
    slope = float((model_map * other).sum() / max((other**2).sum(), 1e-30))
    fig, axes = pyplot().subplots(1, 2, figsize=(10.4, 4.6))
    grid = model_map.shape[-1]
    extent = (-(grid // 2) - 0.5, grid - grid // 2 - 0.5, grid - grid // 2 - 0.5, -(grid // 2) - 0.5)
    for ax, name, values in zip(axes, (compared_with, "model"), (other, model_map)):
        scale = float(np.abs(values).max()) or 1.0
        image = ax.imshow(np.fft.fftshift(values), cmap="RdBu_r", vmin=-scale, vmax=scale, extent=extent)
        ax.set_xlabel("k (second axis)"), ax.set_ylabel("k (first axis)"), ax.set_title(name)
        fig.colorbar(image, ax=ax, fraction=0.046, label="d log-odds / d log amplitude")
    fig.suptitle(f"{cfg.model}, channels {','.join(info['channels'])}: correlation with the {compared_with} {r:.3f}"
                 + (f", scale {slope:.2f}" if synthetic else ""))
    save_figure(fig, run_dir / "sensitivity.png")
    out = {"correlation": r, "images": min(SENSITIVITY_IMAGES, len(data.x["valid"])), "compared_with": compared_with}
    return {**out, "scale_vs_bayes": slope} if synthetic else out


def write_metrics_csv(path: str | Path, history: list[dict[str, float]]) -> Path:
    """One row per epoch, the columns of fit's history, rewritten whole, so a resumed run continues the same table."""
    columns = list(history[0])
    rows = [",".join(str(row[column]) for column in columns) for row in rounded(history)]
    return write_text(path, "\n".join([",".join(columns), *rows]) + "\n")


def write_predictions(path: str | Path, probabilities: np.ndarray) -> Path:
    """One 0 or 1 per line, in the order of the input file."""
    return write_text(path, "".join(f"{v}\n" for v in (np.asarray(probabilities) > 0.5).astype(int)))


def write_probabilities(path: str | Path, probabilities: np.ndarray, drift_flags: np.ndarray | None = None) -> Path:
    """CSV of index, probability of state 1, predicted label and (with flags) the drift flag."""
    flags = [] if drift_flags is None else [f",{int(f)}" for f in drift_flags]
    header = "index,probability,predicted_label" + (",drift_flag" if flags else "")
    rows = [f"{i},{v:.6f},{int(v > 0.5)}{flags[i] if flags else ''}" for i, v in enumerate(probabilities)]
    return write_text(path, "\n".join([header, *rows]) + "\n")


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    pyplot().close(fig)
    return Path(path)


def plot_curves(path: str | Path, history: list[dict[str, float]], title: str = "",
                bayes: dict[str, float] | None = None) -> Path:
    """Train vs validation loss and accuracy per epoch (a widening gap is memorisation), with the Bayes lines."""
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4))
    views = int(history[-1].get("val_views", 1)) if history else 1
    epochs = [r["epoch"] for r in history]
    for ax, key, name in ((axes[0], "loss", "BCE"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], ".-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], ".-",
                label=f"validation ({views} view{'s' * (views > 1)} per image)")
        if bayes and f"val_{key}" in bayes:
            ax.axhline(bayes[f"val_{key}"], color="k", linestyle=":", label="Bayes limit (validation)")
        ax.set_xlabel("epoch"), ax.set_ylabel(name), ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_calibration(path: str | Path, panels: dict[str, dict[str, dict]],
                     splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """calibration.png: reliability diagrams, ROC curves and confusion matrices; splits: name -> (p, y)."""
    count = len(panels) + 1 + len(splits)
    fig, axes = pyplot().subplots(1, count, figsize=(4.5 * count, 4.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        ax.plot([0, 1], [0, 1], "k:", label="calibrated")
        for label, table in curves.items():
            filled = table["share"] > 0
            line, = ax.plot(table["probability"][filled], table["frequency"][filled], "-", alpha=0.5)
            ax.scatter(table["probability"][filled], table["frequency"][filled], s=10 + 300 * table["share"][filled],
                       color=line.get_color(), label=label)
        ax.set_xlabel("predicted probability of state 1 (marker area: share)")
        ax.set_ylabel("observed frequency of state 1")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_title(title), ax.legend(fontsize=8)
    roc = axes[0][len(panels)]
    roc.plot([0, 1], [0, 1], "k:")
    for ax, (name, (p, y)) in zip(axes[0][len(panels) + 1:], splits.items()):
        order = np.argsort(-p, kind="mergesort")
        tpr = np.concatenate([[0], np.cumsum(y[order]) / max(y.sum(), 1)])
        fpr = np.concatenate([[0], np.cumsum(1 - y[order]) / max((1 - y).sum(), 1)])
        roc.plot(fpr, tpr, label=f"{name} (AUC {metrics.roc_auc(p, y):.4f})")
        matrix = np.array([[np.sum((y == t) & ((p > 0.5) == q)) for q in (0, 1)] for t in (0, 1)])
        ax.imshow(matrix, cmap="Blues")
        for (t, q), n in np.ndenumerate(matrix):
            ax.text(q, t, str(n), ha="center", va="center", color="k" if n < matrix.max() / 2 else "w")
        ax.set_xticks([0, 1], ["0", "1"]), ax.set_yticks([0, 1], ["0", "1"])
        ax.set_xlabel("predicted state (p > 0.5)"), ax.set_ylabel("true state"), ax.set_title(f"{name} at 0.5")
    roc.set_xlabel("false positive rate"), roc.set_ylabel("true positive rate"), roc.set_title("ROC")
    roc.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def show(x: float | None, spec: str = ".2%") -> str:
    return "–" if x is None else format(x, spec)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return [f"| {' | '.join(cells)} |" for cells in (header, ("---",) * len(header), *rows)] + [""]


def write_page(run_dir: Path, summary: dict[str, Any]) -> Path:
    """report.md: the summary numbers and every figure of the run."""
    cal, bayes, ref = summary["calibration"], summary.get("bayes_accuracy", {}), summary["reference"]
    valid, test = cal.get("valid", {}), cal.get("test", {})
    attempts, views = summary["attempt_seconds"], summary["views"]
    wall_time = f"{summary['wall_time_s']} s" + (
        f" over {len(attempts)} attempts ({', '.join(f'{t} s' for t in attempts)})" if len(attempts) > 1 else "")
    source = "the built-in benchmark" if summary["data_source"] == "synthetic" else "the files"
    rows = [("accuracy", show(summary["val_acc"]), show(summary.get("test_acc"))),
            ("reference classifier (logistic regression on the same inputs)", show(ref.get("valid_acc")),
             show(ref.get("test_acc")))]
    if bayes:
        rows.append(("Bayes limit (exact likelihood ratio)", show(bayes.get("valid")), show(bayes.get("test"))))
    rows.append(("ROC AUC", show(summary["val_auc"], ".4f"), show(summary.get("test_auc"), ".4f")))
    for label, key, spec in (("log loss, before → after calibration", "log_loss", ".4f"),
                             (f"ECE ({cal['ece_bins']} bins), before → after", "ece", ".2%"),
                             ("mean abs(p − p_Bayes), before → after", "mean_abs_diff_bayes", ".4f")):
        if key in valid:  # the Bayes posterior only on the benchmark
            rows.append((label, *(f"{show(split[key]['before'], spec)} → {show(split[key]['after'], spec)}"
                                  if key in split else "–" for split in (valid, test))))
    lines = [f"# Run {Path(run_dir).name}", "",
             f"Data: {source} in {summary['data_dir']} (channels {', '.join(summary['channels'])}); best epoch "
             f"{summary['best_epoch']} of {summary['epochs_run']} run; {wall_time}."
             + (f" Training diverged: {summary['diverged']}." if summary.get("diverged") else ""), "",
             f"Scores of the best epoch's model with all {views} test-time view{'s' * (views > 1)} per image.", "",
             *table(("", "validation", "test"), rows),
             f"Probabilities: sigmoid((logit + c) / T), T = {cal['temperature']:.4g}, c = {cal['offset']:.4g}, "
             f"share of state 1 {cal['prior_state_1']:.3g} (docs/usage.md, Calibration)."
             + (f" **Not calibrated:** T is at the end of its search range: {cal['not_calibrated']}."
                if cal.get("not_calibrated") else ""), "",
             f"Reference minus model, validation: {100 * ref['valid_gap']:+.1f} ± {100 * ref['valid_gap_se']:.1f} "
             f"points (paired, one standard error).", ""]
    lines += symmetry_section(summary["symmetry"])
    lines += ["## Learning curves", "", "![learning curves](curves.png)", "",
              "## Calibration, ROC curve and confusion matrix at 0.5", "",
              "![reliability diagrams, ROC curve and confusion matrices](calibration.png)", ""]
    lines += drift_section(summary.get("drift")) + sensitivity_section(summary.get("sensitivity"))
    return write_text(Path(run_dir) / "report.md", "\n".join(lines) + "\n")


def symmetry_section(plan: dict[str, Any]) -> list[str]:
    """What augmentation and the views used, and the z of each rule the check tested."""
    found = plan["found"]
    lines = ["## Symmetries of the training data", "", SymmetryPlan.from_dict(plan).describe().capitalize() + "."]
    if not found:
        return lines + ["", "Not checked (too few training images of a state): no symmetry unless forced.", ""]
    lines += ["", f"Tested on {sum(found['images'].values()):,} training images (docs/usage.md): a rule holds if z < "
              f"{found['z_threshold']:.2f}; false alarm ≤ {found['false_alarm']:.0%} in {found['tests']} tests.", ""]
    rows = [(name, f"{r['keep_z']:.1f}", f"{r['swap_z']:.1f}", r["verdict"]) for name, r in found["elements"].items()]
    rows.append(("periodic shifts", f"{found['shifts']['keep_z']:.1f}", "–", found["shifts"]["verdict"]))
    return lines + table(("symmetry", "z if it keeps the state", "z if it swaps the state", "verdict"), rows)


def drift_section(result: dict[str, Any] | None) -> list[str]:
    lines = ["## Drift check (test split against the training set)", ""]
    if result is None:
        return lines + ["Not run: the training density has values ≤ 0.", ""]
    test = result["test"]
    verdict = "WARNING: more than 1 % flagged" if test["warning"] else "no warning"
    culprits = ", ".join(f"{k} ({show(v)})" for k, v in test["flagged_by"].items())
    rate = f"a fresh training-like sample is flagged with probability {drift.FALSE_FLAG_RATE:.2%}"
    return lines + [f"{show(test['share_flagged'])} of {test['n']} test samples lie outside the training data's "
                    f"range ({verdict}; {rate})." + (f" Flagged mainly by: {culprits}." if culprits else ""), ""]


def sensitivity_section(result: dict[str, Any] | None) -> list[str]:
    lines = ["## What the model learned", ""]
    if result is None:
        return lines + ["No density channel: no map over its Fourier modes.", ""]
    scale = f", scale {result['scale_vs_bayes']:.2f} (1 = the same strength)" if "scale_vs_bayes" in result else ""
    return lines + [f"Over {result['images']} validation images, correlation with the {result['compared_with']}'s "
                    f"map {result['correlation']:.3f}{scale}.", "", "![sensitivity map](sensitivity.png)", ""]
