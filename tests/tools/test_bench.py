"""bench.py: the table it prints, what each style trains, and its one-line errors (no timing is asserted)."""

from pathlib import Path

import pytest

from tools import bench
import train
from config import Config

FAST = ["--device", "cpu", "--seconds", "0", "--rounds", "1", "--workers", "0",
        "--emb-dim", "16", "--depth", "1", "--heads", "2", "--mlp-dim", "32"]


def test_cpu_table_has_the_naive_loop_ours_and_the_default_recipe(tiny_benchmark: Path, capsys, monkeypatch):
    built = []
    real_build = train.build_model

    def recording_build(cfg, in_channels, image_size):
        built.append(real_build(cfg, in_channels, image_size))
        return built[-1]

    monkeypatch.setattr(bench, "build_model", recording_build)
    monkeypatch.setattr(train, "build_model", recording_build)  # build_training: our styles
    assert bench.main([*FAST, "--data-dir", str(tiny_benchmark), "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("naive:", "ours:", "default recipe"))]
    assert len(rows) == 3, out
    assert rows[0].split()[-1] == "1.00x"  # ratios are relative to the naive loop
    assert all(line.split()[-1].endswith("x") and float(line.split()[-2].replace(",", "")) > 0 for line in rows)
    # the naive loop and ours train the bench's ViT, the last row run_transformer's default model
    assert all(model.embed.proj.out_channels == 16 and len(model.blocks) == 1 for model in built[:2])
    assert built[2].embed.proj.out_channels == Config().emb_dim and len(built[2].blocks) == Config().depth


def test_time_to_target_reports_validation_and_test_targets(tiny_benchmark: Path, capsys):
    recipe = "--epochs 2 --emb-dim 16 --depth 1 --heads 2 --mlp-dim 32 --batch-size 32 --tta-shifts 1"
    assert bench.main(["--time-to-target", "--device", "cpu", "--data-dir", str(tiny_benchmark),
                       "--recipe", recipe, "--target", "0.01", "--test-target", "0.999"]) == 0
    out = capsys.readouterr().out
    assert "time to 1% validation: reached" in out and "at epoch 1" in out
    assert "time to 100% test: not reached in 2 epochs" in out, out  # 0.999 is printed rounded
    assert out.count("test acc ") == 2  # scored after each epoch


@pytest.mark.parametrize("argv, message", [
    (["--emb-dim", "0"], "error: argument --emb-dim: '0' is out of range for --emb-dim (must be > 0); see --help"),
    (["--seconds", "-1"], "error: argument --seconds: '-1' is out of range for --seconds (must be >= 0); see --help"),
    (["--target", "0.9", "1.5"], "error: argument --target: '1.5' is out of range for --target (must be in (0, 1]); "
                                 "see --help")])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    assert bench.main(argv) == 2
    assert capsys.readouterr().err == message + "\n"


def test_a_batch_larger_than_the_training_set_is_one_line(tiny_benchmark: Path, capsys):
    assert bench.main([*FAST, "--data-dir", str(tiny_benchmark), "--batch-size", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --batch-size 100000 is larger than the training set"), err
