"""The requested model: BatchNorm patch embedding, block norms, shapes and train/eval behaviour."""
import pytest
import torch
from torch import nn

from cnn import ReferenceCNN
from vision_transformer import PatchEmbedding, TokenBatchNorm, VisionTransformer


def test_patch_embedding_shapes_and_positions_follow_image_size():
    emb = PatchEmbedding(in_channels=2, patch_size=4, emb_dim=32, image_size=28)
    assert emb(torch.randn(5, 2, 28, 28)).shape == (5, 1 + 49, 32)
    emb16 = PatchEmbedding(in_channels=1, patch_size=4, emb_dim=8, image_size=16)
    assert emb16.pos_embedding.shape == (1, 1 + 16, 8)
    assert emb16(torch.randn(3, 1, 16, 16)).shape == (3, 17, 8)


def test_patch_that_does_not_divide_image_is_a_clear_error():
    with pytest.raises(AssertionError, match="does not divide"):
        PatchEmbedding(patch_size=5, image_size=28)


def test_batchnorm_sits_after_conv_and_before_tokens_and_dropout_is_02():
    emb = PatchEmbedding()
    order = [name for name, _ in emb.named_children()]
    assert order.index("proj") < order.index("norm") < order.index("to_tokens")
    assert isinstance(emb.proj, nn.Conv2d) and emb.proj.stride == (4, 4) and emb.proj.kernel_size == (4, 4)
    assert isinstance(emb.norm, nn.BatchNorm2d) and emb.norm.num_features == 32
    assert isinstance(emb.dropout, nn.Dropout) and emb.dropout.p == 0.2
    # The norm really runs on the conv output: hooks fire in this order in one forward pass.
    seen = []
    for name in ("proj", "norm", "to_tokens"):
        getattr(emb, name).register_forward_hook(lambda m, i, o, name=name: seen.append((name, tuple(o.shape))))
    emb(torch.randn(2, 2, 28, 28))
    assert seen == [("proj", (2, 32, 7, 7)), ("norm", (2, 32, 7, 7)), ("to_tokens", (2, 49, 32))]


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
