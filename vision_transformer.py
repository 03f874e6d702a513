"""A small Vision Transformer for 28x28 gas images, with the requested BatchNorm patch embedding.

PatchEmbedding: Conv2d (kernel = stride = patch) -> BatchNorm2d -> tokens -> CLS -> position embedding ->
Dropout(0.2). Blocks are pre-norm (LayerNorm by default, or BatchNorm over token features as the optional
experiment). The head reads the CLS token (or the mean patch token) and returns one logit per image, (B, 1).

Plain torch modules throughout (nn.Conv2d, nn.BatchNorm2d, nn.Dropout, one SDPA call per attention), so
hooks, FLOP counters and isinstance checks see what they expect. CPU training swaps in cheaper dropout masks
from cpu_dropout.py; the training code switches that on, the model never does.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# On CUDA the memory-efficient kernel was the fastest at head dim 16 and 50 tokens (flash and cuDNN were
# slower on an H200, docs/speed.md); math stays as the fallback.
CUDA_ATTENTION = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# The allowed values of the model's choices: config.py's flags take their choices from these tuples.
POOLS = ("cls", "mean")
INITS = ("torch", "xavier", "trunc02")
PATCH_NORMS = ("batch", "none")
BLOCK_NORMS = ("layer", "batch")


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over the feature dimension of (B, N, D) tokens: statistics pooled over batch and tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.norm(rearrange(x, "b n d -> b d n")), "b d n -> b n d")


def make_norm(kind: str, dim: int) -> nn.Module:
    assert kind in BLOCK_NORMS, f"unknown block norm {kind!r}: use one of {BLOCK_NORMS}"
    return nn.LayerNorm(dim) if kind == "layer" else TokenBatchNorm(dim)


class PatchEmbedding(nn.Module):
    """(B, C, H, W) images -> (B, 1 + H*W/patch^2, emb_dim) tokens, CLS token first."""

    def __init__(self, *, in_channels: int = 2, image_size: int = 28, patch_size: int = 4, emb_dim: int = 32,
                 norm: str = "batch", dropout: float = 0.2):
        super().__init__()
        assert image_size % patch_size == 0, \
            f"patch size {patch_size} does not divide image size {image_size}; pick a divisor of {image_size}"
        assert norm in PATCH_NORMS, f"unknown patch norm {norm!r}: use one of {PATCH_NORMS}"
        self.image_size, self.patch_size = image_size, patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, emb_dim, kernel_size=patch_size, stride=patch_size)
        # The requested change: normalise each embedding channel over batch and patch positions.
        self.norm = nn.BatchNorm2d(emb_dim) if norm == "batch" else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, emb_dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, self.num_patches + 1, emb_dim))
        # trunc_normal_ truncates at absolute a, b (default +-2): pass +-2 std explicitly.
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02, a=-0.04, b=0.04)
        self.dropout = nn.Dropout(dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-1] == images.shape[-2] == self.image_size, \
            f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}"
        patches = self.proj(images)  # (B, E, H/p, W/p): one embedding per patch
        # BatchNorm2d over the embedding channels, statistics over batch and patch positions.
        tokens = rearrange(self.norm(patches), "b e h w -> b (h w) e")
        cls = repeat(self.cls_token, "1 1 e -> b 1 e", b=tokens.shape[0])
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embedding
        return self.dropout(tokens)


class Attention(nn.Module):
    """Multi-head self-attention: one call of torch's fused scaled_dot_product_attention (SDPA), which also
    drops attention weights with probability `dropout` in training."""

    def __init__(self, *, dim: int, heads: int, dropout: float):
        super().__init__()
        assert dim % heads == 0, f"emb_dim {dim} must be divisible by heads {heads}"
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.out(rearrange(self.attend(q, k, v), "b h n d -> b n (h d)"))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v with dropout on the weights, (B, H, N, D) in and out."""
        with sdpa_kernel(CUDA_ATTENTION) if q.is_cuda else nullcontext():
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(Norm(x)), then x + MLP(Norm(x))."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float, norm: str = "layer"):
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim=dim, heads=heads, dropout=dropout)
        self.norm2 = make_norm(norm, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """(B, C, H, W) -> (B, 1) logits of the new state."""

    def __init__(self, *, in_channels: int = 2, image_size: int = 28, patch_size: int = 4, emb_dim: int = 32,
                 depth: int = 4, heads: int = 4, mlp_dim: int = 64, dropout: float = 0.1,
                 emb_dropout: float = 0.2, patch_norm: str = "batch", block_norm: str = "layer",
                 init: str = "torch", pool: str = "cls"):
        super().__init__()
        self.embed = PatchEmbedding(in_channels=in_channels, image_size=image_size, patch_size=patch_size,
                                    emb_dim=emb_dim, norm=patch_norm, dropout=emb_dropout)
        self.blocks = nn.Sequential(*[Block(dim=emb_dim, heads=heads, mlp_dim=mlp_dim, dropout=dropout,
                                            norm=block_norm) for _ in range(depth)])
        self.norm = make_norm(block_norm, emb_dim)
        self.head = nn.Linear(emb_dim, 1)
        assert pool in POOLS, f"unknown pooling {pool!r}: use one of {POOLS}"
        self.pool = pool
        # test-time views shift within one patch (symmetry.tta_views): such shifts move the patch boundaries,
        # a shift by a whole patch moves none
        self.shift_unit = patch_size
        init_linear_layers(self, init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.blocks(self.embed(images)))
        # cls: the CLS token (the scientist's ViT); mean: the average of the patch tokens, a sum over the grid
        # like the optimal statistic of a stationary field
        pooled = tokens[:, 0] if self.pool == "cls" else reduce(tokens[:, 1:], "b n e -> b e", "mean")
        return self.head(pooled)


def init_linear_layers(model: nn.Module, init: str) -> None:
    """Initialise every nn.Linear weight (biases to zero, except under "torch").

    torch: nn.Linear's own fan-in uniform, std 1/sqrt(3 fan_in), 0.10 at width 32 (the default: SGD trains with
    it). xavier: Xavier-uniform, as the original ViT and pycls' SGD-trained ViTs. trunc02: truncated normal
    std 0.02, the timm/DeiT convention for AdamW; at width 32 it is 4-6x below fan-in scale, and SGD, which
    does not rescale gradients per parameter, then stays at the constant predictor (docs/evaluation.md).
    """
    assert init in INITS, f"unknown init {init!r}: use one of {INITS}"
    if init == "torch":
        return  # nn.Linear.reset_parameters already ran in each constructor
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if init == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
            nn.init.zeros_(module.bias)
