"""--compile: compiled training steps must train exactly like eager ones, BatchNorm running statistics
included, and a whole fit (training, evaluation, next epoch) must never recompile.

On CPU the graphs go through dynamo + AOTAutograd with the aot_eager_decomp_partition backend (inductor's
decompositions and partitioner, eager kernels): the part that captures the model and turns BatchNorm's
in-place buffer updates into graph outputs written back to the module. Inductor's code generation takes
~30 s per graph on 2 cores, too slow for CI; on a CUDA machine the second test checks the real GPU
configuration (inductor with CUDA graphs, mode="reduce-overhead") against eager.
"""

import dataclasses

import pytest
import torch

from config import Config
from data import DeviceData
from train import TrainState, build_training, fit

CFG = Config(emb_dim=16, depth=1, heads=2, mlp_dim=32, dropout=0.0, emb_dropout=0.0, block_norm="batch",
             batch_size=16, epochs=2, precision="fp32")  # compiled and eager alike in fp32: equal to rounding


def tiny_data(device: str) -> DeviceData:
    g = torch.Generator().manual_seed(0)
    x = {s: torch.randn(n, 1, 28, 28, generator=g).to(device) for s, n in (("train", 64), ("valid", 40))}
    y = {s: (torch.rand(len(v), generator=g) < 0.5).float().to(device) for s, v in x.items()}
    return DeviceData(x, y, {"channels": ["density"], "mean": [0.0], "std": [1.0]}, 28)


def fit_tiny(device: str, compiled: bool) -> tuple[dict, list[dict]]:
    """Two epochs (training and evaluation) from a fixed initialisation: final weights and buffers, history."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, compile=compiled)
    data = tiny_data(device)
    training = build_training(cfg, 1, 28, len(data.x["train"]), torch.device(device))
    state = fit(training, data, cfg, TrainState(), lambda st, improved: None, log=lambda message: None)
    return {k: v.detach().cpu().clone() for k, v in training.model.state_dict().items()}, state.history


def assert_compiled_fit_matches_eager(device: str, rtol: float, atol: float) -> None:
    torch._dynamo.reset()
    w_eager, h_eager = fit_tiny(device, compiled=False)
    w_compiled, h_compiled = fit_tiny(device, compiled=True)  # error_on_recompile: one graph, two epochs
    stats = [k for k in w_eager if "running_" in k]
    assert len(stats) == 2 * 4, "BatchNorm in the patch embedding, both norms of the block and the final norm"
    assert int(w_compiled["embed.norm.num_batches_tracked"]) == 2 * 64 // 16, "a step skipped the BN update"
    for key, value in w_eager.items():
        torch.testing.assert_close(w_compiled[key], value, rtol=rtol, atol=atol, msg=f"{key} differs")
    for row_eager, row_compiled in zip(h_eager, h_compiled, strict=True):
        for key, value in row_eager.items():
            # accuracy and AUC jump when rounding reorders two near-equal probabilities of this random data
            jumpy = key.endswith(("acc", "auc"))
            assert row_compiled[key] == pytest.approx(value, rel=rtol, abs=0.05 if jumpy else atol), key


def test_compiled_fit_trains_like_eager_and_never_recompiles(monkeypatch):
    """Weights, BatchNorm running statistics and metrics after two epochs equal eager training's, and the
    fixed-shape batches plus eager evaluation need one compiled graph for the whole fit."""
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode: compile_(model, backend="aot_eager_decomp_partition"))
    assert_compiled_fit_matches_eager("cpu", rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_keep_batchnorm_statistics_like_eager(monkeypatch):
    """The GPU configuration of --compile: inductor with mode="reduce-overhead" (CUDA graphs)."""
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # compare like with like
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    from torch._dynamo.utils import counters
    counters.clear()
    assert_compiled_fit_matches_eager("cuda", rtol=1e-3, atol=1e-4)
    assert counters["inductor"]["cudagraph_skips"] == 0, "CUDA graphs were skipped: the test checked nothing"
