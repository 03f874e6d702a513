"""Launched by tests/test_distributed.py under torchrun: `run_transformer.main(argv)` on this rank, then this
rank's weights right after training (before rank 0 restores best.pt) go to DUMP_DIR/rank<R>.pt.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py DUMP_DIR --data-dir ... --epochs 2 ...
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import run_transformer  # noqa: E402


def main() -> int:
    dump_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    fit = run_transformer.fit

    def fit_and_dump(training, *args, **kwargs):
        state = fit(training, *args, **kwargs)
        weights = {k: v.detach().cpu().clone() for k, v in training.model.state_dict().items()}
        torch.save(weights, dump_dir / f"rank{os.environ['RANK']}.pt")
        return state

    run_transformer.fit = fit_and_dump  # run() looks fit up in its module at call time
    return run_transformer.main(argv)


if __name__ == "__main__":
    sys.exit(main())
