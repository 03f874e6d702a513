"""report.py through the command line: calibrated probabilities, drift flags, sensitivity map, one page per run."""

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import torch

import run_transformer
from metrics import sigmoid
from config import config_from_dict
from symmetry import SymmetryPlan
from train import build_model, predict_logits


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    rows = path.read_text().splitlines()
    return rows[0].split(","), np.array([[float(v) for v in r.split(",")] for r in rows[1:]])


def saved_logits(run_dir: Path, file: Path) -> np.ndarray:
    """The best model's view-averaged logits on `file`, rebuilt from best.pt as --predict does."""
    from data import read_split, to_tensor
    payload = torch.load(run_dir / "best.pt", weights_only=True)
    cfg = config_from_dict(payload["config"])
    model = build_model(cfg, len(payload["stats"]["channels"]), payload["image_size"])
    model.load_state_dict(payload["model"])
    split = read_split(file, "input", tuple(payload["stats"]["channels"]), labelled=False)
    plan = SymmetryPlan.from_dict(payload["symmetry"])
    return predict_logits(model, to_tensor(split, payload["stats"], "cpu"), plan).numpy()


def test_the_run_writes_one_page_with_every_figure(finished_run):
    run_dir = finished_run.dir
    page = (run_dir / "report.md").read_text()
    figures = re.findall(r"\]\(([^)]+)\)", page)
    assert set(figures) == {"curves.png", "calibration.png", "sensitivity.png"}
    for name in figures:
        assert (run_dir / name).stat().st_size > 1000, name
    for words in ("ECE (15 bins)", "abs(p − p_Bayes)", "Bayes limit", "Drift check", "What the model learned"):
        assert words in page


def test_summary_reports_calibration_drift_and_sensitivity(finished_run):
    run_dir, out = finished_run.dir, finished_run.out
    summary = json.loads((run_dir / "summary.json").read_text())
    cal = summary["calibration"]
    assert cal["temperature"] > 0 and cal["prior_state_1"] == 0.5 and cal["ece_bins"] == 15
    for split in ("valid", "test"):
        for key in ("ece", "log_loss", "mean_abs_diff_bayes"):
            assert set(cal[split][key]) == {"before", "after"} and all(0 <= v < 1 for v in cal[split][key].values())
        # the temperature minimises validation's log loss, so it cannot raise it
    assert cal["valid"]["log_loss"]["after"] <= cal["valid"]["log_loss"]["before"] + 1e-9
    assert summary["drift"]["test"]["n"] == 80 and not summary["drift"]["test"]["warning"]
    assert -1 <= summary["sensitivity"]["correlation"] <= 1
    end = next(line for line in out.splitlines() if line.startswith("best epoch"))
    assert f"report: {run_dir}/report.md" in end
    assert "WARNING: drift check" not in out  # the benchmark's own test split looks like its training set


def test_written_probabilities_are_calibrated_and_predictions_unchanged(finished_run):
    run_dir = finished_run.dir
    payload = torch.load(run_dir / "best.pt", weights_only=True)
    temperature = payload["calibration"]["temperature"]
    assert temperature == json.loads((run_dir / "summary.json").read_text())["calibration"]["temperature"]
    assert payload["drift"]["n"] == 400  # the training set's description
    data_dir = Path(json.loads((run_dir / "config.json").read_text())["data"]["data_dir"])
    logits = saved_logits(run_dir, data_dir / "test_no_labels.hdf5")
    header, table = read_csv(run_dir / "test_probabilities.csv")
    assert header == ["index", "probability", "predicted_label", "drift_flag"]
    assert np.allclose(table[:, 1], sigmoid(logits, temperature), atol=1e-6)
    predictions = np.array((run_dir / "predictions.txt").read_text().split(), dtype=int)
    assert (predictions == (logits > 0)).all() and (table[:, 2] == predictions).all()  # T moves no prediction
    assert set(table[:, 3]) <= {0, 1}


def test_predict_applies_the_temperature_and_flags_a_shifted_file(finished_run, tmp_path, capsys):
    run_dir = finished_run.dir
    data_dir = Path(json.loads((run_dir / "config.json").read_text())["data"]["data_dir"])
    same = tmp_path / "same.txt"
    assert run_transformer.main(["--predict", str(run_dir), "--input", str(data_dir / "test_no_labels.hdf5"),
                                 "--output", str(same)]) == 0
    assert same.with_suffix(".csv").read_text() == (run_dir / "test_probabilities.csv").read_text()
    assert "WARNING" not in capsys.readouterr().out
    shifted = Path(shutil.copy(data_dir / "test_no_labels.hdf5", tmp_path / "brighter.hdf5"))
    with h5py.File(shifted, "a") as h5:  # another instrument's gain: density x 1.5
        h5["density"][...] = (h5["density"][()].astype(np.float32) * 1.5).astype(np.float16)
    output = tmp_path / "brighter.txt"
    assert run_transformer.main(["--predict", str(run_dir), "--input", str(shifted), "--output", str(output)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "100.0% of 80 samples" in warnings[0] and "mean of log-density higher" in warnings[0]
    _, table = read_csv(output.with_suffix(".csv"))
    assert table[:, 3].all() and len(output.read_text().split()) == 80
