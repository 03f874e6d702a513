"""Data-parallel training under `torchrun --nproc_per_node=N run_transformer.py ...` (NCCL on GPUs, gloo on CPU):
set-up, rank helpers and the per-epoch reductions, each a no-op without torchrun."""
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from config import UserError


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 alone prints and writes files; before set-up this reads torchrun's RANK."""
    return rank() == 0 if active() else os.environ.get("RANK", "0") == "0"


def setup(device: torch.device, sync_bn: bool = False) -> torch.device:
    """Join the process group torchrun described; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs GPUs: torch's SyncBatchNorm has no CPU implementation; drop the flag")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible; "
                            f"use --nproc_per_node={torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return device


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. generating the benchmark files), the others after it."""
    if active() and not is_main():
        dist.barrier()
    try:
        yield
    finally:  # also on an error, so the others are released (and meet the same error themselves)
        if active() and is_main():
            dist.barrier()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Element-wise sum (or min, max) over ranks, in place on the device (no host sync)."""
    if active():
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op.upper()))
    return t


def from_main(*tensors: torch.Tensor) -> None:
    """Rank 0's values of `tensors` on every rank, in place."""
    for t in tensors if active() else ():
        dist.broadcast(t, src=0)
