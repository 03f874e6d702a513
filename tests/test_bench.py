"""bench.py: the table it prints, what each style trains, and its one-line errors (no timing is asserted)."""
from __future__ import annotations

from pathlib import Path

import bench
import train

FAST = ["--device", "cpu", "--steps", "2", "--rounds", "1", "--warmup", "1", "--workers", "0",
        "--emb-dim", "16", "--depth", "1", "--heads", "2", "--mlp-dim", "32"]


def test_cpu_table_has_the_original_ours_and_the_sampler_split(tiny_benchmark: Path, capsys, monkeypatch):
    built = []
    real_build = train.build_model

    def recording_build(cfg, in_channels, image_size):
        built.append(cfg.dropout_sampler)
        return real_build(cfg, in_channels, image_size)

    monkeypatch.setattr(bench, "build_model", recording_build)
    assert bench.main([*FAST, "--data-dir", str(tiny_benchmark), "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("original:", "ours"))]
    assert len(rows) == 3, out
    assert rows[0].split()[-2] == "1.00x"  # ratios are relative to the original style
    assert all(line.split()[-2].endswith("x") and float(line.split()[-3].replace(",", "")) > 0 for line in rows)
    assert "MFLOP per image" in out and "batch" in out
    # Models built in order: the FLOP count's (defaults), the original (torch's dropout, as the scientist's
    # nn.Dropout), ours (the fast sampler), and the third row (torch's sampler again).
    assert built == ["fast", "torch", "fast", "torch"], built


def test_a_batch_larger_than_the_training_set_is_one_line(tiny_benchmark: Path, capsys):
    assert bench.main([*FAST, "--data-dir", str(tiny_benchmark), "--batch-size", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --batch-size 100000 is larger than the training set"), err
