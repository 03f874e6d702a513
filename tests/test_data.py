"""Loading the scientist's layout, normalisation, batching and the shortcut guard."""
import numpy as np

import symmetry
import torch

from conftest import benchmark_plan
from data import (choose_channels, epoch_batches, find_confounders, load_splits,
                  read_split, to_device)


def test_real_test_file_loads_in_the_scientists_layout(real_test_file):
    split = read_split(real_test_file, "test", labelled=False)
    assert len(split) == 1000
    assert split.channels["density"].shape == (1000, 28, 28)
    assert split.channels["density"].dtype == np.float32
    assert set(np.unique(split.labels)) == {-1}
    assert 6.99 <= split.channels["recording_date"].min() and split.channels["recording_date"].max() <= 9.01
    stats = to_device({"train": split, "valid": split, "test": split}, ["density", "recording_date"], "cpu").stats
    x = to_device({"train": split, "valid": split, "test": split}, ["density"], "cpu").x["test"]
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert stats["channels"] == ["density", "recording_date"]


def test_channels_are_selected_in_the_requested_order(tiny_benchmark):
    splits = load_splits(tiny_benchmark)
    data = to_device(splits, ["recording_date", "density"], "cpu")
    assert data.x["train"].shape == (400, 2, 28, 28)
    assert data.stats["channels"] == ["recording_date", "density"]
    # channel 0 is the date: constant within each training sample
    first = data.x["train"][:, 0].flatten(1)
    assert torch.all(first.min(1).values == first.max(1).values)


def test_normalisation_uses_training_statistics_only(tiny_benchmark):
    splits = load_splits(tiny_benchmark)
    data = to_device(splits, ["density"], "cpu")
    mean, std = data.stats["mean"][0], data.stats["std"][0]
    train, valid = (read_split(tiny_benchmark / f"{n}.hdf5", n).channels["density"] for n in ("train", "valid"))
    assert np.isclose(mean, train.mean(dtype=np.float64), rtol=1e-6, atol=0)  # float32 statistics
    expected_valid = (valid - np.float32(mean)) / np.float32(std)
    assert np.allclose(data.x["valid"][:, 0].numpy(), expected_valid, atol=1e-5)
    assert data.y["test"] is None  # no answer key passed


def test_shortcut_guard_flags_recording_date_and_not_density(tiny_benchmark):
    found = find_confounders(load_splits(tiny_benchmark))
    assert set(found) == {"recording_date"}
    assert "separates the training labels" in found["recording_date"]


def test_auto_channels_drop_confounders_and_explicit_lists_keep_them():
    messages = []
    confounders = {"recording_date": "evidence"}
    assert choose_channels("auto", confounders, messages.append) == ["density"]
    assert any("recording_date" in m and "WARNING" in m for m in messages)
    assert choose_channels("density,recording_date", confounders, messages.append) == ["density", "recording_date"]
    assert choose_channels("auto", {}, messages.append) == ["density", "recording_date"]


def test_non_overlapping_ranges_are_a_confounder(tiny_benchmark):
    splits = load_splits(tiny_benchmark)
    splits["train"] = read_split(tiny_benchmark / "train.hdf5", "train")
    splits["train"].channels["density"] += 100.0
    assert "density" in find_confounders(splits)


def test_batches_shuffle_every_epoch_cover_disjoint_full_batches():
    first = epoch_batches(1000, 64, epoch=0, seed=0, device="cpu")
    second = epoch_batches(1000, 64, epoch=1, seed=0, device="cpu")
    assert len(first) == 1000 // 64 and all(len(b) == 64 for b in first)
    flat = torch.cat(first)
    assert len(torch.unique(flat)) == len(flat)  # no sample twice in an epoch
    assert not torch.equal(flat, torch.cat(second))  # reshuffled each epoch
    assert torch.equal(flat, torch.cat(epoch_batches(1000, 64, epoch=0, seed=0, device="cpu")))  # reproducible
    ranks = [torch.cat(epoch_batches(1000, 64, 0, 0, "cpu", rank=r, world=2)) for r in (0, 1)]
    assert len(set(ranks[0].tolist()) & set(ranks[1].tolist())) == 0
    assert len(ranks[0]) == len(ranks[1])


def test_whitening_flattens_the_training_spectrum_and_is_saved_for_prediction(tiny_benchmark):
    splits = load_splits(tiny_benchmark)
    data = to_device(splits, ["density", "recording_date"], "cpu", whiten=True)
    gain = np.asarray(data.stats["whiten"])
    assert gain.shape == (28, 28) and gain[0, 0] == 0
    x = data.x["train"][:, 0].double().numpy()
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=0)
    power[0, 0] = np.nan
    assert np.nanmax(power) / np.nanmin(power) < 1.5  # every scale now carries equal weight
    assert torch.equal(data.x["train"][:, 1], to_device(splits, ["recording_date"], "cpu").x["train"][:, 0])
    again = to_device(splits, [], "cpu", stats=data.stats)  # saved stats reproduce the same tensors
    assert torch.equal(again.x["valid"], data.x["valid"])


def test_a_chunked_stream_prepares_what_whole_arrays_give(tmp_path, monkeypatch):
    """Several chunks of another physics' files: whitening filter (averaged over the symmetries), statistics and
    tensors equal the textbook float64 computation on whole arrays (within float32 rounding), the guard sees what
    whole arrays show, and the saved stats reproduce the same tensors."""
    import data
    from synthetic import write_hdf5
    from tools import other_physics
    rng = np.random.default_rng(0)
    raw = {}
    for name, n in (("train", 700), ("valid", 300), ("test", 200)):
        labels = np.arange(n) % 2
        density = np.exp(other_physics.fields(labels, "isotropic", 16, rng)).astype(np.float16)
        raw[name] = density.astype(np.float64)
        write_hdf5(tmp_path / data.SPLIT_FILES[name], {"density": density, "labels": labels.astype(np.int8)[:, None],
                                                        "recording_date": np.full_like(density, 3 + labels[0])})
    monkeypatch.setattr(data, "CHUNK", 128)
    splits = load_splits(tmp_path)
    assert find_confounders(splits) == {}
    got = to_device(splits, ["density"], "cpu", whiten=True, symmetry=benchmark_plan())
    power = (np.abs(np.fft.fft2(np.log(raw["train"]))) ** 2).mean(axis=0)
    gain = np.asarray(got.stats["whiten"])
    kept_modes = gain > 0
    averaged = np.mean([symmetry.spectrum_view(power, n) for n in symmetry.NAMES], axis=0)
    assert np.allclose(gain[kept_modes] ** -2, averaged[kept_modes], rtol=1e-5)
    white = {name: np.fft.ifft2(np.fft.fft2(np.log(d)) * gain).real for name, d in raw.items()}
    assert np.isclose(got.stats["mean"][0], white["train"].mean(), atol=1e-6)
    assert np.isclose(got.stats["std"][0], white["train"].std(), rtol=1e-5)
    for name, w in white.items():
        expected = (w - got.stats["mean"][0]) / got.stats["std"][0]
        assert np.allclose(got.x[name][:, 0].numpy(), expected, atol=1e-4)
    restored = to_device(load_splits(tmp_path), ["density"], "cpu", stats=got.stats)
    assert all(torch.equal(restored.x[name], got.x[name]) for name in raw)
