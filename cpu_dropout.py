"""Cheaper dropout masks for CPU training: the one speed trick that changes how the model is computed.

torch's CPU dropout spends a 64-bit Mersenne Twister draw on every element, in one thread: about 40% of a CPU
training step of this small ViT. `fast_keep_mask` gets four 16-bit words out of each draw instead. The
training code switches it on with `use_fast_cpu_dropout(model)` (train.build_training, `--dropout-sampler
fast`); the model file knows nothing of it. The swapped modules stay nn.Dropout / Attention instances (their
classes become subclasses), keep their state_dict keys, and behave exactly as before in eval mode, on CUDA and
under torch.compile, which generate their random numbers in fused kernels already.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vision_transformer import Attention

LEVELS = 1 << 16  # dropout probabilities are rounded to multiples of 2**-16


def fast_keep_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """CPU dropout mask, pre-scaled: 0 with probability q = round(p * 2**16) / 2**16, else 1 / (1 - q).

    One 64-bit draw of torch's CPU generator (uniform over all 2**64 values) gives four uniform 16-bit words;
    a word below -2**15 + q * 2**16 drops its element. The bool -> uint8 view makes the float conversion cheap.
    """
    drop = round(p * LEVELS)
    assert 0 < drop < LEVELS, f"dropout probability {p} rounds to {drop}/2**16: use F.dropout"
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64).random_(-(1 << 63), None).view(torch.int16)[:n]
    keep = words >= drop - LEVELS // 2
    return keep.view(torch.uint8).to(dtype).mul_(LEVELS / (LEVELS - drop)).view(shape)


def fast_mask_applies(x: torch.Tensor, p: float) -> bool:
    """Eager CPU tensors and a rate that 16-bit words can represent; everything else keeps torch's dropout."""
    return x.device.type == "cpu" and 0 < round(p * LEVELS) < LEVELS and not torch.compiler.is_compiling()


class FastCPUDropout(nn.Dropout):
    """nn.Dropout whose CPU training masks come from fast_keep_mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and fast_mask_applies(x, self.p):
            return x * fast_keep_mask(x.shape, self.p, x.dtype)
        return super().forward(x)


class FastCPUDropoutAttention(Attention):
    """Attention whose CPU training spells softmax(q k^T / sqrt(d)) v out (SDPA's own CPU path when dropout is
    on), so that the attention weights' dropout can take fast_keep_mask too. Without dropout it is spelled out
    as well, with the softmax in q's dtype: at head dim 8 and 50 tokens SDPA's fused CPU kernel trained the
    default model 3.6x slower under bf16 autocast, and a float32 softmax 1.27x slower (docs/speed.md)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not (self.training and q.device.type == "cpu" and not torch.compiler.is_compiling()):
            return super().attend(q, k, v)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
        if fast_mask_applies(q, self.dropout):
            # softmax in fp32 as SDPA does, also under bf16 autocast, so that the mask's scale 1/(1-p) is exact
            weights = scores.softmax(dim=-1, dtype=torch.float32)
            weights = weights * fast_keep_mask(weights.shape, self.dropout, weights.dtype)
            return weights.to(v.dtype) @ v
        if self.dropout > 0:  # a rate that 16-bit words cannot represent: torch's own dropout
            weights = torch.nn.functional.dropout(scores.softmax(dim=-1, dtype=torch.float32), self.dropout)
            return weights.to(v.dtype) @ v
        # no dropout: the softmax in the scores' dtype (the CPU kernel accumulates bf16 in fp32), outside autocast,
        # which would otherwise compute it in fp32 and cast twice
        with torch.autocast("cpu", enabled=False):
            return scores.softmax(dim=-1) @ v


FAST = {nn.Dropout: FastCPUDropout, Attention: FastCPUDropoutAttention}


def use_fast_cpu_dropout(model: nn.Module) -> nn.Module:
    """Switch every nn.Dropout and Attention of `model` (in place) to the fast CPU masks; returns `model`."""
    for module in model.modules():
        fast = FAST.get(type(module))
        if fast is not None:
            module.__class__ = fast  # a subclass that adds no state: parameters and hooks stay as they are
    return model

