"""Data-parallel training under torchrun: process group set-up, rank helpers and the per-epoch reductions.

    torchrun --nproc_per_node=N run_transformer.py ...     # NCCL on GPUs, gloo on CPU

Without torchrun (WORLD_SIZE unset or 1) every helper is a no-op, so the single-process path is unchanged.
Each rank trains on a disjoint slice of the same per-epoch permutation (data.epoch_batches), gradients are
averaged by DistributedDataParallel, and the epoch sums are all-reduced once per epoch.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from config import UserError


def env_world() -> int:
    """World size torchrun announced (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """True inside an initialised multi-process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 alone prints, plots and writes files. Before set-up this reads torchrun's RANK."""
    return rank() == 0 if active() else env_rank() == 0


def setup(device: torch.device, sync_bn: bool = False) -> torch.device:
    """Join the process group torchrun described; returns this rank's device (cuda:LOCAL_RANK on GPUs).

    A no-op returning `device` when not launched by torchrun with more than one process.
    """
    if env_world() <= 1:
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
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating the benchmark files), the others after it finished."""
    if not is_main():
        barrier()
    try:
        yield
    finally:  # also on an error, so the others are released (and then meet the same error themselves)
        if is_main():
            barrier()


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel around `model` (which keeps its own parameters); `model` itself when alone.

    With sync_bn the BatchNorm layers of `model` are replaced in place by SyncBatchNorm layers that keep
    the same parameters and buffers, so the optimizer and the checkpoint keys are unchanged.
    """
    if not active():
        return model
    if sync_bn:
        assert device.type == "cuda", "SyncBatchNorm has no CPU implementation (setup() refuses this)"
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert converted is model, "the model's root must not itself be a BatchNorm layer"
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, on the device (no host sync)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def min_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any rank (so all ranks take the same branch)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Rank 0's numbers on every rank: early stopping must decide identically everywhere."""
    if not active():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return dict(zip(keys, t.tolist()))


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, but the last step of an epoch updates them locally
    afterwards; without this, evaluation and checkpoints would see rank-dependent running statistics.
    """
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)
