"""Launched by tests/test_distributed.py under torchrun: `run_transformer.main(argv)` on this rank, then to
DUMP_DIR/rank<R>.pt this rank's weights right after training (before rank 0 restores best.pt) and, per epoch,
its training sums (objective, log loss, correct) before and after the reduction over ranks. Figures are built
but not drawn into pixels, as under conftest.unrendered_figures.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py DUMP_DIR --data-dir ... --epochs 2 ...
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import distributed  # noqa: E402
import run_transformer  # noqa: E402


def main() -> int:
    dump_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    fit, all_reduce, sums = run_transformer.fit, distributed.all_reduce, []

    def recording_all_reduce(t, op="sum"):
        before = t.clone()
        after = all_reduce(t, op)
        if op == "sum" and t.shape == (3,):  # train_epoch's sums
            sums.append(torch.stack([before, after]).cpu())
        return after

    def fit_and_dump(training, *args, **kwargs):
        state = fit(training, *args, **kwargs)
        weights = {k: v.detach().cpu().clone() for k, v in training.model.state_dict().items()}
        torch.save({"weights": weights, "sums": torch.stack(sums)}, dump_dir / f"rank{os.environ['RANK']}.pt")
        return state

    def placeholder(self, target, *args, **kwargs):
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(b"unrendered")
        else:
            target.write(b"unrendered")

    Figure.tight_layout, Figure.savefig = (lambda self, *args, **kwargs: None), placeholder
    distributed.all_reduce = recording_all_reduce  # train looks both up in their modules at call time
    run_transformer.fit = fit_and_dump
    return run_transformer.main(argv)


if __name__ == "__main__":
    sys.exit(main())
