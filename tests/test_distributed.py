"""DDP under torchrun on CPU: 2 gloo processes on a tiny generated data set.

Checks that training runs, that the ranks end with identical weights, that only rank 0 prints and writes,
that the validation metrics equal a single-process computation with the same model and data, and that the
training metrics are the sums over both ranks' disjoint slices.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed
import synthetic
from config import config_from_dict
from data import epoch_batches
from checkpoints import load_checkpoint
from data import load_data
from metrics import scores
from train import build_model, predict_logits

ROOT = Path(__file__).resolve().parents[1]
# fp32: the checks below recompute the run's numbers in fp32 in this process (bf16 is checked in test_train)
MODEL = ["--emb-dim", "16", "--depth", "1", "--heads", "2", "--mlp-dim", "32", "--device", "cpu",
         "--precision", "fp32"]


def torchrun(tmp: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """2 gloo processes of run_transformer.main; returns the result, the run folder and the weight dumps."""
    dumps, runs = tmp / "dumps", tmp / "runs"
    dumps.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(dumps), "--out-dir", str(runs),
           "--predictions", str(tmp / "predictions.txt"), *MODEL, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    folders = list(runs.iterdir())
    assert len(folders) == 1, f"exactly one run folder (rank 0's) expected, found {folders}"
    return proc, folders[0], dumps


def metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def model_and_data(run_dir: Path, name: str = "last.pt"):
    """The saved model and the run's data, rebuilt in this single process."""
    payload = load_checkpoint(run_dir / name)
    cfg = config_from_dict(payload["config"])
    model = build_model(cfg, len(payload["stats"]["channels"]), payload["image_size"])
    model.load_state_dict(payload["model"])  # same keys as a single-process model: the unwrapped module
    data, _ = load_data(cfg, torch.device("cpu"), lambda m: None, payload)
    return model, data, cfg


def test_two_processes_stay_in_sync_and_match_single_process_evaluation(tmp_path):
    # half the tiny benchmark: 6 steps of 16 images per rank and epoch; most of the time is the 3 processes' start
    data = synthetic.generate_benchmark(tmp_path / "data", seed=0, sizes=synthetic.Sizes(100, 100, 30, 30, 20, 20))
    proc, run_dir, dumps = torchrun(tmp_path, ["--data-dir", str(data), "--epochs", "2",
                                               "--batch-size", "16", "--tta-shifts", "1"])
    # rank 0 alone prints: one line per epoch, and the run says how it was split
    assert proc.stdout.count("epoch   1 ") == 1 and proc.stdout.count("epoch   2 ") == 1, proc.stdout
    assert "on each of 2 processes" in proc.stdout
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "metrics.csv", "best.pt", "last.pt",
                                                    "summary.json", "predictions.txt"}

    dumped = [torch.load(dumps / f"rank{r}.pt") for r in (0, 1)]
    ranks = [d["weights"] for d in dumped]
    assert ranks[0].keys() == ranks[1].keys()
    differ = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not differ, f"ranks ended with different weights or BatchNorm statistics: {differ}"

    model, data, cfg = model_and_data(run_dir)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ranks[0][key]), f"last.pt differs from the trained weights at {key}"
    torch.manual_seed(cfg.seed)  # run() seeds the same way before building the model
    initial = build_model(cfg, len(data.stats["channels"]), data.image_size).state_dict()
    assert not torch.equal(initial["head.weight"], ranks[0]["head.weight"]), "training did not change weights"

    logits = predict_logits(model, data.x["valid"], data.symmetry.epoch_views())  # as fit validates
    single = scores(torch.sigmoid(logits), data.y["valid"])  # as fit validates
    rows = metrics(run_dir)
    for key in ("loss", "acc", "auc"):
        assert rows[-1][f"val_{key}"] == pytest.approx(single[key], rel=2e-5, abs=1e-6), key

    # each rank trains on its own disjoint slice; the epoch's metrics are the sums over both, per image seen
    n = len(data.x["train"])
    slices = [torch.cat(epoch_batches(n, cfg.batch_size, 0, cfg.seed, "cpu", r, 2)) for r in (0, 1)]
    seen = torch.cat(slices)
    assert len(seen) == len(set(seen.tolist())) == 2 * (n // 32) * 16, "rank slices overlap"
    (local0, total0), (local1, total1) = dumped[0]["sums"][0], dumped[1]["sums"][0]
    assert not torch.equal(local0, local1), "both ranks trained on the same images"
    torch.testing.assert_close(total0, local0 + local1)
    assert torch.equal(total0, total1)
    for (_, total), row in zip(dumped[0]["sums"], rows, strict=True):
        expected = (total / len(seen)).tolist()
        assert [row["train_objective"], row["train_loss"], row["train_acc"]] == pytest.approx(expected, rel=1e-6)


def test_helpers_are_no_ops_without_torchrun():
    assert distributed.world() == 1 and distributed.rank() == 0 and distributed.is_main()
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce(t) is t and distributed.all_reduce(t, "min") is t
    distributed.from_main(t)
    assert t.tolist() == [1.0, 2.0]
