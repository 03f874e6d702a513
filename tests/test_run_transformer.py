"""End to end through the command line, as the scientist uses it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import run_transformer
from reference import ReferenceCNN
from config import Config, UserError
from conftest import SMALL_VIT
from data import read_answer_key

def train(tmp_path: Path, data: Path, *extra: str) -> Path:
    """A 1-epoch run of the small ViT on `data`; returns its run folder."""
    out = tmp_path / "runs"
    argv = ["--data-dir", str(data), "--out-dir", str(out), "--predictions", str(tmp_path / "outputs" / "p.txt"),
            "--epochs", "1", *SMALL_VIT, *extra]
    assert run_transformer.main(argv) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_a_run_writes_every_output(finished_run):
    run_dir, out = finished_run.dir, finished_run.out
    for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "curves.png", "summary.json",
                 "predictions.txt", "test_probabilities.csv"):
        assert (run_dir / name).is_file(), name
    lines = (run_dir / "predictions.txt").read_text().splitlines()
    assert len(lines) == 80 and set(lines) <= {"0", "1"}
    assert finished_run.predictions.read_text() == (run_dir / "predictions.txt").read_text()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 2
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["loss"] == "smooth" and saved["data"]["channels"] == ["density"]
    found = saved["data"]["symmetry"]["found"]  # the check's findings, with their z
    assert found["elements"]["transpose"]["verdict"] == "swaps" and found["shifts"]["verdict"] == "keeps"
    summary = json.loads((run_dir / "summary.json").read_text())
    # the benchmark carries its answer key: test accuracy is that of the written predictions
    answers = read_answer_key(finished_run.data, 80)
    assert summary["test_acc"] == pytest.approx(np.mean(np.array(lines, dtype=int) == answers))
    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)
    assert checkpoint["config"]["loss"] == "smooth" and checkpoint["stats"]["channels"] == ["density"]
    assert "recording_date" in out and "WARNING" in out  # the shortcut guard spoke
    assert "epoch   1" in out and "val (2 views) loss" in out and "scored with all 32 view(s)" in out
    assert "symmetry check on 400 training images" in out and "swaps: transpose" in out
    assert "augmentation: flip1, flip0, rot180, transpose (swaps)" in out
    assert "transpose" in (run_dir / "report.md").read_text().split("## Symmetries")[1]


def test_an_empty_data_dir_gets_the_built_in_benchmark(finished_run):
    saved = json.loads((finished_run.dir / "config.json").read_text())
    assert saved["data"]["source"] == "synthetic" and (finished_run.data / "train.hdf5").is_file()
    assert finished_run.data.parent.name == "empty"  # generated inside the folder the user passed
    summary = json.loads((finished_run.dir / "summary.json").read_text())
    assert summary["bayes_accuracy"]["test"] > summary["test_acc"]


def floats(obj):
    """Every float in a parsed JSON object."""
    if isinstance(obj, float):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    return [x for v in values for x in floats(v)]


def test_summary_json_carries_no_float32_noise(finished_run):
    """Scores computed in float32 are written with the digits they have (six significant ones), not as
    0.9860000014305115."""
    summary = json.loads((finished_run.dir / "summary.json").read_text())
    noisy = [x for x in floats(summary) if float(f"{x:.6g}") != x]
    assert not noisy and len(floats(summary)) > 20, noisy


def test_config_json_records_the_code_and_the_command(finished_run):
    record = json.loads((finished_run.dir / "config.json").read_text())["provenance"]
    assert set(record) == {"commit", "dirty", "command"} and record["command"].startswith("python ")


def test_explicit_channels_keep_the_confounder_and_the_model_follows(tmp_path, tiny_benchmark, unrendered_figures):
    run_dir = train(tmp_path, tiny_benchmark, "--channels", "density,recording_date", "--model", "cnn",
                    "--tta-shifts", "1")
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data"]["source"] == "files"  # a folder with train.hdf5 is the user's data
    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)
    assert checkpoint["model"]["features.0.0.weight"].shape[1] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    # the test file's dates (7..9) are nothing like training's (the label): the drift check says so
    test_drift = summary["drift"]["test"]
    assert test_drift["warning"] and "recording_date" in next(iter(test_drift["flagged_by"]))


def check_predict(run_dir: Path, data: Path, tmp_path: Path, capsys) -> None:
    """--predict on the validation file writes one 0/1 line per image and a CSV whose probabilities give those
    labels; on the test file it gives the run's own predictions; it never overwrites its earlier output."""
    output = tmp_path / "new" / "pred.txt"
    argv = ["--predict", str(run_dir), "--input", str(data / "valid.hdf5"), "--output", str(output)]
    capsys.readouterr()
    assert run_transformer.main(argv) == 0
    lines = output.read_text().splitlines()
    assert len(lines) == 100 and set(lines) <= {"0", "1"}
    ones = lines.count("1")
    assert capsys.readouterr().out.startswith(f"100 predictions ({ones} of state 1, {100 - ones} of state 0) -> ")
    rows = output.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == "index,probability,predicted_label,drift_flag" and len(rows) == 101
    probs = np.array([float(r.split(",")[1]) for r in rows[1:]])
    labels = np.array([r.split(",")[2] for r in rows[1:]])
    assert (labels == np.array(lines)).all()
    clear = np.abs(probs - 0.5) > 1e-6  # written with 6 decimals: 0.5000004 reads back as 0.5
    assert ((probs > 0.5).astype(int).astype(str) == labels)[clear].all()
    expected = (run_dir / "predictions.txt").read_text()  # the same model on the test file: same answers
    test_out = tmp_path / "new" / "test.txt"
    assert run_transformer.main(["--predict", str(run_dir), "--input", str(data / "test_no_labels.hdf5"),
                                 "--output", str(test_out)]) == 0
    assert test_out.read_text() == expected
    assert run_transformer.main(argv) == 2  # refuses to overwrite its own earlier output


