"""The ablation harness: grid bookkeeping, resumption after an interruption, and one real end-to-end run."""

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tools import compare
from tools.compare_report import pack, unpack
import synthetic
import run_transformer
from config import EXECUTION, Config, UserError, fields_with, parse_config
from data import read_answer_key
from fileio import write_json
from checkpoints import predict_file
from train import Interrupted

ROOT = Path(__file__).resolve().parent.parent


def report_rows(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The report's "All rows" table by (configuration, channels), each row keyed by column heading."""
    table = (out / "report.md").read_text().split("All rows:")[1].split("![accuracy]")[0].strip().splitlines()
    heads = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [dict(zip(heads, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]
    return {(r["configuration"], r["channels"]): r for r in rows}


def interval(cell: str) -> tuple[float, float]:
    """A report cell "98.10 ± 0.20" (in %) as (0.981, 0.002)."""
    mean, half = cell.split(" ± ")
    return float(mean) / 100, float(half) / 100


def changed(cfg: Config, base: Config) -> dict:
    a, b = dataclasses.asdict(cfg), dataclasses.asdict(base)
    return {k: v for k, v in a.items() if b[k] != v}


def test_grid_variants_jobs_and_keys(tmp_path: Path):
    """Each configuration once per channel set (the date channel only where asked), one run per seed at its
    optimizer's rate; the `default` row keeps its own schedule; every run its own key."""
    chosen = compare.variants(compare.FULL.configs)
    assert len({v.name for v in chosen}) == len(chosen)
    assert {v.config for v in chosen if v.channels == "with-date"} == set(compare.WITH_DATE)
    base = Config(data_dir="somewhere")
    assert compare.Variant("before", "with-date").build(base).channels == "density,recording_date"
    default = compare.seed_jobs(compare.Variant("default", "no-date"), compare.FULL, base, tmp_path)
    assert {j["config"]["epochs"] for j in default} == {Config().epochs}  # its own schedule, not the grid's 8
    jobs = compare.seed_jobs(compare.Variant("+sgd-linear", "with-date"), compare.FULL, base, tmp_path)
    assert [(j["seed"], j["lr"]) for j in jobs] == [(s, compare.LRS["sgd"]) for s in range(compare.FULL.seeds)]
    keys = [j["key"] for v in chosen for j in compare.seed_jobs(v, compare.FULL, base, tmp_path)]
    assert len(set(keys)) == len(keys), "every run has its own key"


class FakeRun:
    """Stands in for compare.train_one: returns a summary (no run folder, so no held-out score), counts calls."""

    def __init__(self, interrupt_after: int | None = None):
        self.calls: list[tuple] = []
        self.interrupt_after = interrupt_after

    def __call__(self, cfg: Config, threads: int = 0) -> dict:
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise Interrupted("signal 15 during epoch 1")
        self.calls.append((cfg.model, cfg.optimizer, cfg.loss, cfg.channels, cfg.lr, cfg.seed, cfg.epochs))
        return {"val_acc": 0.8, "test_acc": 0.75, "test_auc": 0.8, "final_gap_acc": -0.1, "best_epoch": cfg.epochs,
                "wall_time_s": 1.0, "diverged": ""}


def test_interrupted_grid_resumes_without_rerunning_finished_runs(tiny_benchmark: Path, tmp_path: Path,
                                                                  monkeypatch, capsys, unrendered_figures):
    out = tmp_path / "out"
    argv = ["--only", "before,+sgd-linear", "--data-dir", str(tiny_benchmark), "--out-dir", str(out),
            "--epochs", "2", "--seeds", "3", "--device", "cpu", "--adamw-lr", "0.001", "--sgd-lr", "0.02"]
    total = 2 * 2 * 3  # 2 configurations x 2 channel sets x 3 seeds
    monkeypatch.setattr(compare, "PER_CLASS", 50)  # a small held-out set: the runs are fakes
    first = FakeRun(interrupt_after=7)
    monkeypatch.setattr(compare, "train_one", first)
    assert compare.main(argv) == 130
    assert "rerun the same command" in capsys.readouterr().err
    results = out / "results.jsonl"
    assert len(results.read_text().splitlines()) == 7
    assert "Incomplete grid" in (out / "report.md").read_text(), "an interrupted grid still reports what finished"
    with open(results, "a") as f:
        f.write('{"key": "torn by a kil')  # a kill in the middle of a write
    second = FakeRun()
    monkeypatch.setattr(compare, "train_one", second)
    assert compare.main(argv) == 0
    assert len(second.calls) == total - 7, "finished runs are not rerun"
    assert not set(first.calls) & set(second.calls)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == total and len({r["key"] for r in rows}) == total
    # Every variant ran its seeds at its optimizer's rate.
    report = report_rows(out)
    both = ("density,recording_date", "density")
    assert {key: float(r["lr"]) for key, r in report.items()} == {
        **{("before", c): 1e-3 for c in both}, **{("+sgd-linear", c): 0.02 for c in both}}
    assert all(r["seeds"] == "3" and r["test acc"] == "75.0 ± 0.0" for r in report.values())
    third = FakeRun()
    monkeypatch.setattr(compare, "train_one", third)
    assert compare.main(argv) == 0 and third.calls == [], "a finished grid runs nothing"
    (out / "report.md").unlink()
    assert compare.main(argv + ["--report-only"]) == 0 and third.calls == []
    assert "Incomplete" not in (out / "report.md").read_text()
    # Another epoch budget is another experiment: its runs are new.
    fourth = FakeRun()
    monkeypatch.setattr(compare, "train_one", fourth)
    assert compare.main(argv[:6] + ["--epochs", "3", "--seeds", "3", "--device", "cpu", "--max-minutes", "1e-9"]) == 0
    assert fourth.calls == [], "--max-minutes: no new run once the time is up"
    assert "Incomplete grid" in (out / "report.md").read_text()


def test_a_grid_refuses_to_continue_on_changed_data(tiny_benchmark: Path, tmp_path: Path, monkeypatch, capsys,
                                                    unrendered_figures):
    """After one sample of train.hdf5 changed, rerunning the command would skip the finished runs (same keys) and
    report runs on the old and the new data as one experiment. One line naming the file, exit 2, nothing run."""
    data, out = Path(shutil.copytree(tiny_benchmark, tmp_path / "data")), tmp_path / "out"
    argv = ["--only", "before", "--data-dir", str(data), "--out-dir", str(out), "--epochs", "1", "--seeds", "1",
            "--adamw-lr", "0.001", "--device", "cpu"]
    monkeypatch.setattr(compare, "PER_CLASS", 50)
    monkeypatch.setattr(compare, "train_one", FakeRun())
    assert compare.main(argv) == 0
    results = (out / "results.jsonl").read_text()
    with h5py.File(data / "train.hdf5", "a") as h5:
        h5["density"][0] = h5["density"][1]
    again = FakeRun()
    monkeypatch.setattr(compare, "train_one", again)
    capsys.readouterr()
    assert compare.main(argv) == 2 and again.calls == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {out / 'results.jsonl'} holds runs on other data: {data / 'train.hdf5'} "
                          f"changed since"), err
    assert (out / "results.jsonl").read_text() == results


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


def test_every_run_is_the_command_line_of_its_config(tmp_path: Path):
    """train_one starts `python run_transformer.py` with config_flags(cfg): the flags parse back to cfg, for
    every configuration of the grid."""
    for v in compare.variants(compare.FULL.configs):
        for job in compare.seed_jobs(v, compare.FULL, Config(data_dir="somewhere"), tmp_path)[:1]:
            cfg = Config(**job["config"])
            assert parse_config(compare.config_flags(cfg)) == cfg, v.name


def test_quick_grid_end_to_end(tiny_benchmark: Path, tmp_path: Path, capsys, monkeypatch):
    """A real run (the CNN, the cheapest model) for one epoch on the tiny benchmark, recorded with its summary
    and its score on the held-out set."""
    monkeypatch.setattr(compare, "train_one", in_process)
    monkeypatch.setattr(compare, "QUICK_HELDOUT_PER_CLASS", 50)
    out = tmp_path / "out"
    argv = ["--quick", "--only", "cnn", "--data-dir", str(tiny_benchmark), "--out-dir", str(out), "--epochs", "1",
            "--device", "cpu", "--seeds", "1"]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| cnn | density | " in printed and "Bayes limit" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # density only, one seed
    scores = [x for r in rows for part in ("summary", "heldout") for x in floats(r.get(part, {}))]
    assert scores and all(float(f"{x:.6g}") == x for x in scores)  # written with the digits they have
    answers = read_answer_key(tiny_benchmark, 80)
    for r in rows:  # each row holds the accuracy of the predictions its run wrote
        predicted = np.loadtxt(Path(r["summary"]["run_dir"]) / "predictions.txt", dtype=int)
        assert r["summary"]["test_acc"] == pytest.approx(np.mean(predicted == answers))
    # every final run is scored on the held-out set beside the benchmark: what --predict says of that file
    held = tiny_benchmark.parent / "bench-heldout" / "heldout.hdf5"
    with h5py.File(held) as h5:
        truth = h5["labels"][()].ravel()
    for r in rows:
        output = tmp_path / f"{r['variant'].replace('/', '_')}-{r['seed']}.txt"
        predict_file(Path(r["summary"]["run_dir"]), str(held), str(output), "cpu", log=lambda m: None)
        assert r["heldout"]["n"] == len(truth) == 2 * compare.QUICK_HELDOUT_PER_CLASS
        assert r["heldout"]["acc"] == pytest.approx(np.mean(np.loadtxt(output, dtype=int) == truth), abs=1e-6)
    (line,) = report_rows(out).values()
    assert (line["configuration"], line["channels"], line["seeds"], line["init"]) == ("cnn", "density", "1", "torch")
    assert float(line["test acc"].split(" ± ")[0]) == pytest.approx(100 * rows[0]["summary"]["test_acc"], abs=0.05)
    assert line["held-out acc"] == f"{100 * rows[0]['heldout']['acc']:.2f} (1 seed)"
    assert line["Δ vs after"] == "–", "no after/no-date row to pair with"
    for name in ("report.md", "figures/accuracy.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "Bayes limit" in md and "Incomplete" not in md
    assert all(set(r["provenance"]) == {"commit", "dirty", "command"} for r in rows)
    assert compare.main(argv) == 0 and "0 runs to do; 1 finished runs" in capsys.readouterr().out


def in_process(cfg: Config, threads: int = 0) -> dict:
    """compare.train_one without the process start: run_transformer.run itself, on a smaller model."""
    small = dataclasses.replace(cfg, emb_dim=16, depth=1, mlp_dim=32, heads=2)
    return run_transformer.run(small, log=lambda m: None, progress=False)


def test_quick_grid_answers_the_question_on_the_users_data_without_an_answer_key(tmp_path: Path, capsys,
                                                                                   monkeypatch, unrendered_figures):
    """Data of another physics, no answer key: every row gets an accuracy with a 95% interval and a paired
    difference to `after` on the validation file, which no run used for a choice (they choose on a stratified
    sixth of the training file, copied into the grid's folder); the report speaks of that data, with the
    reference classifier and no Bayes limit or benchmark goal; the user's folder is only read."""
    from tools import other_physics
    monkeypatch.setattr(compare, "train_one", in_process)
    data = other_physics.make(tmp_path / "user", "axis-length", train=180, valid=120, test=20)
    (data / "test_labels.hdf5").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    out = tmp_path / "grid"
    argv = ["--quick", "--only", "before,after", "--data-dir", str(data), "--out-dir", str(out),
            "--epochs", "1", "--seeds", "2", "--device", "cpu", "--jobs", "1"]
    assert compare.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == before
    with h5py.File(out / "data" / "train.hdf5") as train_part, h5py.File(out / "data" / "valid.hdf5") as choice:
        assert len(train_part["labels"]) == 150 and len(choice["labels"]) == 30
        assert choice["labels"][()].mean() == pytest.approx(0.5)  # stratified
    report = report_rows(out)
    assert set(report) == {("before", "density"), ("after", "density")}
    for (config, _), line in report.items():
        acc, half = interval(line["validation file acc"])
        assert 0 <= acc <= 1 and 0 < half < 0.5
        if config != "after":
            diff, half = interval(line["Δ vs after"])
            assert abs(diff) <= 1 and half > 0
    md = (out / "report.md").read_text()
    assert "validation file acc" in md and "Reference classifier" in md
    for absent in ("Bayes", "83%", "benchmark", "nan"):
        assert absent not in md, absent
    rows = md.split("All rows:")[1].split("![accuracy]")[0]
    assert "–" not in rows  # every row has its accuracy, interval and difference
    assert "nan" not in capsys.readouterr().out


def test_a_run_is_identified_by_every_setting_except_how_and_where_it_is_computed():
    """job_key follows config.py's roles: EXECUTION fields leave a run's identity alone (a
    stored result stands for any of their values), every other field makes it another run."""
    from test_checkpoints import another_value
    base = Config()
    for f in dataclasses.fields(Config):
        changed = dataclasses.replace(base, **{f.name: another_value(f, getattr(base, f.name))})
        same = compare.job_key(changed) == compare.job_key(base)
        assert same == (f.name in fields_with(EXECUTION)), f.name


ENTRY = """import json, pathlib, sys, time
argv = sys.argv[1:]
out = pathlib.Path(argv[argv.index("--out-dir") + 1])
code = int(argv[argv.index("--seed") + 1])
run = out / f"run-{time.time_ns()}"
run.mkdir(parents=True)
(run / "summary.json").write_text(json.dumps({"run_dir": str(run), "val_acc": 0.6}))
print("error: training diverged at epoch 2" if code else "done", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("code", [0, 3, 2, 130])
def test_a_run_is_the_entry_script_and_its_exit_code_decides_the_row(tmp_path: Path, monkeypatch, code):
    """train_one runs the entry script with the run's flags and reads the summary of the attempt that just ran,
    never an earlier attempt's in the same folder: exit 3 is a diverged run, 128 + signal an interruption
    (the grid stops resumably), any other failure one line."""
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    monkeypatch.setattr(compare, "ENTRY", entry)
    job_dir = tmp_path / "job"
    old = job_dir / "run-0"
    old.mkdir(parents=True)
    write_json(old / "summary.json", {"run_dir": str(old), "val_acc": 0.99})
    cfg = Config(out_dir=str(job_dir), seed=code, device="cpu")
    assert compare.config_flags(cfg)[compare.config_flags(cfg).index("--seed") + 1] == str(code)
    if code == 130:
        with pytest.raises(Interrupted):
            compare.train_one(cfg)
    elif code == 2:
        with pytest.raises(UserError, match="exited with code 2: training diverged"):
            compare.train_one(cfg)
    else:
        summary = compare.train_one(cfg)
        assert summary["val_acc"] == 0.6 and summary["run_dir"] != str(old)
        assert summary.get("diverged", "") == ("training diverged at epoch 2" if code else "")


def test_the_heldout_set_is_balanced_test_like_and_generated_once(tmp_path: Path):
    path = compare.ensure_heldout(tmp_path / "h", seed=0, per_class=300)
    with h5py.File(path) as h5:
        labels, dates, density = h5["labels"][()].ravel(), h5["recording_date"][()], h5["density"][()]
    assert density.shape == (600, 28, 28) and density.dtype == np.float16
    assert np.bincount(labels).tolist() == [300, 300]
    assert set(np.unique(dates)) == {7, 8, 9}, "recording_date random per pixel, as in the test file"
    bayes = json.loads((path.parent / compare.HELDOUT_MANIFEST).read_text())["bayes_accuracy"]
    assert bayes == pytest.approx(np.mean((synthetic.bayes_log_likelihood_ratio(density) > 0) == labels))
    # its own random stream: not a copy of any split the benchmark draws with the same seed
    assert not np.array_equal(density[:100], synthetic.make_split(100, 0, "test", np.random.default_rng([0, 2]))
                              ["density"])
    stamp = path.stat().st_mtime_ns
    assert compare.ensure_heldout(tmp_path / "h", seed=0, per_class=300) == path and path.stat().st_mtime_ns == stamp
    compare.ensure_heldout(tmp_path / "h", seed=0, per_class=200)  # another size: generated anew
    with h5py.File(path) as h5:
        assert len(h5["labels"]) == 400
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / compare.HELDOUT_FILE).write_bytes(b"mine")
    with pytest.raises(UserError, match="not written by the held-out generator"):
        compare.ensure_heldout(foreign, per_class=10)
    assert (foreign / compare.HELDOUT_FILE).read_bytes() == b"mine"


def test_pack_round_trips():
    bits = np.random.default_rng(0).random(20_001) < 0.9
    assert np.array_equal(unpack(pack(bits), bits.size), bits)
