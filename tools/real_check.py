"""Is a trained run as good on the real (unlabelled) test file as on the benchmark's? Per file: agreement with the
likelihood-ratio test, share of state 1, mean confidence (docs/evaluation.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: runs from any folder

import numpy as np
import torch

import synthetic
from config import HelpFormatter, Parser, config_from_dict
from data import read_answer_key, read_split, to_tensor
from checkpoints import load_checkpoint, trained_model
from symmetry import SymmetryPlan
from train import Diverged, NonFinitePredictions, exit_code, overflow_message, pick_device, predict_logits

REAL_TEST_FILE = Path(__file__).resolve().parents[2] / "shared" / "gasdata" / "test_no_labels.hdf5"


def describe(name: str, model, payload: dict, path: Path, device: torch.device) -> None:
    """One line: agreement with the likelihood-ratio test, share of state 1, mean confidence, accuracy if known."""
    stats, cfg = payload["stats"], config_from_dict(payload["config"])
    split = read_split(path, "input", tuple(stats["channels"]), labelled=False)
    answers = split.labels if (split.labels >= 0).all() else read_answer_key(path.parent, len(split))
    try:
        plan = SymmetryPlan.from_dict(payload["symmetry"])
        p = torch.sigmoid(predict_logits(model, to_tensor(split, stats, device), plan))
    except NonFinitePredictions as e:
        raise Diverged(overflow_message(e, f"the model diverges on {path}", cfg.lr)) from None
    p = p.cpu().numpy()
    state1, bayes = p > 0.5, synthetic.bayes_log_likelihood_ratio(split.channels["density"]) > 0
    print(f"{name:15s} n {len(state1):5d}  agrees with the likelihood-ratio test {(state1 == bayes).mean():.1%}  "
          f"state 1 {state1.mean():.1%}  mean confidence {np.maximum(p, 1 - p).mean():.3f}"
          + (f"  accuracy {(state1 == answers).mean():.1%} (likelihood-ratio test {(bayes == answers).mean():.1%})"
             if answers is not None else ""))


def check(argv: list[str] | None) -> None:
    """One line for the benchmark's test split and one for the real test file."""
    parser = Parser(prog="python -m tools.real_check", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run", help="a run folder written by run_transformer.py")
    parser.add_argument("--real", default=str(REAL_TEST_FILE), help="the real (unlabelled) test file")
    parser.add_argument("--benchmark", default="data/synthetic", help="the built-in benchmark's folder")
    args = parser.parse_args(argv)
    payload = load_checkpoint(Path(args.run) / "best.pt")
    device = pick_device("auto")
    model = trained_model(payload, device)
    describe("benchmark test", model, payload, Path(args.benchmark) / "test_no_labels.hdf5", device)
    describe("real test", model, payload, Path(args.real), device)


def main(argv: list[str] | None = None) -> int:
    """Exit codes as in train.exit_code."""
    return exit_code(lambda: check(argv))


if __name__ == "__main__":
    sys.exit(main())