def test_predict_new_measurements_with_a_trained_run(finished_run, tmp_path, capsys):
    """--predict rebuilds what the run trained with: the whitening filter, which commutes with the transpose
    the check found, and the 32 views."""
    check_predict(finished_run.dir, finished_run.data, tmp_path, capsys)
    gain = np.asarray(torch.load(finished_run.dir / "best.pt", weights_only=True)["stats"]["whiten"])
    assert gain.shape == (28, 28) and np.allclose(gain, gain.T)


def test_predict_rebuilds_forced_views_and_mean_pooling(tmp_path, tiny_benchmark, capsys, unrendered_figures):
    """Forced augmentation and test-time views and the mean pool come back from best.pt; whitening is averaged
    over the forced group, so it commutes with the transpose as well."""
    run_dir = train(tmp_path, tiny_benchmark, "--pool", "mean", "--augment", "flip0,transpose=swap",
                    "--tta", "transpose=swap,shift", "--tta-shifts", "2")
    check_predict(run_dir, tiny_benchmark, tmp_path, capsys)
    gain = np.asarray(torch.load(run_dir / "best.pt", weights_only=True)["stats"]["whiten"])
    assert np.allclose(gain, gain.T)


def test_resume_refuses_a_different_experiment_and_predict_refuses_a_csv_output(tmp_path, finished_run, capsys):
    run_dir = finished_run.dir
    for flags, name in ((["--loss", "mse"], "--loss"), (["--seed", "5"], "--seed"), (["--epochs", "4"], "--epochs")):
        assert run_transformer.main(["--resume", str(run_dir), *flags]) == 2
        assert f"{name}: checkpoint" in capsys.readouterr().err
    assert run_transformer.main(["--predict", str(run_dir), "--input", str(finished_run.data / "valid.hdf5"),
                                 "--output", str(tmp_path / "p.csv")]) == 2
    assert "new text file" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_cnn_needs_a_grid_divisible_by_four():
    import dataclasses
    from config import UserError
    from train import build_model
    with pytest.raises(UserError, match="divide by 4"):
        build_model(dataclasses.replace(Config(), model="cnn", heads=3), 1, 30)
    cnn = build_model(dataclasses.replace(Config(), model="cnn", heads=3), 1, 28)  # --heads is ViT-only
    assert isinstance(cnn, ReferenceCNN) and cnn(torch.randn(2, 1, 28, 28)).shape == (2, 1)


def test_predict_classifies_the_real_test_file(tmp_path, finished_run, real_test_file):
    output = tmp_path / "real" / "predictions.txt"
    assert run_transformer.main(["--predict", str(finished_run.dir), "--input", str(real_test_file),
                                 "--output", str(output)]) == 0
    lines = output.read_text().splitlines()
    assert len(lines) == 1000 and set(lines) <= {"0", "1"}


