"""The symmetry check and what runs use from it: augmentation, test-time views and the whitening filter.

The check is tested on small data sets of other physics made here (tools/other_physics.py), where some, all or
none of the benchmark's symmetries hold, and on null data, where its false-alarm rate is measured."""
import h5py
import numpy as np
import pytest
import torch

import symmetry
from reference import ReferenceCNN
from config import UserError
from data import fit_stats
from synthetic import wave_vectors
from tools import other_physics
from train import predict_logits
from vision_transformer import VisionTransformer

BENCHMARK = "flip0,flip1,transpose=swap,shift"


def physics(kind: str, per_state: int = 300, size: int = 16, seed: int = 0, contrast: float | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, S, S) of density, labels) of one kind of tools/other_physics.py; the axis-length kinds
    with 12x their contrast, so that 300 images of each state tell the states apart."""
    labels = np.arange(2 * per_state) % 2
    rng = np.random.default_rng(seed)
    if contrast is None:
        contrast = 12.0 if kind in ("axis-length", "cropped") else 1.0
    x = np.exp(other_physics.fields(labels, kind, size, rng, contrast))
    return torch.from_numpy(x).float()[:, None], torch.from_numpy(labels)


def verdicts(found: dict) -> dict[str, str]:
    return {**{n: r["verdict"] for n, r in found["elements"].items()}, "shifts": found["shifts"]["verdict"]}


REFLECTIONS_KEEP = {"flip0": "keeps", "flip1": "keeps", "rot180": "keeps"}
TRANSPOSES = ("transpose", "antitranspose", "rot90", "rot270")


@pytest.mark.parametrize("kind, expected, group", [
    ("axis-length", {**REFLECTIONS_KEEP, **dict.fromkeys(TRANSPOSES, "neither"), "shifts": "keeps"},
     "flip0,flip1,shift"),
    ("isotropic", {**REFLECTIONS_KEEP, **dict.fromkeys(TRANSPOSES, "keeps"), "shifts": "keeps"},
     "flip0,flip1,transpose,shift"),
    ("diagonal", {"flip0": "swaps", "flip1": "swaps", "rot180": "keeps", "transpose": "keeps",
                  "antitranspose": "keeps", "rot90": "swaps", "rot270": "swaps", "shifts": "keeps"},
     "transpose,flip0=swap,shift"),
    ("cropped", {**REFLECTIONS_KEEP, **dict.fromkeys(TRANSPOSES, "neither"), "shifts": "neither"}, "flip0,flip1"),
])
def test_the_check_finds_which_symmetries_keep_swap_or_break_the_state(kind, expected, group):
    """Four kinds of physics, each with its own answer: only the symmetries that hold are used, each with its
    rule, and the group the run uses is the largest one they form."""
    found = symmetry.check(*physics(kind))
    assert verdicts(found) == expected
    assert symmetry.largest_group(found) == symmetry.parse_spec(group, "")


def test_a_rule_the_data_cannot_tell_is_not_used():
    """Two states that look alike (no contrast): every symmetry keeps both and would swap them as well, so no
    rule can be told; none is used (periodic shifts, which have no swap rule, still hold)."""
    found = symmetry.check(*physics("isotropic", contrast=0.0))
    assert set(verdicts(found).values()) == {"undetermined", "keeps"} and verdicts(found)["shifts"] == "keeps"
    assert symmetry.largest_group(found) == (symmetry.IDENTITY, True)


def test_the_check_finds_the_benchmarks_symmetries(tiny_benchmark):
    from data import read_split
    split = read_split(tiny_benchmark / "train.hdf5", "train", ("density",))
    found = symmetry.check(torch.from_numpy(split.channels["density"])[:, None], torch.from_numpy(split.labels))
    assert symmetry.largest_group(found) == symmetry.parse_spec(BENCHMARK, "")


def test_a_symmetry_that_holds_is_rejected_at_the_stated_rate():
    """Under a true symmetry the projection statistic is a standard normal z: over 200 small null data sets
    (two identical isotropic states) about 5% exceed 1.645 for each kind of test, and the check's threshold
    is the Bonferroni quantile of its stated false-alarm rate."""
    rates = {}
    for seed in range(200):
        x, y = physics("isotropic", per_state=100, size=8, seed=seed)
        x = x[y == 0]  # one state: every symmetry keeps it, and its two halves are the same state
        fit = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) < len(x) // 2
        base = symmetry.features(x)
        scale = 1 / base.std(0).clamp_min(1e-6)
        tests = {"keep (paired)": (symmetry.features(symmetry.apply(x, "rot90")) * scale, base * scale, fit, None),
                 "shift (paired)": (symmetry.features(x.roll(3, -1)) * scale, base * scale, fit, None),
                 "two samples": ((base * scale)[:50], (base * scale)[50:], fit[:50], fit[50:])}
        for name, args in tests.items():
            rates.setdefault(name, []).append(symmetry.projection_z(*args) > 1.645)
    for name, hits in rates.items():
        assert 0.02 <= np.mean(hits) <= 0.09, (name, np.mean(hits))
    found = symmetry.check(*physics("isotropic", per_state=100, size=8))
    z = torch.tensor(found["z_threshold"], dtype=torch.float64)  # rounded to 0.01
    assert found["tests"] * (1 - float(torch.special.ndtr(z))) == pytest.approx(0.01, rel=0.05)


def test_the_largest_consistent_group_is_used():
    """Verdicts that hold pairwise but whose products break (flip0 and flip1 keep but rot180 does not): the
    largest subgroup whose every element holds is taken, never a set that is not closed."""
    elements = {n: {"verdict": "neither"} for n in symmetry.NAMES[1:]}
    elements.update({"flip0": {"verdict": "keeps"}, "flip1": {"verdict": "keeps"}})
    group, shifts = symmetry.largest_group({"elements": elements, "shifts": {"verdict": "keeps"}})
    assert len(group) == 2 and shifts
    elements["rot180"] = {"verdict": "keeps"}
    assert symmetry.largest_group({"elements": elements, "shifts": {"verdict": "neither"}}) == \
        symmetry.parse_spec("flip0,flip1", "")


def test_forced_lists_close_into_groups_and_contradictions_are_refused():
    full, _ = symmetry.parse_spec(BENCHMARK, "")
    assert dict(full) == {"identity": False, "flip1": False, "flip0": False, "rot180": False,
                                "transpose": True, "rot270": True, "rot90": True, "antitranspose": True}
    assert symmetry.parse_spec("off", "") == (symmetry.IDENTITY, False)
    with pytest.raises(UserError, match="contradict"):
        symmetry.parse_spec("flip0,flip1,rot180=swap", "--augment")
    with pytest.raises(UserError, match="not a symmetry"):
        symmetry.parse_spec("mirror", "--augment")


def test_forcing_what_the_data_contradict_warns_and_auto_uses_what_holds():
    x, y = physics("axis-length")
    lines = []
    plan = symmetry.plan("auto", BENCHMARK, 2, x, y, lines.append)
    assert (plan.augment, plan.shifts) == symmetry.parse_spec("flip0,flip1,shift", "")
    assert (plan.views, plan.view_shifts) == ((("identity", False), ("transpose", True)), 2)  # forced, as asked
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and "--tta" in warnings[0] and "transpose=swap" in warnings[0]
    assert "neither: transpose" in lines[0]
    plan = symmetry.plan("auto", "auto", 2, x[:30], y[:30], lines.append)  # 15 of each state: too few to tell
    assert not plan.augments and plan.view_count() == 1 and "skipped" in lines[-2]


def test_augment_draws_group_elements_with_their_rules_and_shifts_only_where_they_hold():
    torch.manual_seed(0)
    x = torch.randn(128, 1, 8, 8)
    y = torch.randint(0, 2, (128,)).float()
    for spec in (BENCHMARK, "transpose,flip0=swap", "flip0"):
        group, shifts = symmetry.parse_spec(spec, "")
        plan = symmetry.SymmetryPlan(group, shifts)
        torch.manual_seed(1)
        xa, ya = symmetry.augment_batch(x, y, plan)
        moves = [(a, b) for a in range(8) for b in range(8)] if shifts else [(0, 0)]
        matched, used = torch.zeros(len(x), dtype=torch.bool), set()
        for name, swap in group:
            moved = torch.stack([torch.roll(symmetry.apply(x, name), move, (-2, -1)) for move in moves])
            hit = (moved == xa).flatten(2).all(-1).any(0) & ((ya != y) == swap)
            matched |= hit
            if hit.any():
                used.add(name)
        assert matched.all(), spec  # every image is an element of the group, its label swapped by that element's rule
        assert used == {n for n, _ in group}  # every element is drawn
        torch.manual_seed(1)
        again = symmetry.augment_batch(x, y, plan)
        assert torch.equal(again[0], xa) and torch.equal(again[1], ya)  # reproducible from the seed


def test_views_average_with_the_partners_sign_and_cover_every_shift():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    x = torch.randn(5, 1, 8, 8)
    swap = symmetry.SymmetryPlan(views=(("identity", False), ("transpose", True)), view_shifts=4)
    averaged = symmetry.view_averaged_logits(model, x, 4, swap)
    assert torch.allclose(symmetry.view_averaged_logits(model, x.transpose(-1, -2), 4, swap), -averaged, atol=1e-6)
    keep = symmetry.SymmetryPlan(views=(("identity", False), ("flip0", False)), view_shifts=2)
    assert torch.allclose(symmetry.view_averaged_logits(model, x.flip(-2), 4, keep),
                          symmetry.view_averaged_logits(model, x, 4, keep), atol=1e-6)
    expected = sum((-1 if t else 1) * model(torch.roll(x.transpose(-1, -2) if t else x, (a, b), (-2, -1)))
                   for t in (False, True) for a in range(4) for b in range(4)) / 32  # every shift within the unit
    assert torch.allclose(averaged, expected, atol=1e-6)
    spread = sum(model(torch.roll(v, (a, b), (-2, -1))) for v in (x, x.flip(-2)) for a in (0, 2) for b in (0, 2)) / 8
    assert torch.allclose(symmetry.view_averaged_logits(model, x, 4, keep), spread, atol=1e-6)  # 2 shifts over 4
    assert symmetry.views_of(*symmetry.parse_spec("flip0,flip1", ""), 4) == \
        ((("identity", False), ("flip0", False)), 1)  # no shifts where they do not hold


@pytest.mark.parametrize("spec", [BENCHMARK, "flip0,flip1", "transpose,flip0=swap"])
def test_the_whitening_filter_commutes_with_the_group_it_is_averaged_over(spec):
    rng = np.random.default_rng(0)
    group = symmetry.SymmetryPlan(*symmetry.parse_spec(spec, "")).whitening_group()
    log_density = torch.from_numpy(rng.standard_normal((64, 1, 28, 28))).float()  # any fields' power spectrum
    gain = np.asarray(fit_stats(log_density, ["density"], True, group)["whiten"])
    field = rng.standard_normal((28, 28))
    whiten = lambda f: np.fft.ifft2(np.fft.fft2(f) * gain).real  # noqa: E731
    for name in group:
        view = lambda f: symmetry.apply(torch.from_numpy(f), name).numpy()  # noqa: E731
        np.testing.assert_allclose(whiten(view(field)), view(whiten(field)), atol=1e-9)


def anisotropy(log_density: np.ndarray) -> np.ndarray:
    """Per sample: power at small scales weighted by cos 2θ (anisotropy between the grid axes)."""
    grid = log_density.shape[-1]
    kk, cos2 = wave_vectors(grid)
    power = np.abs(np.fft.fft2(log_density)) ** 2
    return (power * kk * np.exp(0.67 * kk) * cos2).sum(axis=(-2, -1))


def test_on_the_real_test_file_reflections_keep_and_transposes_negate_the_axis_anisotropy(real_test_file):
    """The real file has no labels, so its states cannot be checked; but the statistic that separates them
    on the benchmark (the axis anisotropy) is kept by every reflection and negated by every transpose there."""
    with h5py.File(real_test_file, "r") as h5:
        x = np.log(h5["density"][:64].astype(np.float64))
    original = anisotropy(x)
    for name, (transpose, _, _) in symmetry.ELEMENTS.items():
        view = symmetry.apply(torch.from_numpy(x), name).numpy()
        np.testing.assert_allclose(anisotropy(view), -original if transpose else original, rtol=1e-6, atol=1e-6)


def test_views_shift_by_the_models_own_unit():
    """A ViT with 7-pixel patches shifts its views within 7 pixels, the CNN within its 4-pixel pooling cell."""
    torch.manual_seed(0)
    vit = VisionTransformer(in_channels=1, patch_size=7, emb_dim=16, depth=1, heads=2, mlp_dim=16).eval()
    assert vit.shift_unit == 7 and ReferenceCNN(in_channels=1).shift_unit == 4
    x = torch.randn(6, 1, 28, 28)
    views = symmetry.SymmetryPlan(views=(("identity", False), ("transpose", True)), view_shifts=2)
    logits = predict_logits(vit, x, views)
    assert torch.equal(logits, symmetry.view_averaged_logits(vit, x, 7, views).squeeze(1))
    # the unit matters: views within 4 pixels give other logits
    assert not torch.allclose(logits, symmetry.view_averaged_logits(vit, x, 4, views).squeeze(1))
