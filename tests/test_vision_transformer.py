"""The requested model: BatchNorm patch embedding, block norms, shapes and train/eval behaviour."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn import ReferenceCNN
import vision_transformer
from vision_transformer import (Attention, Dropout, PatchEmbedding, TokenBatchNorm, VisionTransformer,
                                fast_keep_mask)


def test_patch_embedding_shapes_and_positions_follow_image_size():
    emb = PatchEmbedding(in_channels=2, patch_size=4, emb_dim=32, image_size=28)
    assert emb(torch.randn(5, 2, 28, 28)).shape == (5, 1 + 49, 32)
    emb16 = PatchEmbedding(in_channels=1, patch_size=4, emb_dim=8, image_size=16)
    assert emb16.pos_embedding.shape == (1, 1 + 16, 8)
    assert emb16(torch.randn(3, 1, 16, 16)).shape == (3, 17, 8)


def test_patch_that_does_not_divide_image_is_a_clear_error():
    with pytest.raises(AssertionError, match="does not divide"):
        PatchEmbedding(patch_size=5, image_size=28)


def reference_embedding(emb: PatchEmbedding, norm: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The request spelled out with the embedding's own weights: Conv2d -> BatchNorm2d -> tokens -> CLS -> pos."""
    tokens = norm(emb.proj(images)).flatten(2).transpose(1, 2)
    return torch.cat([emb.cls_token.expand(len(images), -1, -1), tokens], dim=1) + emb.pos_embedding


def test_batchnorm_sits_after_conv_and_before_tokens_and_dropout_is_02():
    emb = PatchEmbedding()
    assert isinstance(emb.proj, nn.Conv2d) and emb.proj.stride == (4, 4) and emb.proj.kernel_size == (4, 4)
    assert isinstance(emb.norm, nn.BatchNorm2d) and emb.norm.num_features == 32
    assert isinstance(emb.dropout, Dropout) and emb.dropout.p == 0.2
    # The conv runs as a matmul over flattened patches: same numbers as Conv2d -> BatchNorm2d, in training
    # (batch statistics, running statistics updated alike) and in eval mode.
    torch.manual_seed(0)
    with torch.no_grad():
        emb.norm.weight.uniform_(0.5, 1.5), emb.norm.bias.uniform_(-0.5, 0.5)
    reference_norm = copy.deepcopy(emb.norm)
    images = torch.randn(6, 2, 28, 28) * 2 + 1
    emb.dropout.p = 0.0
    emb.train(), reference_norm.train()
    torch.testing.assert_close(emb(images), reference_embedding(emb, reference_norm, images), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb.norm.running_mean, reference_norm.running_mean)
    torch.testing.assert_close(emb.norm.running_var, reference_norm.running_var)
    emb.eval(), reference_norm.eval()
    torch.testing.assert_close(emb(images), reference_embedding(emb, reference_norm, images), rtol=1e-5, atol=1e-5)


def test_patch_norm_none_reproduces_the_pre_change_model():
    assert isinstance(PatchEmbedding(norm="none").norm, nn.Identity)


def test_cls_and_position_init_is_small_truncated_normal():
    torch.manual_seed(0)
    emb = PatchEmbedding(emb_dim=64)
    assert emb.pos_embedding.abs().max() <= 0.04 + 1e-6  # truncated at 2 std of 0.02
    assert 0.01 < emb.pos_embedding.std() < 0.03


@pytest.mark.parametrize("block_norm", ["layer", "batch"])
def test_vit_returns_one_logit_per_image(block_norm):
    model = VisionTransformer(in_channels=1, depth=2, block_norm=block_norm)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 1)
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, TokenBatchNorm))]
    expected = nn.LayerNorm if block_norm == "layer" else TokenBatchNorm
    assert norms and all(isinstance(m, expected) for m in norms)


def test_reference_cnn_layout_and_output():
    cnn = ReferenceCNN(in_channels=2)
    assert cnn(torch.randn(3, 2, 28, 28)).shape == (3, 1)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(2, 16, (3, 3)), (16, 32, (3, 3))]
    linears = [m for m in cnn.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(32 * 7 * 7, 128), (128, 1)]


@pytest.mark.parametrize("model_fn", [lambda: VisionTransformer(in_channels=2, depth=2, block_norm="batch"),
                                      lambda: ReferenceCNN(2)])
