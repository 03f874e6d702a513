"""A small Vision Transformer for 28x28 gas images, with the requested BatchNorm patch embedding.

PatchEmbedding: Conv2d (kernel = stride = patch) -> BatchNorm2d -> tokens -> CLS -> position embedding ->
Dropout(0.2). Blocks are pre-norm (LayerNorm by default, or BatchNorm over token features as the optional
experiment). The head reads the CLS token and returns one logit per image, shape (B, 1).

Speed, without changing what is computed: the patch Conv2d (kernel = stride = patch) runs as the matmul it is
(no NCHW/NHWC layout conversions on the GPU); attention prefers the memory-efficient SDPA kernel on CUDA (flash
and cuDNN kernels are slower at head dim 16, 50 tokens); and CPU training draws dropout masks from 16-bit
random numbers (`sampler="fast"`), because torch's CPU dropout spends a 64-bit Mersenne Twister draw on every
element in one thread: about 40% of a CPU training step. `sampler="torch"` keeps torch's masks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

DROPOUT_SAMPLERS = ("fast", "torch")
CUDA_ATTENTION = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]  # measured fastest on H200 (README)
_LEVELS = 1 << 16  # dropout probabilities are rounded to multiples of 2**-16


def fast_keep_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """CPU dropout mask, pre-scaled: 0 with probability q = round(p * 2**16) / 2**16, else 1 / (1 - q).

    One 64-bit draw of torch's CPU generator (uniform over all 2**64 values) gives four uniform 16-bit words;
    a word below -2**15 + q * 2**16 drops its element. The bool -> uint8 view makes the float conversion cheap.
    """
    drop = round(p * _LEVELS)
    assert 0 < drop < _LEVELS, f"dropout probability {p} rounds to {drop}/2**16: use F.dropout"
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64).random_(-(1 << 63), None).view(torch.int16)[:n]
    keep = words >= drop - _LEVELS // 2
    return keep.view(torch.uint8).to(dtype).mul_(_LEVELS / (_LEVELS - drop)).view(shape)


def use_fast_sampler(x: torch.Tensor, p: float, sampler: str) -> bool:
    """Whether dropout of x with probability p takes fast_keep_mask (eager CPU training only: compiled graphs
    and CUDA generate their random numbers in fused kernels already)."""
    return (sampler == "fast" and x.device.type == "cpu" and 0 < round(p * _LEVELS) < _LEVELS
            and not torch.compiler.is_compiling())


def dropout(x: torch.Tensor, p: float, training: bool, sampler: str = "fast") -> torch.Tensor:
    """F.dropout(x, p, training), with fast_keep_mask's cheaper random numbers where use_fast_sampler says."""
    if training and use_fast_sampler(x, p, sampler):
        return x * fast_keep_mask(x.shape, p, x.dtype)
    return F.dropout(x, p, training)


class Dropout(nn.Module):
    """nn.Dropout with a choice of mask sampler ("fast": 16-bit random numbers on CPU; "torch": torch's)."""

    def __init__(self, p: float, sampler: str = "fast"):
        super().__init__()
        assert sampler in DROPOUT_SAMPLERS, f"unknown dropout sampler {sampler!r}: use one of {DROPOUT_SAMPLERS}"
        self.p, self.sampler = p, sampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.sampler)

    def extra_repr(self) -> str:
        return f"p={self.p}, sampler={self.sampler}"


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over the feature dimension of (B, N, D) tokens: statistics pooled over batch and tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.norm(rearrange(x, "b n d -> b d n")), "b d n -> b n d")


def make_norm(kind: str, dim: int) -> nn.Module:
    assert kind in ("layer", "batch"), f"unknown block norm {kind!r}: use 'layer' or 'batch'"
    return nn.LayerNorm(dim) if kind == "layer" else TokenBatchNorm(dim)


