"""checkpoints.py: reading a run's checkpoint back, and which flags a resumed run may change (from the roles)."""

import dataclasses
from pathlib import Path

import pytest
import torch

from checkpoints import load_checkpoint, resume_config
from config import CONTROL, EXECUTION, Config, UserError, fields_with


def another_value(f: dataclasses.Field, current: object = dataclasses.MISSING) -> object:
    """A valid value of the field other than `current` (default: the field's default)."""
    current = f.default if current is dataclasses.MISSING else current
    if f.metadata["choices"]:
        return next(c for c in f.metadata["choices"] if c != current)
    if isinstance(current, bool):
        return not current
    if f.name == "channels":
        return "density" if current != "density" else "auto"
    if isinstance(current, str):
        return current + "-elsewhere"
    return current / 2 if isinstance(current, float) and current else current + 1


def saved_run(folder: Path, cfg: Config) -> Path:
    """A run folder whose last.pt has what resume_config reads (no training needed)."""
    folder.mkdir()
    torch.save({"model": {}, "config": dataclasses.asdict(cfg), "stats": {}, "optimizer": {}, "scheduler": {},
                "train_state": {"epoch": 1}, "rng": torch.get_rng_state(), "cuda_rng": []}, folder / "last.pt")
    return folder


@pytest.mark.parametrize("f", dataclasses.fields(Config), ids=lambda f: f.name)
def test_resume_accepts_exactly_the_control_execution_and_output_fields(f, tmp_path):
    """The network, the optimizer state and the experiment are fixed by last.pt; patience, sync-bn, device,
    compile and the output paths may change."""
    run_dir = saved_run(tmp_path / "run", Config())
    change = {f.name: another_value(f)}
    if f.name in fields_with(CONTROL, EXECUTION):
        cfg, last = resume_config(run_dir, change)
        assert getattr(cfg, f.name) == change[f.name] and last["train_state"] == {"epoch": 1}
    else:
        with pytest.raises(UserError, match=f"cannot resume .*--{f.name.replace('_', '-')}: checkpoint"):
            resume_config(run_dir, change)


def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="is not a checkpoint written by run_transformer.py"):
        load_checkpoint(tmp_path / "best.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "last.pt")


def test_resume_restores_the_cuda_generators_that_this_machine_has(monkeypatch):
    """A run saved on 4 GPUs resumed where 2 are visible: the first 2 states come back, no error."""
    from types import SimpleNamespace
    from checkpoints import restore_training
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append((index, int(state[0]))))
    part = SimpleNamespace(load_state_dict=lambda state: None)
    payload = {"model": {}, "optimizer": {}, "scheduler": {}, "rng": torch.get_rng_state(),
               "cuda_rng": [torch.full((4,), i, dtype=torch.uint8) for i in range(4)], "train_state": {"epoch": 1}}
    training = SimpleNamespace(model=part, optimizer=part, scheduler=part)
    assert restore_training(training, payload, torch.device("cuda")).epoch == 1
    assert restored == [(0, 0), (1, 1)]
