"""The requested model: BatchNorm patch embedding, block norms, shapes and train/eval behaviour."""
import copy

import pytest
import torch
from torch import nn

from reference import ReferenceCNN
from config import Config
from train import build_training, resolve_precision
import torch.nn.functional as F
from vision_transformer import Attention, PatchEmbedding, VisionTransformer


def test_patch_embedding_shapes_and_positions_follow_image_size():
    emb = PatchEmbedding(in_channels=2, patch_size=4, emb_dim=32, image_size=28)
    assert emb(torch.randn(5, 2, 28, 28)).shape == (5, 1 + 49, 32)
    emb16 = PatchEmbedding(in_channels=1, patch_size=4, emb_dim=8, image_size=16)
    assert emb16.pos_embedding.shape == (1, 1 + 16, 8)
    assert emb16(torch.randn(3, 1, 16, 16)).shape == (3, 17, 8)


def reference_embedding(emb: PatchEmbedding, norm: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The request spelled out with the embedding's own weights: Conv2d -> BatchNorm2d -> tokens -> CLS -> pos."""
    tokens = norm(emb.proj(images)).flatten(2).transpose(1, 2)
    return torch.cat([emb.cls_token.expand(len(images), -1, -1), tokens], dim=1) + emb.pos_embedding


def test_batchnorm_sits_after_conv_and_before_tokens_and_dropout_is_02():
    emb = PatchEmbedding()
    assert isinstance(emb.proj, nn.Conv2d) and emb.proj.stride == (4, 4) and emb.proj.kernel_size == (4, 4)
    assert isinstance(emb.norm, nn.BatchNorm2d) and emb.norm.num_features == 32
    assert type(emb.dropout) is nn.Dropout and emb.dropout.p == 0.2
    # The modules run in the requested order, each once: hooks see Conv2d, then BatchNorm2d, then Dropout.
    order = []
    for name in ("proj", "norm", "dropout"):
        getattr(emb, name).register_forward_hook(lambda module, args, out, name=name: order.append(name))
    emb(torch.randn(2, 2, 28, 28))
    assert order == ["proj", "norm", "dropout"]
    # Same numbers as the request spelled out, in training (batch statistics, running statistics updated
    # alike) and in eval mode.
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


def test_patch_norm_none_is_the_pre_change_model_whose_images_do_not_interact():
    """Without BatchNorm (and with LayerNorm blocks) an image's output does not depend on the rest of its batch,
    in training too; with the requested BatchNorm it does, through the batch statistics."""
    torch.manual_seed(0)
    emb = PatchEmbedding(norm="none", dropout=0.0)
    images = torch.randn(8, 2, 28, 28)
    torch.testing.assert_close(emb(images), reference_embedding(emb, nn.Identity(), images))
    for patch_norm, independent in (("none", True), ("batch", False)):
        model = VisionTransformer(in_channels=2, depth=2, dropout=0.0, emb_dropout=0.0, patch_norm=patch_norm)
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (not independent)
        alone = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
        assert torch.allclose(model(images), alone, atol=1e-5) == independent, patch_norm


def test_dropout_layers_are_nn_dropout_and_cpu_training_spells_attention_out(monkeypatch):
    """Hooks, FLOP counters and MC-dropout habits find every dropout as nn.Dropout: one after the embedding
    and two per block MLP. A CPU training step runs no SDPA: each block's attention weights go through one
    F.dropout at the block rate, and in eval mode through none."""
    model = VisionTransformer(in_channels=1, depth=3, dropout=0.1)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 + 2 * 3 and all(type(m) is nn.Dropout for m in dropouts)
    assert [m.p for m in dropouts] == [0.2] + [0.1] * 6
    sdpa, calls, dropout = [], [], F.dropout

    def counting(x, p=0.5, training=True, inplace=False):
        calls.append((tuple(x.shape[-2:]), p, training))
        return dropout(x, p, training, inplace)
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: sdpa.append(1))
    monkeypatch.setattr(F, "dropout", counting)
    model.train()(torch.randn(4, 1, 28, 28))
    attention = [c for c in calls if c[0] == (50, 50)]  # the (tokens x tokens) weights
    assert sdpa == [] and attention == [((50, 50), 0.1, True)] * 3
    calls.clear()
    model.eval()(torch.randn(4, 1, 28, 28))
    assert sdpa == [] and not any(c[0] == (50, 50) for c in calls)
    # the default recipe's CPU step (block dropout 0, autocast as resolved for this CPU): no weight dropout
    cfg = resolve_precision(Config(), torch.device("cpu"))
    training = build_training(cfg, 1, 28, 256, torch.device("cpu"))
    calls.clear()
    with training.autocast:
        training.step_model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert sdpa == [] and not any(c[0] == (50, 50) for c in calls) and [c[1] for c in calls if c[1]] == [0.2]


def test_cpu_attention_equals_sdpa_in_fp32():
    torch.manual_seed(0)
    attn = Attention(dim=32, heads=2, dropout=0.0)
    x = torch.randn(5, 50, 32)
    q, k, v = attn.qkv(x).view(5, 50, 3, 2, 16).permute(2, 0, 3, 1, 4)
    expected = attn.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(5, 50, 32))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_cls_and_position_init_is_small_truncated_normal():
    torch.manual_seed(0)
    emb = PatchEmbedding(emb_dim=64)
    assert emb.pos_embedding.abs().max() <= 0.04 + 1e-6  # truncated at 2 std of 0.02
    assert 0.01 < emb.pos_embedding.std() < 0.03


@pytest.mark.parametrize("block_norm", ["layer", "batch"])
def test_vit_returns_one_logit_per_image(block_norm):
    model = VisionTransformer(in_channels=1, depth=2, block_norm=block_norm)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 1)
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d))]
    expected = nn.LayerNorm if block_norm == "layer" else nn.BatchNorm1d
    assert norms and all(isinstance(m, expected) for m in norms)


def test_reference_cnn_layout_and_output():
    cnn = ReferenceCNN(in_channels=2)
    assert cnn(torch.randn(3, 2, 28, 28)).shape == (3, 1)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(2, 16, (3, 3)), (16, 32, (3, 3))]
    linears = [m for m in cnn.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(32 * 7 * 7, 128), (128, 1)]


@pytest.mark.parametrize("model_fn", [lambda: VisionTransformer(in_channels=2, depth=2, block_norm="batch"),
                                      lambda: ReferenceCNN(in_channels=2)])
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


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]


def test_init_choices_set_the_linear_weight_scale():
    """torch: nn.Linear's fan-in uniform (std 1/sqrt(3 fan_in)); xavier: Xavier-uniform; trunc02: the DeiT
    truncated normal, 4-6x smaller at width 32 (the scale at which SGD did not train)."""
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
