"""Interruption, resume, divergence and reproducibility of run_transformer, on tiny CPU runs.

The resume test sends a real SIGTERM to a training subprocess and checks that the resumed run ends bit for bit
where an uninterrupted run with the same seed ends. The other tests call run_transformer.main in-process.
"""

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest
import torch

import checkpoints
import data
import report
import run_transformer
import synthetic
import train
from config import CHANNEL_NAMES

from conftest import ROOT, SMALL_VIT

# what these tests check is not drawn: figures are built but not rendered (conftest.unrendered_figures)
pytestmark = pytest.mark.usefixtures("unrendered_figures")


def cli(data: Path, tmp: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--out-dir", str(tmp / "runs"), "--predictions", str(tmp / "pred.txt"),
            *SMALL_VIT, *extra]


def only_run(tmp: Path) -> Path:
    runs = sorted((tmp / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---- SIGTERM, then --resume: identical to an uninterrupted run ----------------------------------------------

def start(argv: list[str], log: Path) -> subprocess.Popen:
    """The CLI in a subprocess with one intra-op thread, as this process has (conftest), so that both do the same
    float operations."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "run_transformer.py", *argv], cwd=ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finished(proc: subprocess.Popen, log: Path, timeout: float = 120) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout)
    return rc, log.read_text()


def wait_for_rows(run_parent: Path, k: int, proc: subprocess.Popen, timeout: float = 600) -> Path:
    """Poll (no sleeps tied to speed) until the run's metrics.csv has k epochs; returns the run folder. The
    timeout only guards against a hang."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for run_dir in run_parent.glob("*"):
            if (run_dir / "metrics.csv").exists() and len(rows(run_dir)) >= k:
                return run_dir
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.01)
    raise AssertionError(f"no metrics.csv with {k} rows within {timeout} s")


def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    """A real SIGTERM to a training process; --resume of its run folder ends bit for bit where an uninterrupted run
    with the same seed ends (both of these in this process; the uninterrupted one trains while the subprocess
    starts, and a thread sends the signal once the subprocess has written its first epoch). Before that, one sample
    of train.hdf5 changes: the resumed epochs would train on other data than the run's whitening filter, statistics
    and history, so --resume refuses in one line naming the file and leaves the run folder untouched; with the file
    restored, the run resumes. Each checkpoint records how long every attempt has worked on the run; the summary and
    report.md give the total and the attempts, not the last one's."""
    # 12 steps of 32 per epoch: the signal lands in epoch 2, whose partial work is abandoned and replayed.
    data = synthetic.generate_benchmark(tmp_path / "data", 0, synthetic.Sizes(200, 200, 50, 50, 40, 40))
    args = ["--data-dir", str(data), *SMALL_VIT, "--batch-size", "32", "--epochs", "3", "--seed", "3",
            "--tta-shifts", "1"]
    cut = start([*args, "--out-dir", str(tmp_path / "cut" / "runs"), "--predictions", str(tmp_path / "cut.txt")],
                tmp_path / "cut.log")
    watched: dict = {}

    def interrupt_after_epoch_1() -> None:  # the poll of wait_for_rows, off the main thread
        try:
            watched["run_dir"] = wait_for_rows(tmp_path / "cut" / "runs", 1, cut)
            cut.send_signal(signal.SIGTERM)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            watched["error"] = e
    watcher = threading.Thread(target=interrupt_after_epoch_1, daemon=True)
    watcher.start()
    try:
        # the uninterrupted reference, in this process while the subprocess imports and trains its first epoch
        ref = [*args, "--out-dir", str(tmp_path / "ref" / "runs"), "--predictions", str(tmp_path / "ref.txt")]
        assert run_transformer.main(ref) == 0
        ref_dir = only_run(tmp_path / "ref")
    finally:
        watcher.join(timeout=700)
    if "error" in watched:
        cut.kill()
        raise watched["error"]
    run_dir = watched["run_dir"]
    rc, out = finished(cut, tmp_path / "cut.log")
    assert rc == 128 + signal.SIGTERM, out
    assert "Traceback" not in out
    message = [line for line in out.splitlines() if line.startswith("interrupted:")]
    assert len(message) == 1 and "SIGTERM" in message[0], out
    assert f"{run_dir}/last.pt" in message[0] and f"--resume {run_dir}" in message[0], message
    saved_epoch = torch.load(run_dir / "last.pt", weights_only=True)["train_state"]["epoch"]
    assert 1 <= saved_epoch < 3 and len(rows(run_dir)) == saved_epoch
    assert not (run_dir / "summary.json").exists()  # the interrupted run did not pretend to finish
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"
    payload = torch.load(run_dir / "last.pt", weights_only=True)
    assert len(payload["attempt_seconds"]) == 1 and 0 < payload["attempt_seconds"][0] < 600
    payload["attempt_seconds"] = [600.0]  # as if the first attempt had trained for ten minutes
    torch.save(payload, run_dir / "last.pt")

    original = (data / "train.hdf5").read_bytes()
    with h5py.File(data / "train.hdf5", "a") as h5:
        h5["density"][0] = h5["density"][1]
    saved = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    capsys.readouterr()
    assert run_transformer.main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot resume {run_dir}: {data / 'train.hdf5'} changed since the run started"), err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == saved
    (data / "train.hdf5").write_bytes(original)

    assert run_transformer.main(["--resume", str(run_dir)]) == 0
    assert f"resuming {run_dir} after epoch {saved_epoch}" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    [earlier, last] = summary["attempt_seconds"]
    assert earlier == 600.0 and 0 < last < 600 and summary["wall_time_s"] == pytest.approx(600.0 + last, abs=0.11)
    assert f"{summary['wall_time_s']} s over 2 attempts (600.0 s, {last} s)" in (run_dir / "report.md").read_text()

    assert (run_dir / "metrics.csv").read_text() == (ref_dir / "metrics.csv").read_text()
    assert len(rows(run_dir)) == 3
    a = torch.load(run_dir / "last.pt", weights_only=True)
    b = torch.load(ref_dir / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["train_state"] == b["train_state"] and torch.equal(a["rng"], b["rng"])
    assert (run_dir / "predictions.txt").read_text() == (ref_dir / "predictions.txt").read_text()
    assert (tmp_path / "cut.txt").read_text() == (tmp_path / "ref.txt").read_text()


def test_sigint_during_training_saves_last_pt_and_says_how_to_resume(tiny_benchmark, tmp_path, monkeypatch, capsys):
    """A signal while epoch 1 is evaluated: the epoch completes, is saved, and the run stops with exit 130."""
    predict_logits = train.predict_logits

    def predict_then_ctrl_c(*args, **kwargs):
        handler = signal.getsignal(signal.SIGINT)
        assert isinstance(getattr(handler, "__self__", None), train.StopFlag), "no StopFlag: would stop pytest"
        os.kill(os.getpid(), signal.SIGINT)  # caught by fit's StopFlag, which only sets a flag
        return predict_logits(*args, **kwargs)
    monkeypatch.setattr(train, "predict_logits", predict_then_ctrl_c)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc = run_transformer.main(cli(tiny_benchmark, tmp_path, "--epochs", "3"))
    err = capsys.readouterr().err
    run_dir = only_run(tmp_path)
    assert rc == 130
    assert err.strip() == (f"interrupted: SIGINT after epoch 1; {run_dir}/last.pt holds epoch 1. Resume with: "
                           f"python run_transformer.py --resume {run_dir}")
    assert torch.load(run_dir / "last.pt", weights_only=True)["train_state"]["epoch"] == 1
    assert len(rows(run_dir)) == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


def test_a_signal_while_results_are_written_still_says_how_to_resume(tiny_benchmark, tmp_path, monkeypatch, capsys):
    """After the last epoch, last.pt is complete: a SIGTERM while the test predictions are written must point
    to --resume (which then finishes the run), not to starting over."""
    predict = report.predict_logits

    def predict_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # signals_interrupt: raises Interrupted right here
        return predict(*args, **kwargs)
    monkeypatch.setattr(report, "predict_logits", predict_then_sigterm)
    assert run_transformer.main(cli(tiny_benchmark, tmp_path, "--epochs", "1")) == 128 + signal.SIGTERM
    run_dir = only_run(tmp_path)
    assert capsys.readouterr().err.strip().endswith(f"Resume with: python run_transformer.py --resume {run_dir}")
    monkeypatch.setattr(report, "predict_logits", predict)
    assert run_transformer.main(["--resume", str(run_dir)]) == 0 and (run_dir / "summary.json").is_file()


def test_sigterm_before_training_exits_cleanly(tiny_benchmark, tmp_path, monkeypatch, capsys):
    """A signal while the data is loaded: no traceback, exit 143, no run folder, nothing half-written."""
    load = data.load_data

    def load_then_sigterm(*args, **kwargs):
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, handlers[1]), "would kill pytest"
        os.kill(os.getpid(), signal.SIGTERM)
        return load(*args, **kwargs)
    monkeypatch.setattr(run_transformer, "load_data", load_then_sigterm)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc = run_transformer.main(cli(tiny_benchmark, tmp_path, "--epochs", "1"))
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM
    assert err.startswith("interrupted: SIGTERM") and "run the same command again" in err and len(
        err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_last_pt_holds_all_state_and_resuming_a_finished_run_changes_nothing(finished_run, capsys):
    """A run that finished has nothing to resume: one line (epochs, best epoch, where the results are), exit 0,
    and no file of the run folder, nor --predictions, is written again; no new run folder either."""
    run_dir = finished_run.dir
    payload = torch.load(run_dir / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "train_state", "rng", "config", "stats"} <= payload.keys()
    state = payload["train_state"]
    assert state["epoch"] == 2 and len(state["history"]) == 2 and state["best_epoch"] in (1, 2)
    assert payload["scheduler"]["last_epoch"] == 2 * (400 // 64)
    owned = [*run_dir.iterdir(), finished_run.predictions]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in owned}
    capsys.readouterr()
    assert run_transformer.main(["--resume", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.strip().splitlines()) == 1, out
    assert out.startswith(f"nothing to resume: {run_dir} finished after epoch 2 of 2 (best epoch "), out
    assert f"{run_dir}/report.md" in out, out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in owned} == before
    assert sorted(run_dir.iterdir()) == sorted(p for p in owned if p.parent == run_dir)
    assert list(run_dir.parent.iterdir()) == [run_dir]


def test_a_run_that_stopped_early_resumes_when_the_patience_is_raised(tmp_path):
    """Finished means: the loop would run no epoch with the resumed config, and the results of that state were
    written. A larger --patience (which a resume may change) lets an early-stopped run train on."""
    state = train.TrainState(epoch=2, best_epoch=1)
    cfg = run_transformer.Config(epochs=4, patience=1)
    assert run_transformer.finished_line(tmp_path, cfg, state) == ""  # results not written yet
    (tmp_path / "summary.json").write_text(json.dumps({"epochs_run": 1}))
    assert run_transformer.finished_line(tmp_path, cfg, state) == ""  # results of an earlier epoch
    (tmp_path / "summary.json").write_text(json.dumps({"epochs_run": 2}))
    assert "finished after epoch 2 of 4 (best epoch 1, stopped early: a larger --patience trains on)" in \
        run_transformer.finished_line(tmp_path, cfg, state)
    assert run_transformer.finished_line(tmp_path, run_transformer.Config(epochs=4, patience=3), state) == ""


def test_a_run_written_by_another_version_is_one_clear_error(finished_run, tmp_path, capsys):
    """A checkpoint whose settings differ from this version's Config: --predict and --resume say so and stop."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run.dir, run_dir)
    for name in ("best.pt", "last.pt"):  # drop a setting, as another version may have written them
        payload = torch.load(run_dir / name, weights_only=True)
        del payload["config"]["pool"]
        torch.save(payload, run_dir / name)
    capsys.readouterr()
    assert run_transformer.main(["--predict", str(run_dir), "--input", str(finished_run.data / "test_no_labels.hdf5"),
                                 "--output", str(tmp_path / "again.txt")]) == 2
    assert run_transformer.main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("written by another version" in line for line in err), err


# ---- divergence -----------------------------------------------------------------------------------------

def test_huge_learning_rate_stops_with_epoch_step_and_lr(tiny_benchmark, tmp_path, capsys):
    rc = run_transformer.main(cli(tiny_benchmark, tmp_path, "--epochs", "3", "--lr", "1e6"))
    err = capsys.readouterr().err.strip()
    assert rc == 3
    assert len(err.splitlines()) == 1 and err.startswith("error: training diverged at epoch 1, step "), err
    assert "--lr 1e+06" in err and "try --lr 100000" in err and "no checkpoint" in err
    assert not (tmp_path / "pred.txt").exists()


def bad_from_call(make_loss, first_bad_call: int, poison_weights_only: bool):
    """Wraps train.training_loss: from a given call on, a NaN loss, or a finite loss with a NaN gradient."""
    calls = {"n": 0}

    def make(cfg):
        loss_fn = make_loss(cfg)

        def loss(logits, y):
            calls["n"] += 1
            value = loss_fn(logits, y)
            if calls["n"] < first_bad_call:
                return value
            if poison_weights_only:  # sqrt'(0) = inf and inf * 0 = NaN: the value stays 0, the gradient is NaN
                return value + (logits * 0).sum().sqrt()
            return value * float("nan")
        return loss
    return make


@pytest.mark.parametrize("poison_weights_only", [False, True], ids=["nan-loss", "nan-gradient-last-step"])
def test_divergence_keeps_best_checkpoint_and_writes_its_predictions(tiny_benchmark, tmp_path, monkeypatch, capsys,
                                                                     poison_weights_only):
    steps = 400 // 64  # 6 full batches per epoch; the bad step is the last one of epoch 2
    monkeypatch.setattr(train, "training_loss", bad_from_call(train.training_loss, 2 * steps, poison_weights_only))
    rc = run_transformer.main(cli(tiny_benchmark, tmp_path, "--epochs", "2", "--tta-shifts", "1"))
    err = capsys.readouterr().err.strip()
    run_dir = only_run(tmp_path)
    assert rc == 3
    what = "weights became NaN" if poison_weights_only else "loss became NaN"
    assert len(err.splitlines()) == 1 and err.startswith(f"error: training diverged at epoch 2, step {steps} of "
                                                         f"{steps}: the {what}"), err
    assert "learning rate (--lr 0.05)" in err and f"Kept {run_dir}/best.pt (epoch 1)" in err
    best = torch.load(run_dir / "best.pt", weights_only=True)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert best["train_state"]["epoch"] == 1 and last["train_state"]["epoch"] == 1  # nothing poisoned saved
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    predictions = (run_dir / "predictions.txt").read_text().split()
    assert len(predictions) == 80 and set(predictions) <= {"0", "1"}
    assert (tmp_path / "pred.txt").read_text().split() == predictions
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == 1 and "diverged at epoch 2" in summary["diverged"]


def overflowing(model: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """From now on the model's outputs are NaN, as when finite weights overflow in the forward pass."""
    return model.register_forward_hook(lambda module, args, out: torch.full_like(out, float("nan")))


def test_predictions_that_overflow_in_validation_are_a_divergence(tiny_benchmark, tmp_path, monkeypatch, capsys):
    """Finite weights, NaN validation predictions in epoch 2 (--lr 1e6 on small data did that): exit 3 with the
    advice of a divergence in training, best.pt of epoch 1 kept and its predictions written, not a traceback."""
    predict_logits, calls = train.predict_logits, []

    def overflowing_in_epoch_2(model, *args, **kwargs):
        calls.append(1)
        hook = overflowing(model) if len(calls) == 2 else None
        try:
            return predict_logits(model, *args, **kwargs)
        finally:
            hook and hook.remove()
    monkeypatch.setattr(train, "predict_logits", overflowing_in_epoch_2)
    rc = run_transformer.main(cli(tiny_benchmark, tmp_path, "--epochs", "2", "--tta-shifts", "1"))
    err = capsys.readouterr().err.strip()
    run_dir = only_run(tmp_path)
    assert rc == 3
    assert len(err.splitlines()) == 1 and err.startswith("error: training diverged at epoch 2 on the validation "
                                                         "split: 100 of 100 predictions are NaN or infinite"), err
    assert "learning rate (--lr 0.05) is probably too high, try --lr 0.005" in err
    assert f"Kept {run_dir}/best.pt (epoch 1)" in err
    assert torch.load(run_dir / "last.pt", weights_only=True)["train_state"]["epoch"] == 1
    assert len((tmp_path / "pred.txt").read_text().split()) == 80
    assert "diverged at epoch 2" in json.loads((run_dir / "summary.json").read_text())["diverged"]


def test_test_predictions_that_overflow_are_a_divergence_and_keep_the_checkpoints(tiny_benchmark, tmp_path,
                                                                                   monkeypatch, capsys):
    """The best epoch's own model overflows on the test split: exit 3 with the advice, no predictions written
    (a NaN would be a silent 0), best.pt and last.pt kept."""
    predict = report.predict_logits

    def overflowing_on_test(model, x, *args, **kwargs):
        if len(x) != 80:  # the tiny benchmark's validation split (100 images) is predicted as usual
            return predict(model, x, *args, **kwargs)
        hook = overflowing(model)
        try:
            return predict(model, x, *args, **kwargs)
        finally:
            hook.remove()
    monkeypatch.setattr(report, "predict_logits", overflowing_on_test)
    rc = run_transformer.main(cli(tiny_benchmark, tmp_path, "--epochs", "1"))
    err = capsys.readouterr().err.strip()
    run_dir = only_run(tmp_path)
    assert rc == 3 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: the model of {run_dir}/best.pt (epoch 1) overflows on validation views or "
                          f"test: 80 of 80 predictions are NaN or infinite"), err
    assert "try --lr 0.005" in err
    assert not (tmp_path / "pred.txt").exists() and not (run_dir / "predictions.txt").exists()
    assert torch.load(run_dir / "best.pt", weights_only=True)["train_state"]["epoch"] == 1


def test_predict_with_a_model_that_overflows_is_a_divergence_and_writes_nothing(finished_run, tmp_path, monkeypatch,
                                                                                capsys):
    """--predict on new measurements where the forward pass overflows: NaN probabilities would have become a
    silent 0 in every line of the output. Exit 3, one line with the advice, no output file."""
    run_dir, test_file = finished_run.dir, finished_run.data / "test_no_labels.hdf5"
    build_model = checkpoints.build_model  # checkpoints.trained_model builds the saved network

    def build_overflowing(*args, **kwargs):
        model = build_model(*args, **kwargs)
        overflowing(model)
        return model
    monkeypatch.setattr(checkpoints, "build_model", build_overflowing)
    capsys.readouterr()
    output = tmp_path / "new.txt"
    rc = run_transformer.main(["--predict", str(run_dir), "--input", str(test_file), "--output", str(output),
                               "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 3 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: the model of {run_dir}/best.pt diverges on {test_file}: "
                          f"80 of 80 predictions are NaN or infinite"), err
    assert "try --lr 0.005" in err
    assert not output.exists() and not output.with_suffix(".csv").exists()


# ---- reproducibility ------------------------------------------------------------------------------------

def test_same_seed_gives_identical_metrics_and_config_records_provenance(finished_run, tiny_benchmark, tmp_path):
    """The shared run again, on a byte-identical copy of its data, with its seed typed: the same metrics.csv;
    another seed: other metrics. config.json names the seed, the environment and the exact bytes of the data."""
    config = json.loads((finished_run.dir / "config.json").read_text())
    seed = config["config"]["seed"]
    files = config["data"]["files"]
    assert set(files) == {"train", "valid", "test", "test_answers"}  # the benchmark's answer key is used too
    for record in files.values():  # the fingerprint names the exact bytes the run saw (and did not change)
        content = Path(record["path"]).read_bytes()
        assert record["bytes"] == len(content) and record["sha256"] == hashlib.sha256(content).hexdigest()
        assert hashlib.sha256((tiny_benchmark / Path(record["path"]).name).read_bytes()).hexdigest() == \
            record["sha256"]
    env = config["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert {"python", "numpy", "h5py"} <= env.keys()
    assert config["data"]["channels"] == [c for c in CHANNEL_NAMES if c != "recording_date"]
    expected = (finished_run.dir / "metrics.csv").read_text()
    assert len(rows(finished_run.dir)) == 2
    for name, run_seed in (("same", seed), ("other", seed + 1)):
        argv = cli(tiny_benchmark, tmp_path / name, "--epochs", "2", "--loss", "smooth", "--seed", str(run_seed))
        assert run_transformer.main(argv) == 0
        run_dir = only_run(tmp_path / name)
        assert json.loads((run_dir / "config.json").read_text())["config"]["seed"] == run_seed
        assert ((run_dir / "metrics.csv").read_text() == expected) == (run_seed == seed), name


def test_a_file_the_run_did_not_record_is_not_a_change_of_its_data(tmp_path):
    """A run trained without an answer key records no test_answers: an answer key added later must not block
    its --resume; a recorded file that changed or went missing does."""
    from fileio import changed_files, fingerprint
    for name in ("train.hdf5", "test_labels.hdf5"):
        (tmp_path / name).write_bytes(name.encode())
    recorded = {"train": fingerprint(tmp_path / "train.hdf5")}
    current = {**recorded, "test_answers": fingerprint(tmp_path / "test_labels.hdf5")}
    assert changed_files(recorded, current) == []
    (tmp_path / "train.hdf5").write_bytes(b"other")
    assert changed_files(recorded, {"train": fingerprint(tmp_path / "train.hdf5")}) == [str(tmp_path / "train.hdf5")]
    assert changed_files(recorded, {}) == [str(tmp_path / "train.hdf5")]