def test_unlabelled_files_need_no_labels_dataset_and_two_runs_never_share_a_folder(tmp_path, tiny_benchmark,
                                                                                   monkeypatch, unrendered_figures):
    """New measurements have no labels: neither --predict --input nor the test split may require them. The run
    trains without whitening, which --predict must rebuild too to give the run's own answers. It starts in the
    same second as another run with the same settings, so it gets a folder of its own."""
    import shutil
    import h5py
    data = Path(shutil.copytree(tiny_benchmark, tmp_path / "data"))
    with h5py.File(data / "test_no_labels.hdf5", "a") as h5:
        del h5["labels"]
    monkeypatch.setattr(run_transformer.time, "strftime", lambda *args: "20250101-120000")
    cfg = Config()
    taken = tmp_path / "runs" / f"20250101-120000-{cfg.model}-{cfg.optimizer}-{cfg.loss}"
    taken.mkdir(parents=True)
    (taken / "metrics.csv").write_text("mine\n")
    assert run_transformer.main(["--data-dir", str(data), "--out-dir", str(tmp_path / "runs"), "--predictions",
                                 str(tmp_path / "p.txt"), "--epochs", "1", *SMALL_VIT, "--no-whiten",
                                 "--tta-shifts", "1"]) == 0
    assert [p.name for p in taken.iterdir()] == ["metrics.csv"] and (taken / "metrics.csv").read_text() == "mine\n"
    run_dir = tmp_path / "runs" / f"{taken.name}-2"
    assert torch.load(run_dir / "best.pt", weights_only=True)["stats"]["whiten"] is None
    assert len((run_dir / "predictions.txt").read_text().splitlines()) == 80
    output = tmp_path / "new.txt"
    assert run_transformer.main(["--predict", str(run_dir), "--input", str(data / "test_no_labels.hdf5"),
                                 "--output", str(output)]) == 0
    assert output.read_text() == (run_dir / "predictions.txt").read_text()


def test_resume_gets_only_the_flags_that_were_typed(monkeypatch, capsys):
    """--resume changes only what the user typed: a flag typed with its default value counts, an untyped one
    does not, and --help still shows the defaults."""
    default, seen = Config().epochs, []

    def resume_config(run_dir, typed):
        seen.append((run_dir, typed))
        raise UserError("seen")
    monkeypatch.setattr(run_transformer, "resume_config", resume_config)
    assert run_transformer.main(["--resume", "runs/x", "--epochs", str(default), "--no-compile"]) == 2
    assert run_transformer.main(["--resume", "runs/y"]) == 2
    assert seen == [(Path("runs/x"), {"epochs": default, "compile": False}), (Path("runs/y"), {})]
    capsys.readouterr()
    assert run_transformer.main(["--help"]) == 0
    assert f"(default: {default})" in capsys.readouterr().out.replace("\n", " ")


def test_a_run_on_data_of_another_physics_uses_what_holds_and_reports_against_the_reference(tmp_path,
                                                                                          unrendered_figures):
    """axis-length data (reflections keep the state, transposes do neither): the run augments and predicts with
    reflections only, says so, and measures itself against the reference classifier, not a Bayes limit."""
    from tools import other_physics
    # 12x the contrast of the kind: the states are told apart in a few hundred images
    data = other_physics.make(tmp_path / "data", "axis-length", train=600, valid=200, test=100, size=16, contrast=12)
    run_dir = train(tmp_path, data, "--loss", "smooth", "--patch-size", "4")
    summary = json.loads((run_dir / "summary.json").read_text())
    used = summary["symmetry"]
    assert used["augment"] == [["identity", False], ["flip1", False], ["flip0", False], ["rot180", False]]
    assert used["shifts"]
    assert summary["symmetry"]["views"][1] == ["flip0", False]
    assert summary["reference"]["valid_acc"] > 0.9 and "bayes_accuracy" not in summary
    assert summary["sensitivity"]["compared_with"] == "reference classifier"
    page = (run_dir / "report.md").read_text()
    assert "Bayes" not in page and str(data) in page and "| transpose |" in page and "neither" in page


def test_a_folder_of_other_files_is_the_users_and_is_left_alone(tmp_path, capsys):
    """train.h5/valid.h5/test.h5: refused in one line that says what to rename; nothing is generated there."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("train.h5", "valid.h5", "test.h5"):
        (folder / name).write_bytes(b"x")
    argv = ["--data-dir", str(folder), "--out-dir", str(tmp_path / "runs"), "--predictions", str(tmp_path / "p.txt")]
    assert run_transformer.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "but holds test.h5, train.h5, valid.h5; rename test.h5 to test_no_labels.hdf5, " \
        "train.h5 to train.hdf5, valid.h5 to valid.hdf5" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == ["test.h5", "train.h5", "valid.h5"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "p.txt").exists()
