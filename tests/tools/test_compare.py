"""The ablation harness: grid bookkeeping, resumption after an interruption, and one real end-to-end run."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tools import compare
from tools import grid
import data
import run_transformer
import train
from config import EXECUTION, OUTPUT, Config, fields_with
from data import read_answer_key
from fileio import write_json
from predict import predict_file
from report import write_metrics_csv
from train import Interrupted

ROOT = Path(__file__).resolve().parent.parent


def changed(cfg: Config, base: Config) -> dict:
    a, b = dataclasses.asdict(cfg), dataclasses.asdict(base)
    return {k: v for k, v in a.items() if b[k] != v}


def test_grid_names_overrides_and_channel_sets(tmp_path: Path):
    chosen = compare.variants(compare.FULL.configs)
    assert [v.name for v in chosen[:2]] == ["before/with-date", "before/no-date"]
    assert len(chosen) == 42 and len({v.name for v in chosen}) == 42
    requested = ["before", "+patch-bn", "+sgd-linear", "+mse", "+smooth", "+block-bn", "after", "after-patch-bn",
                 "after-sgd-linear", "after-smooth+bce", "after-smooth+mse", "after+block-bn", "cnn"]
    assert list(compare.FULL.configs) == requested + [f"{c}+whiten" for c in requested] + [
        "after+whiten+mean-pool", "after+whiten+mean-pool+aug-tta", "after+whiten+aug-tta", "default", "before@trunc02",
        "after@trunc02", "before+whiten@trunc02", "after+whiten@trunc02"]
    assert {v.config for v in chosen if v.channels == "with-date"} == set(grid.WITH_DATE)
    base = Config(data_dir="somewhere")
    before = compare.Variant("before", "no-date").build(base)
    assert (before.model, before.patch_norm, before.block_norm, before.optimizer, before.loss, before.whiten,
            before.init, before.pool) == ("vit", "none", "layer", "adamw", "bce", False, "torch", "cls")
    assert before.weight_decay == 0.05 and before.channels == "density" and before.data_dir == "somewhere"
    assert compare.Variant("before", "with-date").build(base).channels == "density,recording_date"
    expected = {"+patch-bn": {"patch_norm": "batch"}, "+sgd-linear": {"optimizer": "sgd", "weight_decay": 5e-4},
                "+mse": {"loss": "mse"}, "+smooth": {"loss": "smooth"}, "+block-bn": {"block_norm": "batch"},
                "after": {"patch_norm": "batch", "optimizer": "sgd", "weight_decay": 5e-4, "loss": "smooth"},
                "cnn": {"model": "cnn"}, "cnn+whiten": {"model": "cnn", "whiten": True},
                "before+whiten": {"whiten": True},
                "after+whiten": {"patch_norm": "batch", "optimizer": "sgd", "weight_decay": 5e-4, "loss": "smooth",
                                 "whiten": True},
                "before@trunc02": {"init": "trunc02"}, "before+whiten@trunc02": {"whiten": True, "init": "trunc02"},
                "after-sgd-linear": {"patch_norm": "batch", "loss": "smooth"},
                "after-smooth+mse+whiten": {"patch_norm": "batch", "optimizer": "sgd", "weight_decay": 5e-4,
                                            "loss": "mse", "whiten": True},
                "after+block-bn": {"patch_norm": "batch", "optimizer": "sgd", "weight_decay": 5e-4,
                                   "loss": "smooth", "block_norm": "batch"},
                "+mse+whiten": {"loss": "mse", "whiten": True},
                "after+whiten+mean-pool+aug-tta": {"patch_norm": "batch", "optimizer": "sgd", "weight_decay": 5e-4,
                                                   "loss": "smooth", "whiten": True, "pool": "mean",
                                                   "augment": "auto", "tta": "auto", "tta_shifts": 4}}
    for name, diff in expected.items():
        assert changed(compare.Variant(name, "no-date").build(base), before) == diff, name
    # The rows keep the grid's model (4 heads) and budget (8 epochs) whatever Config's defaults are; the
    # `default` row is the command as it ships, on its own schedule.
    assert before.heads == 4 and compare.FULL.epochs == 8
    default = compare.Variant("default", "no-date")
    assert changed(default.build(base), base) == {"channels": "density", "loss": "smooth"}
    finals = compare.final_jobs(default, base.lr, compare.FULL, base, tmp_path)
    assert {j["config"]["epochs"] for j in finals} == {Config().epochs}  # its own schedule, not the grid's 8
    probes = compare.probe_jobs(default, dataclasses.replace(compare.FULL, lr_grid=compare.LR_GRID), base, tmp_path)
    assert {j["config"]["epochs"] for j in probes} == {compare.FULL.probe_epochs}  # probes stay short
    # The full grid: one rate per optimizer, no probes; --lrs with several rates: one probe per rate of the
    # variant's optimizer, at the probe seed; finals: one per seed.
    out = tmp_path / "out"
    assert compare.probe_jobs(compare.Variant("after", "no-date"), compare.FULL, base, out) == []
    probed = dataclasses.replace(compare.FULL, lr_grid=compare.LR_GRID)
    sgd = compare.probe_jobs(compare.Variant("after", "no-date"), probed, base, out)
    assert [j["lr"] for j in sgd] == list(compare.LR_GRID["sgd"])
    assert all(j["seed"] == compare.PROBE_SEED and j["config"]["epochs"] == compare.FULL.probe_epochs for j in sgd)
    finals = compare.final_jobs(compare.Variant("before", "with-date"), 1e-3, compare.FULL, base, out)
    assert [j["seed"] for j in finals] == list(range(compare.FULL.seeds))
    keys = [j["key"] for v in chosen for j in compare.probe_jobs(v, probed, base, out)]
    assert len(set(keys)) == len(keys), "every run has its own key"
    # The key names the experiment, not where it runs or is written.
    cfg = before
    assert compare.job_key(cfg) == compare.job_key(dataclasses.replace(cfg, out_dir="x", device="cuda"))
    assert compare.job_key(cfg) != compare.job_key(dataclasses.replace(cfg, seed=1))


def test_choose_lr_prefers_lowest_validation_loss_and_never_a_diverged_probe():
    rows = [{"lr": 0.02, "summary": {"best_val_loss": 0.64}}, {"lr": 0.1, "summary": {"best_val_loss": 0.61}},
            {"lr": 0.5, "summary": {"diverged": "NaN"}}]
    assert compare.choose_lr(rows) == 0.1
    rows[1]["summary"]["best_val_loss"] = float("nan")
    assert compare.choose_lr(rows) == 0.02


class FakeRun:
    """Stands in for run_transformer.run: writes a metrics.csv, returns a summary, counts calls."""

    def __init__(self, interrupt_after: int | None = None):
        self.calls: list[tuple] = []
        self.interrupt_after = interrupt_after

    def __call__(self, cfg: Config, log=print, progress=None, resume_from=None) -> dict:
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise Interrupted("signal 15 during epoch 1")
        self.calls.append((cfg.model, cfg.optimizer, cfg.loss, cfg.channels, cfg.lr, cfg.seed, cfg.epochs))
        run_dir = Path(cfg.out_dir) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        data_dir = Path(cfg.data_dir)  # the record of the data read, as run_transformer writes it
        write_json(run_dir / "config.json", {"data": {"data_dir": str(data_dir),
                                                      "files": data.data_files(data_dir, answers=True)}})
        loss = 0.6 + abs(cfg.lr - 1e-3) + 0.01 * cfg.seed  # 1e-3 is the best rate
        write_metrics_csv(run_dir / "metrics.csv", [
            {"epoch": e + 1, "train_loss": loss - 0.1 * e, "val_loss": loss, "train_acc": 0.7, "val_acc": 0.8}
            for e in range(cfg.epochs)])
        return {"run_dir": str(run_dir), "best_val_loss": loss, "val_acc": 0.8, "val_auc": 0.85, "test_acc": 0.75,
                "test_auc": 0.8, "final_gap_acc": -0.1, "final_train_loss": loss, "best_epoch": cfg.epochs,
                "wall_time_s": 1.0, "diverged": ""}


def test_interrupted_grid_resumes_without_rerunning_finished_runs(tiny_benchmark: Path, tmp_path: Path,
                                                                  monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["--only", "before,+sgd-linear", "--data-dir", str(tiny_benchmark), "--out-dir", str(out),
            "--epochs", "2", "--probe-epochs", "1", "--seeds", "2", "--device", "cpu",
            "--lrs", "adamw=0.0003+0.001+0.003,sgd=0.02+0.1+0.5"]
    total = 2 * 2 * (3 + 2)  # 2 configurations x 2 channel sets x (3 probes + 2 seeds)
    first = FakeRun(interrupt_after=7)
    monkeypatch.setattr(run_transformer, "run", first)
    assert compare.main(argv) == 130
    assert "rerun the same command" in capsys.readouterr().err
    results = out / "results.jsonl"
    assert len(results.read_text().splitlines()) == 7
    assert "Incomplete grid" in (out / "report.md").read_text(), "an interrupted grid still reports what finished"
    with open(results, "a") as f:
        f.write('{"key": "torn by a kil')  # a kill in the middle of a write
    second = FakeRun()
    monkeypatch.setattr(run_transformer, "run", second)
    assert compare.main(argv) == 0
    assert len(second.calls) == total - 7, "finished runs are not rerun"
    assert not set(first.calls) & set(second.calls)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == total and len({r["key"] for r in rows}) == total
    # Every variant chose 1e-3 or the SGD rate nearest to it, and ran its seeds there.
    report = list(csv.DictReader(open(out / "report.csv")))
    assert {r["variant"]: float(r["lr"]) for r in report} == {
        "before/with-date": 1e-3, "before/no-date": 1e-3, "+sgd-linear/with-date": 0.02, "+sgd-linear/no-date": 0.02}
    assert all(r["seeds"] == "2" and float(r["test_acc_mean"]) == pytest.approx(0.75) for r in report)
    third = FakeRun()
    monkeypatch.setattr(run_transformer, "run", third)
    assert compare.main(argv) == 0 and third.calls == [], "a finished grid runs nothing"
    (out / "report.md").unlink()
    assert compare.main(argv + ["--report-only"]) == 0 and third.calls == []
    assert "Incomplete" not in (out / "report.md").read_text()
    # Another epoch budget is another experiment: its runs are new.
    fourth = FakeRun()
    monkeypatch.setattr(run_transformer, "run", fourth)
    assert compare.main(argv[:-8] + ["--epochs", "3", "--probe-epochs", "1", "--seeds", "2", "--device", "cpu",
                                     "--max-minutes", "1e-9"]) == 0
    assert fourth.calls == [], "--max-minutes: no new run once the time is up"
    assert "Incomplete grid" in (out / "report.md").read_text()


def test_a_grid_refuses_to_continue_on_changed_data(tiny_benchmark: Path, tmp_path: Path, monkeypatch, capsys):
    """After one sample of train.hdf5 changed, rerunning the command would skip the finished runs (same keys) and
    report runs on the old and the new data as one experiment. One line naming the file, exit 2, nothing run."""
    data, out = Path(shutil.copytree(tiny_benchmark, tmp_path / "data")), tmp_path / "out"
    argv = ["--only", "before", "--data-dir", str(data), "--out-dir", str(out), "--epochs", "1", "--seeds", "1",
            "--lrs", "adamw=0.001", "--device", "cpu"]
    monkeypatch.setattr(run_transformer, "run", FakeRun())
    assert compare.main(argv) == 0
    results = (out / "results.jsonl").read_text()
    with h5py.File(data / "train.hdf5", "a") as h5:
        h5["density"][0] = h5["density"][1]
    again = FakeRun()
    monkeypatch.setattr(run_transformer, "run", again)
    capsys.readouterr()
    assert compare.main(argv) == 2 and again.calls == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {out / 'results.jsonl'} holds runs on other data: {data / 'train.hdf5'} "
                          f"changed since"), err
    assert (out / "results.jsonl").read_text() == results


def test_a_run_whose_validation_overflows_is_recorded_as_diverged(tiny_benchmark: Path, tmp_path: Path,
                                                                  monkeypatch):
    """Finite weights whose validation predictions are NaN: the grid records a divergence and goes on (it used to
    end in a traceback from the log loss of NaN probabilities)."""
    evaluate = train.evaluate

    def overflowing(model, *args, **kwargs):
        hook = model.register_forward_hook(lambda module, inputs, out: torch.full_like(out, float("nan")))
        try:
            return evaluate(model, *args, **kwargs)
        finally:
            hook.remove()
    monkeypatch.setattr(train, "evaluate", overflowing)
    job = compare.make_job(compare.Variant("cnn", "no-date"), "probe", 1e-3, compare.PROBE_SEED, 1,
                           Config(data_dir=str(tiny_benchmark), device="cpu"), tmp_path / "out")
    row = compare.run_job(job)
    assert row["summary"]["diverged"].startswith("training diverged at epoch 1 on the validation split: 100 of 100 "
                                                 "predictions are NaN or infinite"), row
    assert row["history"] == []


def test_bad_arguments_are_one_line_errors(tiny_benchmark: Path, tmp_path: Path, capsys):
    assert compare.main(["--only", "before,nope", "--data-dir", str(tiny_benchmark), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --only: unknown configuration nope") and "\n" not in err
    assert compare.main(["--seeds", "0", "--data-dir", str(tiny_benchmark), "--out-dir", str(tmp_path)]) == 2


def floats(obj) -> list[float]:
    """Every float in a parsed JSON object."""
    if isinstance(obj, float):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    return [x for v in values for x in floats(v)]


def test_quick_grid_end_to_end(tiny_benchmark: Path, tmp_path: Path, capsys):
    """Real training through run_transformer.run in 2 worker processes (the CNN, the cheapest model; the ViT
    is trained in tests/test_synthetic.py), one epoch per run on the tiny benchmark."""
    out = tmp_path / "out"
    argv = ["--quick", "--only", "cnn", "--data-dir", str(tiny_benchmark), "--out-dir", str(out), "--epochs", "1",
            "--probe-epochs", "1", "--device", "cpu", "--jobs", "2"]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| cnn | density | " in printed and "Bayes limit" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == compare.QUICK.seeds  # density only, at the full grid's rate: no probes
    scores = [x for r in rows for part in ("summary", "history", "heldout") for x in floats(r.get(part, {}))]
    assert scores and all(float(f"{x:.6g}") == x for x in scores)  # written with the digits they have
    answers = read_answer_key(tiny_benchmark, 80)
    for r in rows:  # each row holds its run's history and the accuracy of the predictions that run wrote
        predicted = np.loadtxt(Path(r["summary"]["run_dir"]) / "predictions.txt", dtype=int)
        assert len(r["history"]) == 1 and r["summary"]["test_acc"] == pytest.approx(np.mean(predicted == answers))
    # every final run is scored on the held-out set beside the benchmark: what --predict says of that file
    held = tiny_benchmark.parent / "bench-heldout" / "heldout.hdf5"
    with h5py.File(held) as h5:
        truth = h5["labels"][()].ravel()
    finals = [r for r in rows if r["stage"] == "final"]
    for r in finals:
        output = tmp_path / f"{r['variant'].replace('/', '_')}-{r['seed']}.txt"
        predict_file(Path(r["summary"]["run_dir"]), str(held), str(output), "cpu", log=lambda m: None)
        assert r["heldout"]["n"] == len(truth) == 2 * grid.QUICK_HELDOUT_PER_CLASS
        assert r["heldout"]["acc"] == pytest.approx(np.mean(np.loadtxt(output, dtype=int) == truth), abs=1e-6)
    assert not any("heldout" in r for r in rows if r["stage"] == "probe")
    report = list(csv.DictReader(open(out / "report.csv")))
    assert [r["variant"] for r in report] == ["cnn/no-date"]
    for line in report:  # the report's mean is over the seeds of the chosen rate
        seeds = [r for r in finals if r["variant"] == line["variant"]]
        assert line["seeds"] == "2" and len(seeds) == 2 and line["init"] == "torch"
        assert float(line["test_acc_mean"]) == pytest.approx(np.mean([r["summary"]["test_acc"] for r in seeds]),
                                                             abs=1e-4)
        assert (line["eval_set"], line["eval_n"]) == ("held-out", str(len(truth)))
        assert float(line["heldout_acc"]) == pytest.approx(np.mean([r["heldout"]["acc"] for r in seeds]), abs=1e-6)
        assert line["reference"] == line["variant"].replace("cnn", "after")
    for name in ("report.md", "figures/accuracy.png", "figures/curves_cnn_no-date.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "Bayes limit" in md and "Incomplete" not in md
    assert "runs by code version: " in md and all(set(r["provenance"]) == {"commit", "dirty", "command"} for r in rows)
    assert compare.main(argv) == 0 and "0 runs to do; 2 finished runs" in capsys.readouterr().out


def test_quick_grid_answers_the_question_on_the_users_data_without_an_answer_key(tmp_path: Path, capsys):
    """Data of another physics, no answer key: every row gets an accuracy with a 95% interval and a paired
    difference to `after` on the validation file, which no run used for a choice (they choose on a stratified
    sixth of the training file, copied into the grid's folder); the report speaks of that data, with the
    reference classifier and no Bayes limit or benchmark goal; the user's folder is only read."""
    from tools import other_physics
    data = other_physics.make(tmp_path / "user", "axis-length", train=360, valid=120, test=40)
    (data / "test_labels.hdf5").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    out = tmp_path / "grid"
    argv = ["--quick", "--only", "before,+smooth,after", "--data-dir", str(data), "--out-dir", str(out),
            "--epochs", "1", "--seeds", "2", "--device", "cpu", "--jobs", "1"]
    assert compare.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == before
    with h5py.File(out / "data" / "train.hdf5") as train_part, h5py.File(out / "data" / "valid.hdf5") as choice:
        assert len(train_part["labels"]) == 300 and len(choice["labels"]) == 60
        assert choice["labels"][()].mean() == pytest.approx(0.5)  # stratified
    report = {r["variant"]: r for r in csv.DictReader(open(out / "report.csv"))}
    assert set(report) == {"before/no-date", "+smooth/no-date", "after/no-date"}
    for name, line in report.items():
        assert line["eval_n"] == "120" and 0 <= float(line["heldout_acc"]) <= 1
        assert 0 < float(line["heldout_acc_ci95"]) < 0.5
        if name != "after/no-date":
            assert abs(float(line["diff_vs_reference"])) <= 1 and float(line["diff_ci95"]) > 0
    md = (out / "report.md").read_text()
    assert "validation file acc" in md and "Reference classifier" in md
    for absent in ("Bayes", "83%", "benchmark", "nan"):
        assert absent not in md, absent
    rows = md.split("All rows:")[1].split("![accuracy]")[0]
    assert "–" not in rows  # every row has its accuracy, interval and difference
    assert "nan" not in capsys.readouterr().out


def test_a_run_is_identified_by_every_setting_except_how_and_where_it_is_computed():
    """job_key follows config.py's roles: EXECUTION and OUTPUT fields leave a run's identity alone (a
    stored result stands for any of their values), every other field makes it another run."""
    from test_checkpoints import another_value
    base = Config()
    for f in dataclasses.fields(Config):
        changed = dataclasses.replace(base, **{f.name: another_value(f, getattr(base, f.name))})
        same = compare.job_key(changed) == compare.job_key(base)
        assert same == (f.name in fields_with(EXECUTION, OUTPUT)), f.name


def test_a_diverged_run_is_reported_from_its_own_folder_not_an_earlier_attempts(tmp_path: Path, monkeypatch):
    """A job folder can hold an earlier attempt's run folder (killed, or diverged before this code); the row of a
    run that diverges reads the summary of the attempt that just ran, even when the older one is newer on disk."""
    job_dir = tmp_path / "job"
    old = job_dir / "20260101-000000-old"
    old.mkdir(parents=True)
    write_json(old / "summary.json", {"run_dir": str(old), "val_acc": 0.99, "diverged": ""})
    attempts = []

    def diverging(cfg: Config, log=print, progress=None, resume_from=None) -> dict:
        run_dir = job_dir / f"20260102-00000{len(attempts)}-new"
        run_dir.mkdir()
        if attempts:  # the second attempt finished an epoch: run() wrote its summary before raising
            write_metrics_csv(run_dir / "metrics.csv", [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.6,
                                                         "train_acc": 0.7, "val_acc": 0.6}])
            write_json(run_dir / "summary.json", {"run_dir": str(run_dir), "val_acc": 0.6, "diverged": "NaN"})
        attempts.append(run_dir)
        os.utime(old / "summary.json")  # the earlier attempt's file is the newest on disk
        raise train.Diverged("training diverged at epoch 2")

    monkeypatch.setattr(run_transformer, "run", diverging)
    job = {"key": "k", "variant": "before/no-date", "stage": "probe", "lr": 1e-3, "seed": 100,
           "config": dataclasses.asdict(dataclasses.replace(Config(), out_dir=str(job_dir), device="cpu"))}
    first = compare.run_job(job)
    assert "run_dir" not in first["summary"] and first["summary"]["diverged"] == "training diverged at epoch 2"
    second = compare.run_job(job)
    assert second["summary"]["run_dir"] == str(attempts[1]) and second["summary"]["val_acc"] == 0.6
