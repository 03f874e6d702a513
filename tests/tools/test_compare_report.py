"""The grid's report: intervals, paired differences and the table of each requested change's effect."""

import math

import numpy as np
import pytest

from tools.compare import EFFECTS
from tools.compare_report import effects_table, heldout_accuracy, pack, paired_difference


def rows(correct: np.ndarray, seeds=None) -> list[dict]:
    """Result rows whose held-out scores are the given (seeds, images) correctness."""
    seeds = range(len(correct)) if seeds is None else seeds
    return [{"seed": s, "heldout": {"n": c.size, "acc": c.mean(), "correct": pack(c)}}
            for s, c in zip(seeds, correct)]


def test_interval_adds_seed_spread_and_image_sampling():
    rng = np.random.default_rng(0)
    n = 20_000
    same = np.tile(rng.random(n) < 0.98, (3, 1))
    mean, half = heldout_accuracy(rows(same))
    p = same[0].mean()
    # identical seeds: only the sampling error of the images, 1.96 sqrt(p (1 - p) / n) (ddof 1)
    assert mean == pytest.approx(p) and half == pytest.approx(1.96 * math.sqrt(p * (1 - p) / (n - 1)), rel=1e-6)
    spread = same.copy()
    spread[1, :200] = ~spread[1, :200]  # seeds that differ by a point
    assert heldout_accuracy(rows(spread))[1] > 2 * half
    assert math.isnan(heldout_accuracy(rows(same[:1]))[1]), "one seed: no spread, no interval"
    assert all(math.isnan(x) for x in heldout_accuracy([{"seed": 0}]))


def test_paired_difference_matches_seeds_and_cancels_shared_images():
    rng = np.random.default_rng(1)
    base = rng.random((3, 20_000)) < 0.97
    better = base.copy()
    better[:, :100] = True  # the same images right, plus 100 more
    gain = (better.mean() - base.mean())
    mean, half = paired_difference(rows(better), rows(base))
    assert mean == pytest.approx(gain) and 0 < half < 0.004, "paired: far tighter than the two intervals"
    assert paired_difference(rows(base), rows(base)) == (0.0, 0.0)
    # seeds are matched by number, not by position; seeds without a partner are left out
    shuffled = paired_difference(rows(better[::-1], seeds=[2, 1, 0]), rows(base[::-1], seeds=[2, 1, 0]))
    assert shuffled[0] == pytest.approx(mean) and shuffled[1] == pytest.approx(half)
    assert paired_difference(rows(better[:2]), rows(base[1:], seeds=[1, 2]))[0] == pytest.approx(
        better[1].mean() - base[1].mean())


def test_effects_table_pairs_each_change_with_and_without_it():
    rng = np.random.default_rng(2)
    base = rng.random((3, 5_000)) < 0.9
    helped = base.copy()
    helped[:, :400] = True  # about 0.8 points better on the same images
    lines = [{"variant": "+patch-bn+whiten/no-date", "runs": rows(helped)},
             {"variant": "before+whiten/no-date", "runs": rows(base)}]
    table = effects_table(lines, EFFECTS)
    row = next(r for r in table if r.startswith("| BatchNorm after the patch convolution"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    gain, half = paired_difference(rows(helped), rows(base))
    assert cells[3] == f"**{100 * gain:+.2f} ± {100 * half:.2f}**", "resolved: bold"
    assert cells[1] == cells[2] == cells[4] == "–", "rows that did not run"
    assert len(table) == 4 + len(EFFECTS) + 1
    assert effects_table([{"variant": "before/no-date", "runs": rows(base)}], EFFECTS) == []
