"""A small Vision Transformer for 28x28 gas images, with the requested BatchNorm after the patch convolution.
The options (norms, init, pool) are checked by config's choices."""
import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from einops.layers.torch import Rearrange
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def make_norm(kind: str, dim: int) -> nn.Module:
    """LayerNorm, or BatchNorm1d over the token features with statistics pooled over batch and tokens."""
    if kind == "layer":
        return nn.LayerNorm(dim)
    return nn.Sequential(Rearrange("b n d -> b d n"), nn.BatchNorm1d(dim), Rearrange("b d n -> b n d"))


class PatchEmbedding(nn.Module):
    """(B, C, H, W) images -> (B, 1 + H*W/patch^2, emb_dim) tokens, CLS token first."""

    def __init__(self, *, in_channels: int = 2, image_size: int = 28, patch_size: int = 4, emb_dim: int = 32,
                 norm: str = "batch", dropout: float = 0.2):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, emb_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.BatchNorm2d(emb_dim) if norm == "batch" else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, emb_dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, emb_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04)  # a, b are absolute: +-2 std
        nn.init.trunc_normal_(self.pos_embedding, std=0.02, a=-0.04, b=0.04)
        self.dropout = nn.Dropout(dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(self.norm(self.proj(images)), "b e h w -> b (h w) e")
        cls = repeat(self.cls_token, "1 1 e -> b 1 e", b=tokens.shape[0])
        return self.dropout(torch.cat([cls, tokens], dim=1) + self.pos_embedding)


class Attention(nn.Module):
    """Multi-head self-attention with dropout on the attention weights: SDPA on CUDA; on CPU spelled out,
    with the softmax in q's dtype, which is faster than SDPA's CPU kernel at this size under bf16 autocast."""

    def __init__(self, *, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        p = self.dropout if self.training else 0.0
        if q.device.type == "cpu":
            with torch.autocast("cpu", enabled=False):  # autocast would run the softmax in fp32
                weights = (q * q.shape[-1] ** -0.5 @ k.transpose(-1, -2)).softmax(dim=-1)
                heads = (F.dropout(weights, p) if p > 0 else weights) @ v
        else:  # the fastest CUDA kernel at head dim 16 and 50 tokens; math as the fallback
            with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                heads = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out(rearrange(heads, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(Norm(x)), then x + MLP(Norm(x))."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float, norm: str = "layer"):
        super().__init__()
        self.norm1, self.norm2 = make_norm(norm, dim), make_norm(norm, dim)
        self.attn = Attention(dim=dim, heads=heads, dropout=dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """(B, C, H, W) -> (B, 1) logits of state 1."""

    def __init__(self, *, in_channels: int = 2, image_size: int = 28, patch_size: int = 4, emb_dim: int = 32,
                 depth: int = 4, heads: int = 4, mlp_dim: int = 64, dropout: float = 0.1,
                 emb_dropout: float = 0.2, patch_norm: str = "batch", block_norm: str = "layer",
                 init: str = "torch", pool: str = "cls"):
        super().__init__()
        self.embed = PatchEmbedding(in_channels=in_channels, image_size=image_size, patch_size=patch_size,
                                    emb_dim=emb_dim, norm=patch_norm, dropout=emb_dropout)
        self.blocks = nn.Sequential(*[Block(dim=emb_dim, heads=heads, mlp_dim=mlp_dim, dropout=dropout,
                                            norm=block_norm) for _ in range(depth)])
        self.norm, self.head = make_norm(block_norm, emb_dim), nn.Linear(emb_dim, 1)
        self.pool, self.shift_unit = pool, patch_size  # a whole-patch shift moves no patch boundary
        # torch: nn.Linear's own; trunc02 (std 0.02) is the DeiT/AdamW convention, too small for SGD at width 32
        for module in self.modules():
            if init != "torch" and isinstance(module, nn.Linear):
                if init == "xavier":
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.blocks(self.embed(images)))
        pooled = tokens[:, 0] if self.pool == "cls" else reduce(tokens[:, 1:], "b n e -> b e", "mean")
        return self.head(pooled)