class PatchEmbedding(nn.Module):
    """(B, C, H, W) images -> (B, 1 + H*W/patch^2, emb_dim) tokens, CLS token first."""

    def __init__(self, in_channels: int = 2, patch_size: int = 4, emb_dim: int = 32, image_size: int = 28,
                 norm: str = "batch", dropout: float = 0.2, sampler: str = "fast"):
        super().__init__()
        assert image_size % patch_size == 0, \
            f"patch size {patch_size} does not divide image size {image_size}; pick a divisor of {image_size}"
        assert norm in ("batch", "none"), f"unknown patch norm {norm!r}: use 'batch' or 'none'"
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
        self.dropout = Dropout(dropout, sampler)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-1] == images.shape[-2] == self.image_size, \
            f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}"
        # self.proj as the matmul it is: flattened patches times the flattened kernel.
        p = self.patch_size
        patches = rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)
        tokens = F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)
        # BatchNorm2d over the embedding channels, statistics over batch and patch positions.
        tokens = rearrange(self.norm(rearrange(tokens, "b n e -> b e n 1")), "b e n 1 -> b n e")
        cls = repeat(self.cls_token, "1 1 e -> b 1 e", b=tokens.shape[0])
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embedding
        return self.dropout(tokens)


class Attention(nn.Module):
    """Multi-head self-attention on torch's fused scaled_dot_product_attention (SDPA).

    CPU training with the fast dropout sampler spells attention out (softmax(q k^T / sqrt(d)) v, SDPA's own CPU
    path when dropout is on) so that the attention weights' dropout can use the fast sampler too.
    """

    def __init__(self, dim: int, heads: int, dropout: float, sampler: str = "fast"):
        super().__init__()
        assert dim % heads == 0, f"emb_dim {dim} must be divisible by heads {heads}"
        self.heads = heads
        self.dropout, self.sampler = dropout, sampler
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if self.training and use_fast_sampler(x, self.dropout, self.sampler):
            # softmax in fp32 as SDPA does, also under bf16 autocast; a no-op cast in fp32 training
            weights = ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).softmax(dim=-1, dtype=torch.float32)
            y = dropout(weights, self.dropout, True, self.sampler).to(v.dtype) @ v
        elif q.is_cuda:
            with sdpa_kernel(CUDA_ATTENTION):
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(rearrange(y, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(Norm(x)), then x + MLP(Norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, norm: str = "layer",
                 sampler: str = "fast"):
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, heads, dropout, sampler)
        self.norm2 = make_norm(norm, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), Dropout(dropout, sampler),
                                 nn.Linear(mlp_dim, dim), Dropout(dropout, sampler))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """(B, C, H, W) -> (B, 1) logits of the new state."""

    def __init__(self, in_channels: int = 2, image_size: int = 28, patch_size: int = 4, emb_dim: int = 32,
                 depth: int = 4, heads: int = 4, mlp_dim: int = 64, dropout: float = 0.1,
                 emb_dropout: float = 0.2, patch_norm: str = "batch", block_norm: str = "layer",
                 dropout_sampler: str = "fast", init: str = "torch", pool: str = "cls"):
        super().__init__()
        self.embed = PatchEmbedding(in_channels, patch_size, emb_dim, image_size, patch_norm, emb_dropout,
                                    dropout_sampler)
        self.blocks = nn.Sequential(*[Block(emb_dim, heads, mlp_dim, dropout, block_norm, dropout_sampler)
                                      for _ in range(depth)])
        self.norm = make_norm(block_norm, emb_dim)
        self.head = nn.Linear(emb_dim, 1)
        assert pool in POOLS, f"unknown pooling {pool!r}: use one of {POOLS}"
        self.pool = pool
        init_linear_layers(self, init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.blocks(self.embed(images)))
        # cls: the CLS token (the scientist's ViT); mean: the average of the patch tokens, a sum over the grid
        # like the optimal statistic of a stationary field
        pooled = tokens[:, 0] if self.pool == "cls" else reduce(tokens[:, 1:], "b n e -> b e", "mean")
        return self.head(pooled)


POOLS = ("cls", "mean")
INITS = ("torch", "xavier", "trunc02")


def init_linear_layers(model: nn.Module, init: str) -> None:
    """Initialise every nn.Linear weight (biases to zero, except under "torch").

    torch: nn.Linear's own fan-in uniform, std 1/sqrt(3 fan_in), 0.10 at width 32 (the default: SGD trains with
    it). xavier: Xavier-uniform, as the original ViT and pycls' SGD-trained ViTs. trunc02: truncated normal
    std 0.02, the timm/DeiT convention for AdamW; at width 32 it is 5-9x below fan-in scale, and SGD, which
    does not rescale gradients per parameter, then stays at the constant predictor (README: pitfalls).
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
