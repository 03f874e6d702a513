"""Is a trained run as good on the real (unlabelled) test file as on the benchmark's? On both files: agreement
with the benchmark physics' likelihood-ratio test, the share predicted as state 1 and the mean confidence (the
run's metrics.csv and summary.json hold its train - validation gap).

    python -m tools.real_check runs/RUN                  # real file: ../shared/gasdata/test_no_labels.hdf5
    python -m tools.real_check runs/RUN --real PATH --benchmark data/synthetic
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: runs from any folder

import numpy as np
import torch

import synthetic
from cli import exit_code
from config import HelpFormatter, Parser, config_from_dict
from data import read_answer_key, read_split, to_tensor
from checkpoints import load_checkpoint, trained_model
from symmetry import SymmetryPlan
from train import Diverged, NonFinitePredictions, overflow_message, pick_device, predict_proba

REAL_TEST_FILE = Path(__file__).resolve().parents[2] / "shared" / "gasdata" / "test_no_labels.hdf5"


def describe(model, payload: dict, path: Path, device: torch.device) -> dict:
    """Agreement with the likelihood-ratio test, share of state 1, mean confidence, and accuracy when the file
    has labels or an answer key (test_labels.hdf5) lies beside it."""
    stats, cfg = payload["stats"], config_from_dict(payload["config"])
    split = read_split(path, "input", tuple(stats["channels"]), labelled=False)
    answers = split.labels if (split.labels >= 0).all() else read_answer_key(path.parent, len(split))
    try:
        p = predict_proba(model, to_tensor(split, stats, device), SymmetryPlan.from_dict(payload["symmetry"]).views)
    except NonFinitePredictions as e:
        raise Diverged(overflow_message(e, f"the model diverges on {path}", cfg.lr)) from None
    p = p.cpu().numpy()
    bayes = synthetic.bayes_predict(split.channels["density"])
    out = {"n": len(p), "agree_with_bayes": float(((p > 0.5) == bayes).mean()),
           "share_state_1": float((p > 0.5).mean()), "mean_confidence": float(np.maximum(p, 1 - p).mean())}
    if answers is not None:
        out["accuracy"] = float(((p > 0.5) == answers).mean())
        out["bayes_accuracy"] = float((bayes == answers).mean())
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="python -m tools.real_check", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run", help="a run folder written by run_transformer.py")
    parser.add_argument("--real", default=str(REAL_TEST_FILE), help="the real (unlabelled) test file")
    parser.add_argument("--benchmark", default="data/synthetic", help="the built-in benchmark's folder")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> None:
    """Print one line per file: the benchmark's test split and the real test file."""
    payload = load_checkpoint(Path(args.run) / "best.pt")
    device = pick_device("auto")
    model = trained_model(payload, device)
    bench = Path(args.benchmark)
    rows = {"benchmark test": describe(model, payload, bench / "test_no_labels.hdf5", device),
            "real test": describe(model, payload, Path(args.real), device)}
    for name, row in rows.items():
        print(f"{name:15s} n {row['n']:5d}  agrees with the likelihood-ratio test {row['agree_with_bayes']:.1%}  "
              f"state 1 {row['share_state_1']:.1%}  mean confidence {row['mean_confidence']:.3f}"
              + (f"  accuracy {row['accuracy']:.1%} (likelihood-ratio test {row['bayes_accuracy']:.1%})"
                 if "accuracy" in row else ""))


def main(argv: list[str] | None = None) -> int:
    """Exit codes as in cli.exit_code."""
    return exit_code(lambda: check(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
