"""Bad input gets one clear line and exit code 2, never a traceback or a hang; nothing the user owns is
overwritten. Every case runs run_transformer.main in-process on a private copy of a tiny data set."""

import json
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import pytest
import torch

import run_transformer
import synthetic
from config import UserError
from conftest import SMALL_VIT
from fileio import fingerprint, fresh_directory, write_text

ROOT = Path(__file__).resolve().parents[1]
TINY = [*SMALL_VIT, "--epochs", "1"]


def main_result(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of run_transformer.main (argparse errors arrive as SystemExit); a warning would be
    a second line on the user's terminal, so none may be raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = run_transformer.main(argv)
        except SystemExit as e:
            rc = e.code
    assert not caught, [str(w.message) for w in caught]
    return rc, capsys.readouterr().err


def replace(path: Path, **datasets: np.ndarray) -> None:
    """Rewrite some datasets of an HDF5 file in place (only ever on a test's private copy)."""
    with h5py.File(path, "a") as h5:
        for key, value in datasets.items():
            del h5[key]
            h5.create_dataset(key, data=value)


def read(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return h5[key][()]


def delete(path: Path, key: str) -> None:
    with h5py.File(path, "a") as h5:
        del h5[key]


def with_nan(path: Path, key: str, count: int, value: float) -> None:
    x = read(path, key).astype(np.float32)
    x.reshape(-1)[:count] = value
    replace(path, **{key: x.astype(np.float16)})


# Each case: how to spoil the data folder d (a private copy) or the command, given tmp and the trained run;
# returns the extra argv; then the words the one error line must contain.
Setup = Callable[[Path, Path, Path], list[str]]
CASES: dict[str, tuple[Setup, list[str]]] = {
    "data-dir-missing": (lambda d, tmp, run: ["--data-dir", str(tmp / "nowhere")],
                         ["nowhere does not exist", "--data-dir"]),
    "data-dir-is-a-file": (lambda d, tmp, run: ["--data-dir", str(d / "valid.hdf5")], ["is a file"]),
    "split-missing": (lambda d, tmp, run: (d / "valid.hdf5").unlink() or [],
                      ["valid file", "valid.hdf5 not found", "put valid.hdf5 in --data-dir"]),
    "train-missing": (lambda d, tmp, run: (d / "train.hdf5").unlink() or [],
                      ["has no train.hdf5 but holds", "valid.hdf5", "the run reads train.hdf5"]),
    "not-hdf5": (lambda d, tmp, run: (d / "train.hdf5").write_text("density,labels\n1,0\n") and [],
                 ["train.hdf5 is not a readable HDF5 file", "copy it again"]),
    "truncated": (lambda d, tmp, run: (d / "test_no_labels.hdf5").write_bytes(
        (d / "test_no_labels.hdf5").read_bytes()[:60_000]) and [], ["test_no_labels.hdf5", "copy it again"]),
    "key-missing": (lambda d, tmp, run: delete(d / "valid.hdf5", "labels") or [],
                    ["has no dataset 'labels'", "found: density, recording_date",
                     "the valid file needs density, recording_date, labels"]),
    "labels-shorter": (lambda d, tmp, run: replace(d / "train.hdf5", labels=read(d / "train.hdf5", "labels")[:-3])
                       or [], ["density has 400 samples but labels has 397"]),
    "channels-disagree": (lambda d, tmp, run: replace(d / "valid.hdf5", recording_date=np.zeros((100, 20, 20),
                                                                                                   np.float16))
                          or [], ["channel shapes differ", "recording_date (100, 20, 20)"]),
    "non-square": (lambda d, tmp, run: replace(d / "valid.hdf5", density=np.ones((100, 28, 27), np.float16))
                   or [], ["(100, 28, 27)", "square grids"]),
    "grid-differs-between-splits": (lambda d, tmp, run: replace(
        d / "test_no_labels.hdf5", density=np.ones((80, 20, 20), np.float16),
        recording_date=np.ones((80, 20, 20), np.float16)) or [],
        ["grid sizes differ between splits", "train 28x28", "test 20x20"]),
    "nan": (lambda d, tmp, run: with_nan(d / "train.hdf5", "density", 3, np.nan) or [],
            ["density in the train split has 3 NaN and 0 infinite values"]),
    "inf": (lambda d, tmp, run: with_nan(d / "valid.hdf5", "recording_date", 5, np.inf) or [],
            ["recording_date in the valid split has 0 NaN and 5 infinite values"]),
    "train-labels": (lambda d, tmp, run: replace(d / "train.hdf5", labels=np.full((400, 1), 2, np.int8)) or [],
                     ["train labels must be 0 or 1", "(2) in 400 samples"]),
    "valid-labels": (lambda d, tmp, run: replace(d / "valid.hdf5", labels=np.full((100, 1), -1, np.int8)) or [],
                     ["valid labels must be 0 or 1", "(-1)"]),
    "empty-split": (lambda d, tmp, run: replace(d / "valid.hdf5", density=np.zeros((0, 28, 28), np.float16),
                                                recording_date=np.zeros((0, 28, 28), np.float16),
                                                labels=np.zeros((0, 1), np.int8)) or [],
                    ["the valid split is empty"]),
    "unknown-channel": (lambda d, tmp, run: ["--channels", "density,pressure"],
                        ["--channels", "density,pressure", "recording_date"]),
    "patch-size": (lambda d, tmp, run: ["--patch-size", "5"],
                   ["--patch-size 5 does not divide the image size 28", "1, 2, 4, 7, 14"]),
    "heads": (lambda d, tmp, run: ["--heads", "3"], ["--emb-dim 16 is not divisible by --heads 3"]),
    "out-dir-under-a-file": (lambda d, tmp, run: ["--out-dir", str(d / "train.hdf5" / "runs")],
                             ["train.hdf5 is a file, not a folder", "--out-dir"]),
    "out-dir-a-dangling-link": (lambda d, tmp, run: (tmp / "gone").symlink_to(tmp / "unmounted") or [
        "--out-dir", str(tmp / "gone")], ["cannot create output folder", "--out-dir"]),
    "predictions-under-a-file": (lambda d, tmp, run: ["--predictions", str(d / "valid.hdf5" / "p.txt")],
                                 ["valid.hdf5 is a file, not a folder"]),
    "predictions-is-a-folder": (lambda d, tmp, run: ["--predictions", str(tmp)], ["it is a folder"]),
    "predictions-onto-data": (lambda d, tmp, run: ["--predictions", str(d / "train.hdf5")],
                              ["not a predictions file", "choose another path"]),
    "resume-model-differs": (lambda d, tmp, run: ["--resume", str(run), "--emb-dim", "8", "--depth", "2"],
                             ["settings of the experiment differ", "--emb-dim: checkpoint 16 vs requested 8",
                              "--depth: checkpoint 1 vs requested 2"]),
    "resume-lr-differs": (lambda d, tmp, run: ["--resume", str(run), "--lr", "0.01"],
                          ["settings of the experiment differ", "--lr: checkpoint 0.05 vs requested 0.01"]),
    "resume-not-a-checkpoint": (lambda d, tmp, run: (tmp / "fake").mkdir() or (tmp / "fake" / "last.pt")
                                .write_bytes(b"\x80\x04not a pickle") and ["--resume", str(tmp / "fake")],
                                ["last.pt is not a checkpoint written by run_transformer.py"]),
    "resume-not-a-run-folder": (lambda d, tmp, run: ["--resume", str(tmp / "nowhere")], ["is not a run folder"]),
    "resume-a-weights-only-file": (lambda d, tmp, run: (tmp / "w").mkdir() or torch.save(
        {"model": {}, "config": {}, "stats": {}}, tmp / "w" / "last.pt") or ["--resume", str(tmp / "w")],
        ["cannot be resumed", "no cuda_rng, optimizer, rng, scheduler, train_state"]),
    "resume-a-damaged-training-state": (lambda d, tmp, run: (tmp / "t").mkdir() or torch.save(
        {**dict.fromkeys(["model", "stats", "optimizer", "scheduler", "rng", "cuda_rng"]), "train_state": {"epochs": 1},
         "config": torch.load(run / "last.pt", weights_only=False)["config"]}, tmp / "t" / "last.pt")
        or ["--resume", str(tmp / "t")], ["cannot be resumed", "training state is damaged"]),
    "predict-output-exists": (lambda d, tmp, run: (tmp / "mine.txt").write_text("my notes\n") and [
        "--predict", str(run), "--input", str(d / "test_no_labels.hdf5"), "--output", str(tmp / "mine.txt")],
        ["mine.txt already exists", "nothing was overwritten"]),
    "predict-damaged-input": (lambda d, tmp, run: (tmp / "x.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(99))
                              and ["--predict", str(run), "--input", str(tmp / "x.hdf5")],
                              ["x.hdf5 is not a readable HDF5 file"]),
    "density-non-positive": (lambda d, tmp, run: with_nan(d / "train.hdf5", "density", 4, 0.0) or [],
                             ["train.hdf5: density has 4 non-positive values", "logarithm", "--no-whiten"]),
    "density-underflows-float16": (lambda d, tmp, run: with_nan(d / "valid.hdf5", "density", 2, 1e-9) or [],
                                   ["valid.hdf5: density has 2 non-positive values", "float16"]),
    "density-negative-in-test": (lambda d, tmp, run: with_nan(d / "test_no_labels.hdf5", "density", 3, -1.0)
                                 or [], ["test_no_labels.hdf5: density has 3 non-positive values (in 1 of 80"]),
    "predict-input-non-positive": (lambda d, tmp, run: with_nan(d / "valid.hdf5", "density", 6, 0.0) or [
        "--predict", str(run), "--input", str(d / "valid.hdf5"), "--output", str(tmp / "new.txt")],
        ["valid.hdf5: density has 6 non-positive values"]),
    "train-one-class": (lambda d, tmp, run: replace(d / "train.hdf5", labels=np.ones((400, 1), np.int8)) or [],
                        ["every training label is 1 (400 samples)", "both states"]),
    "input-without-predict": (lambda d, tmp, run: ["--input", str(d / "valid.hdf5")],
                              ["--input and --output go with --predict RUN_DIR"]),
    "resume-and-predict": (lambda d, tmp, run: ["--resume", str(run), "--predict", str(run)],
                           ["--predict: not allowed with argument --resume"]),
    "benchmark-foreign-files": (lambda d, tmp, run: (tmp / "mine" / "synthetic").mkdir(parents=True) or shutil.copy(
        d / "train.hdf5", tmp / "mine" / "synthetic" / "train.hdf5") and ["--data-dir", str(tmp / "mine")],
        ["holds train.hdf5 that the benchmark generator did not create", "move them away"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_line_and_exit_2(case, tiny_benchmark, finished_run, tmp_path, capsys):
    setup, words = CASES[case]
    data = Path(shutil.copytree(tiny_benchmark, tmp_path / "data"))
    extra = setup(data, tmp_path, finished_run.dir)
    user_files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    run_files = {p: p.read_bytes() for p in finished_run.dir.iterdir()}
    argv = ["--data-dir", str(data), "--out-dir", str(tmp_path / "runs"), "--predictions",
            str(tmp_path / "pred.txt"), *TINY, *extra]
    rc, err = main_result(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    # Nothing that existed was changed, nothing was half-written, and no run folder was started.
    assert {p: p.read_bytes() for p in user_files} == user_files
    assert {p: p.read_bytes() for p in finished_run.dir.iterdir()} == run_files
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "runs").exists()


def test_predict_names_what_the_model_reads_and_a_key_that_differs_only_in_case(tiny_benchmark, finished_run,
                                                                               tmp_path, capsys):
    """A file for --predict needs only the model's channels (no labels, no channel the model leaves out); a key
    spelled with other capitals is pointed out."""
    new = Path(shutil.copy(tiny_benchmark / "valid.hdf5", tmp_path / "new.hdf5"))
    with h5py.File(new, "a") as h5:
        h5.move("density", "Density")
    argv = ["--predict", str(finished_run.dir), "--input", str(new), "--output", str(tmp_path / "p.txt")]
    rc, err = main_result(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.strip() == (f"error: {new} has no dataset 'density' (found: Density, labels, recording_date); the "
                           f"input file needs density; its 'Density' differs only in case: rename it to 'density'")
    assert not (tmp_path / "p.txt").exists()


# ---- a file held open by another program ------------------------------------------------------------------

HOLD = "import sys, h5py\nf = h5py.File(sys.argv[1], 'a')\nprint('open', flush=True)\nsys.stdin.read()\n"


@contextmanager
def held_open_for_writing(path: Path) -> Iterator[None]:
    """Another program holds `path` open with h5py mode "a" (as a notebook would), so HDF5 has it locked."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


@pytest.mark.parametrize("name", ["train.hdf5", "test_labels.hdf5", "predict-input"])
def test_a_file_in_use_by_another_program_is_named_as_such(name, tiny_benchmark, finished_run, tmp_path, capsys):
    """HDF5 reports the lock of a file another program holds open for writing: the line says so and how to
    free it, not that the file is damaged; exit 2 and nothing written. The splits are read by one function
    (train stands for valid and test), the answer key and --predict's input by others."""
    data = Path(shutil.copytree(tiny_benchmark, tmp_path / "data"))
    argv = ["--data-dir", str(data), "--out-dir", str(tmp_path / "runs"), "--predictions",
            str(tmp_path / "pred.txt"), *TINY]
    held = data / name
    if name == "predict-input":
        held = data / "valid.hdf5"
        argv = ["--predict", str(finished_run.dir), "--input", str(held), "--output", str(tmp_path / "new.txt")]
    with held_open_for_writing(held):
        rc, err = main_result(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {held} is in use by another program") and "close it" in lines[0], err
    assert "copy it again" not in lines[0] and "damaged" not in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "new.txt").exists()


def test_a_file_without_read_permission_is_named_as_such(tiny_benchmark, finished_run, tmp_path, monkeypatch):
    """Permission denied is no damage either, for data files and checkpoints alike (simulated: tests may run as
    root, whom no permission stops)."""
    import checkpoints
    import data

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(data.h5py, "File", denied)
    with pytest.raises(UserError, match="valid.hdf5 cannot be read: permission denied"):
        data.read_split(tiny_benchmark / "valid.hdf5", "valid")
    monkeypatch.setattr(checkpoints.torch, "load", denied)
    with pytest.raises(UserError, match="best.pt cannot be read: permission denied"):
        checkpoints.load_checkpoint(finished_run.dir / "best.pt")


# ---- fuzz: a damaged file ends in success or one UserError line ------------------------------------------

FUZZ = textwrap.dedent(r'''
    import json, random, shutil, sys
    from pathlib import Path
    import h5py, numpy as np
    import data
    from config import UserError

    source, work, seed, attempts = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    raw = source.read_bytes()

    def flip(path, region):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 40)):
            b[rng.randrange(min(region, len(b)))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(b))

    def structural(path, kind):
        shutil.copy(source, path)
        with h5py.File(path, "a") as h5:
            key = rng.choice(["density", "recording_date", "labels"])
            old = h5[key][()]
            del h5[key]
            if kind == "delete":
                return
            if kind == "resize":
                shape = tuple(max(0, s + rng.choice([-2, -1, 0, 1, 5])) for s in old.shape)
                shape = shape if rng.random() < 0.8 else shape + (rng.randint(0, 2),)
                h5.create_dataset(key, data=np.resize(old, shape))
            elif kind == "dtype":
                h5.create_dataset(key, data=rng.choice([old.astype("S4"), old.astype(np.float64) * 1e300,
                                                        old.astype(np.complex64), np.float32(1.0)]))
            elif kind == "group":
                h5.create_group(key)

    out = {"ok": 0, "user": 0, "bad": []}
    for i in range(attempts):
        path = work / f"attempt{i}.hdf5"
        kind = rng.choice(["flip", "flip-metadata", "truncate", "delete", "resize", "dtype", "group"])
        if kind == "flip":
            flip(path, len(raw))
        elif kind == "flip-metadata":
            flip(path, 4096)
        elif kind == "truncate":
            path.write_bytes(raw[:rng.randrange(len(raw))])
        else:
            structural(path, kind)
        try:
            data.read_split(path, "valid")
            out["ok"] += 1
        except UserError as e:
            if "\n" in str(e) or str(path) not in str(e):
                out["bad"].append(f"{kind}: unclear message {e!r}")
            out["user"] += 1
        except BaseException as e:
            out["bad"].append(f"{kind}: {type(e).__name__}: {e}")
    print(json.dumps(out))
''')


def test_fuzzed_hdf5_ends_in_success_or_a_clear_error(tiny_benchmark, tmp_path):
    """Bytes flipped (anywhere, or in the metadata), truncation, datasets deleted, resized, retyped or replaced
    by groups. Run in a subprocess so a crash or a hang in the HDF5 library fails the test, not the suite."""
    source = shutil.copy(tiny_benchmark / "valid.hdf5", tmp_path / "valid.hdf5")
    proc = subprocess.run([sys.executable, "-c", FUZZ, str(source), str(tmp_path), "5", "100"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no warnings either: the user would see them beside the error line
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bad"] == [], out["bad"]
    assert out["user"] >= 50 and out["ok"] + out["user"] == 100, out


# ---- never lose the user's data -------------------------------------------------------------------------

def test_a_run_never_reuses_an_existing_folder(tmp_path):
    first = fresh_directory(tmp_path, "run")
    write_text(first / "metrics.csv", "mine\n")
    second, third = fresh_directory(tmp_path, "run"), fresh_directory(tmp_path, "run")
    assert [first.name, second.name, third.name] == ["run", "run-2", "run-3"]
    assert (first / "metrics.csv").read_text() == "mine\n" and not any(second.iterdir())


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    """What a kill in the middle of a write leaves: the complete old file, and no temporary file."""
    from fileio import atomic_write
    target = tmp_path / "last.pt"
    write_text(target, "complete old checkpoint")

    def half_then_killed(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_killed)
    assert target.read_text() == "complete old checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_training_leaves_the_data_files_untouched(finished_run):
    files = json.loads((finished_run.dir / "config.json").read_text())["data"]["files"]
    assert set(files) == {"train", "valid", "test", "test_answers"}  # the benchmark's answer key is used too
    for record in files.values():
        assert fingerprint(record["path"]) == record


def test_predict_refuses_to_overwrite_and_writes_when_the_output_is_new(finished_run, tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("0\n1\n")
    argv = ["--predict", str(finished_run.dir), "--input", str(finished_run.data / "test_no_labels.hdf5"),
            "--device", "cpu"]
    rc, err = main_result([*argv, "--output", str(taken)], capsys)
    assert rc == 2 and "already exists" in err and taken.read_text() == "0\n1\n"
    (tmp_path / "new.csv").write_text("mine")  # the probability CSV beside a new output is protected too
    rc, err = main_result([*argv, "--output", str(tmp_path / "new.txt")], capsys)
    assert rc == 2 and "new.csv already exists" in err and not (tmp_path / "new.txt").exists()
    assert run_transformer.main([*argv, "--output", str(tmp_path / "fresh.txt")]) == 0
    assert len((tmp_path / "fresh.txt").read_text().split()) == 80


def test_read_split_raises_only_user_errors_for_a_missing_file(tmp_path):
    from data import read_split
    with pytest.raises(UserError, match="not found"):
        read_split(tmp_path / "absent.hdf5", "train")


def test_an_interrupted_benchmark_generation_is_finished_next_time(tmp_path, monkeypatch):
    """Killed after its first file: the next run completes the folder instead of calling the files foreign."""
    sizes = synthetic.Sizes(20, 20, 10, 10, 10, 10)
    write_hdf5 = synthetic.write_hdf5

    def killed_after_one(path, arrays):
        write_hdf5(path, arrays)
        raise KeyboardInterrupt
    monkeypatch.setattr(synthetic, "write_hdf5", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_benchmark(tmp_path, 0, sizes)
    monkeypatch.setattr(synthetic, "write_hdf5", write_hdf5)
    assert json.loads((tmp_path / synthetic.MANIFEST).read_text())["complete"] is False
    synthetic.ensure_benchmark(tmp_path, 0, sizes)
    assert json.loads((tmp_path / synthetic.MANIFEST).read_text())["complete"] is True
    assert all((tmp_path / f).is_file() for f in synthetic.FILES)
    stamp = (tmp_path / "train.hdf5").stat().st_mtime_ns
    synthetic.ensure_benchmark(tmp_path, 0, sizes)  # complete now: reused, not rewritten
    assert (tmp_path / "train.hdf5").stat().st_mtime_ns == stamp


# ---- a full disk -----------------------------------------------------------------------------------------

@contextmanager
def files_up_to(limit: int) -> Iterator[None]:
    """Meanwhile a write that would make a file larger than `limit` bytes fails (EFBIG), as on a full disk;
    SIGXFSZ is ignored so that the write fails rather than the process being killed."""
    handler, limits = signal.signal(signal.SIGXFSZ, signal.SIG_IGN), resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes_once_space_is_freed(tiny_benchmark, tmp_path,
                                                                                           capsys, unrendered_figures):
    """The first last.pt (weights only, about 30 KB) fits, the checkpoints of epoch 1 (weights and momentum,
    about 56 KB) do not: the write fails inside torch.save. One line naming the file, exit 2, no temporary file,
    and the last complete last.pt is kept, so that --resume finishes the run once there is space."""
    argv = ["--data-dir", str(tiny_benchmark), "--out-dir", str(tmp_path / "runs"), "--predictions",
            str(tmp_path / "p.txt"), *TINY, "--tta-shifts", "1"]
    with files_up_to(45_000):
        rc, err = main_result(argv, capsys)
    [run_dir] = list((tmp_path / "runs").iterdir())
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: cannot write {run_dir / 'best.pt'}: "), err
    assert lines[0].endswith(f"then resume with: python run_transformer.py --resume {run_dir}"), lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "last.pt"]  # no temporary file
    assert torch.load(run_dir / "last.pt", weights_only=True)["train_state"]["epoch"] == 0
    assert run_transformer.main(["--resume", str(run_dir)]) == 0
    assert (run_dir / "summary.json").is_file() and len((run_dir / "metrics.csv").read_text().splitlines()) == 2


def test_every_writer_reports_a_full_disk_in_one_line_and_keeps_the_old_file(tmp_path):
    """Checkpoints, JSON, metrics, figures, predictions, HDF5 and compare.py's results: a write that fails for
    want of space is one UserError naming the file; the old file is left whole and no temporary file stays."""
    import fileio
    import report
    history = [{"epoch": e, "lr": 0.1, "train_objective": 0.5, "train_loss": 0.5, "train_acc": 0.7, "val_loss": 0.6,
                "val_acc": 0.6, "val_auc": 0.6, "gap_acc": 0.1, "gap_loss": 0.1} for e in range(1, 301)]
    writers = {
        "last.pt": lambda p: fileio.save_torch(p, {"model": torch.zeros(50_000)}),
        "summary.json": lambda p: fileio.write_json(p, {"values": list(range(20_000))}),
        "metrics.csv": lambda p: report.write_metrics_csv(p, history),
        "curves.png": lambda p: report.plot_curves(p, history),
        "predictions.txt": lambda p: report.write_predictions(p, np.full(20_000, 0.9)),
        "test_probabilities.csv": lambda p: report.write_probabilities(p, np.full(20_000, 0.9)),
        "train.hdf5": lambda p: synthetic.write_hdf5(p, {"density": np.ones((100, 28, 28), np.float16)}),
        "results.jsonl": lambda p: fileio.append_text(p, "x" * 20_000 + "\n"),
    }
    report.plot_curves(tmp_path / "warm-up.png", history[:2])  # matplotlib's font cache, before the disk is full
    for name, write in writers.items():
        (tmp_path / name).write_bytes(b"old\n")
        with files_up_to(8192), pytest.raises(UserError) as failed:
            write(tmp_path / name)
        assert str(failed.value).startswith(f"cannot write {tmp_path / name}: ") and "\n" not in str(failed.value)
        assert (tmp_path / name).read_bytes() == b"old\n", name  # an append that failed is cut off again
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
