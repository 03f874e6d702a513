"""cpu_dropout.py: the fast CPU dropout masks, and switching a model to them without changing what it is."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cpu_dropout
from cpu_dropout import FastCPUDropout, FastCPUDropoutAttention, fast_keep_mask, use_fast_cpu_dropout
from vision_transformer import Attention, VisionTransformer


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
    fast = FastCPUDropout(0.2)
    torch.manual_seed(1)
    a = fast(x)
    torch.manual_seed(1)
    assert torch.equal(a, fast(x)), "same seed, same mask"
    torch.manual_seed(1)
    assert not torch.equal(a, F.dropout(x, 0.2, True)), "not torch's mask"
    kept = a != 0
    torch.testing.assert_close(a[kept], x[kept] / (1 - round(0.2 * 2**16) / 2**16))
    assert 0.15 < 1 - kept.float().mean().item() < 0.25
    fast.eval()
    assert torch.equal(fast(x), x)


@pytest.mark.parametrize("p", [1e-6, 0.999995])
def test_unrepresentable_rates_fall_back_to_torchs_dropout(p):
    """The fast masks round p to 2**-16: 1e-6 and 0.999995 cannot be represented, so torch's dropout runs."""
    x = torch.randn(4, 10, 8)
    torch.manual_seed(2)
    expected = F.dropout(x, p, True)
    torch.manual_seed(2)
    assert torch.equal(FastCPUDropout(p)(x), expected)


def test_attention_spelled_out_for_fast_dropout_equals_sdpa(monkeypatch):
    torch.manual_seed(0)
    attn = Attention(dim=64, heads=4, dropout=0.1)
    x = torch.randn(5, 50, 64)
    attn.eval()
    expected = attn(x)  # SDPA, no dropout
    use_fast_cpu_dropout(attn)
    # With every mask element 1, the training path (explicit softmax(qk^T/sqrt(d)) v) must give SDPA's numbers.
    monkeypatch.setattr(cpu_dropout, "fast_keep_mask", lambda shape, p, dtype: torch.ones(shape, dtype=dtype))
    attn.train()
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_training_attention_without_dropout_is_spelled_out_and_equals_sdpa_in_fp32_and_bf16(monkeypatch):
    """Dropout 0: CPU training still takes the spelled-out path (SDPA's fused kernel is slow at head dim 8
    under bf16), and computes SDPA's attention: exactly enough in fp32, within bf16 rounding under autocast
    (8 significant bits: a relative error of a few 2**-9 on outputs of order 1)."""
    torch.manual_seed(0)
    attn = Attention(dim=32, heads=4, dropout=0.0)
    x = torch.randn(5, 50, 32)
    expected = attn(x)  # SDPA
    use_fast_cpu_dropout(attn)
    calls = []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(attn(x).float(), expected, rtol=0.05, atol=0.03)
    assert calls == [], "SDPA ran in CPU training"


def test_switching_keeps_the_model_its_weights_and_its_eval_outputs():
    torch.manual_seed(0)
    model = VisionTransformer(in_channels=1, depth=2)
    keys = list(model.state_dict())
    x = torch.randn(6, 1, 28, 28)
    before = model.eval()(x)
    hooked = []
    model.embed.dropout.register_forward_hook(lambda *args: hooked.append(True))
    assert use_fast_cpu_dropout(model) is model
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 5 and all(type(m) is FastCPUDropout for m in dropouts)
    assert all(type(block.attn) is FastCPUDropoutAttention for block in model.blocks)
    assert list(model.state_dict()) == keys
    assert torch.equal(model(x), before), "eval mode is untouched"
    assert hooked, "hooks registered before the switch still fire"
    model.train()
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    assert torch.equal(a, model(x)) and not torch.equal(a, before), "seeded dropout in training"