def test_batchnorm_stats_and_dropout_change_only_in_train_mode(model_fn):
    torch.manual_seed(0)
    model = model_fn()
    x = torch.randn(16, 2, 28, 28) * 3 + 1
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [bn.running_mean.clone() for bn in bns]
    model.eval()
    a, b = model(x), model(x)
    assert torch.equal(a, b), "eval must be deterministic"
    assert all(torch.equal(bn.running_mean, m) for bn, m in zip(bns, before)), "eval must not update BN stats"
    model.train()
    c, d = model(x), model(x)
    assert not torch.equal(c, d), "dropout must be active in train mode"
    assert any(not torch.equal(bn.running_mean, m) for bn, m in zip(bns, before)), "train must update BN stats"


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_fast_keep_mask_drops_with_probability_p_in_every_word_position(p):
    torch.manual_seed(0)
    mask = fast_keep_mask(torch.Size([4 * 250_000]), p, torch.float32)
    q = round(p * 2**16) / 2**16
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / (1 - q))]
    # Each of the four 16-bit words of a 64-bit draw must be uniform: all positions drop at rate q.
    dropped = (mask == 0).float().view(-1, 4).mean(0)
    sigma = (q * (1 - q) / 250_000) ** 0.5
    assert torch.all((dropped - q).abs() < 5 * sigma), dropped
    assert abs(mask.mean().item() - 1) < 5 * sigma / (1 - q)  # unbiased: E[mask] = 1


def test_fast_dropout_is_seeded_scaled_and_off_in_eval():
    x = torch.randn(3, 50, 64)
    fast = Dropout(0.2)
    torch.manual_seed(1)
    a = fast(x)
    torch.manual_seed(1)
    assert torch.equal(a, fast(x)), "same seed, same mask"
    kept = a != 0
    torch.testing.assert_close(a[kept], x[kept] / (1 - round(0.2 * 2**16) / 2**16))
    assert 0.15 < 1 - kept.float().mean().item() < 0.25
    fast.eval()
    assert torch.equal(fast(x), x)


@pytest.mark.parametrize("p", [0.2, 1e-6, 0.999995])
def test_torch_sampler_and_unrepresentable_rates_are_torch_dropout(p):
    x = torch.randn(4, 10, 8)
    torch.manual_seed(2)
    expected = F.dropout(x, p, True)
    for module in (Dropout(p, "torch"), Dropout(p, "fast")):
        torch.manual_seed(2)
        same = torch.equal(module(x), expected)
        # "fast" rounds p to 2**-16: 1e-6 and 0.999995 cannot be represented, so torch's sampler takes them.
        assert same == (module.sampler == "torch" or p != 0.2)


def test_attention_spelled_out_for_fast_dropout_equals_sdpa(monkeypatch):
    torch.manual_seed(0)
    attn = Attention(dim=64, heads=4, dropout=0.1)
    x = torch.randn(5, 50, 64)
    attn.eval()
    expected = attn(x)  # SDPA, no dropout
    # With every mask element 1, the training path (explicit softmax(qk^T/sqrt(d)) v) must give SDPA's numbers.
    monkeypatch.setattr(vision_transformer, "fast_keep_mask", lambda shape, p, dtype: torch.ones(shape, dtype=dtype))
    attn.train()
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]


def test_init_choices_set_the_linear_weight_scale():
    """torch: nn.Linear's fan-in uniform (std 1/sqrt(3 fan_in)); xavier: Xavier-uniform; trunc02: the DeiT
    truncated normal, 5-9x smaller at width 32 (the scale at which SGD did not train)."""
    torch.manual_seed(0)
    for init, expected_std in (("torch", lambda w: (3 * w.shape[1]) ** -0.5),
                               ("xavier", lambda w: (2 / sum(w.shape)) ** 0.5),
                               ("trunc02", lambda w: 0.0176)):  # std of N(0, 0.02) truncated at +-2 std
        model = VisionTransformer(in_channels=1, emb_dim=32, mlp_dim=64, init=init)
        for w in linear_weights(model):
            if w.numel() >= 1024:  # enough entries for a stable std
                assert abs(float(w.std()) / expected_std(w) - 1) < 0.15, (init, tuple(w.shape), float(w.std()))
    default = VisionTransformer(in_channels=1)
    assert min(float(w.std()) for w in linear_weights(default) if w.numel() >= 1024) > 0.05
    assert max(float(w.abs().max()) for w in linear_weights(VisionTransformer(init="trunc02"))) <= 0.04 + 1e-6
    with pytest.raises(AssertionError, match="unknown init"):
        VisionTransformer(init="zeros")


def test_mean_pooling_reads_the_average_patch_token_not_the_cls_token():
    torch.manual_seed(0)
    model = VisionTransformer(in_channels=1, depth=1, pool="mean").eval()
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        tokens = model.norm(model.blocks(model.embed(images)))
        torch.testing.assert_close(model(images), model.head(tokens[:, 1:].mean(dim=1)))
        cls_model = VisionTransformer(in_channels=1, depth=1, pool="cls").eval()
        cls_model.load_state_dict(model.state_dict())  # same weights: only the pooling differs
        torch.testing.assert_close(cls_model(images), model.head(tokens[:, 0]))
