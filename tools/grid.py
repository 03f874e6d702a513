"""The ablation grid of compare.py: named configurations, channel sets, learning-rate grids and presets.

Each configuration is a set of Config overrides. `before` is the scientist's pre-change ViT; each requested
change is one row on top of it; `after` has them all, and `after-…` rows take one back. Every such row runs
on raw and on whitened density; the date channel, the init axis and the ViT levers are rows of their own.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import synthetic
from config import Config

# The pre-change ViT on raw density, read from the CLS token, with 4 attention heads and torch's fan-in init for
# its Linear layers (the "@trunc02" rows use the DeiT init instead).
ADAMW = {"optimizer": "adamw", "weight_decay": 0.05}
BEFORE = {"model": "vit", "heads": 4, "patch_norm": "none", "block_norm": "layer", **ADAMW, "loss": "bce",
          "whiten": False, "pool": "cls", "augment": "off", "tta": "off", "tta_shifts": 2}
SGD_LINEAR = {"optimizer": "sgd", "weight_decay": Config().weight_decay}  # the request: SGD's usual L2
CHANGES = {"+patch-bn": {"patch_norm": "batch"}, "+sgd-linear": SGD_LINEAR, "+mse": {"loss": "mse"},
           "+smooth": {"loss": "smooth"}, "+block-bn": {"block_norm": "batch"}}
AFTER = {**BEFORE, "patch_norm": "batch", **SGD_LINEAR, "loss": "smooth"}
# The other direction: `after` with one requested change taken back (or, for the optional block BatchNorm,
# added), so that each change is also measured in the company of the others.
REMOVALS = {"after-patch-bn": {"patch_norm": "none"}, "after-sgd-linear": ADAMW,
            "after-smooth+bce": {"loss": "bce"}, "after-smooth+mse": {"loss": "mse"},
            "after+block-bn": {"block_norm": "batch"}}
RAW: dict[str, dict[str, Any]] = {
    "before": BEFORE,
    **{name: {**BEFORE, **change} for name, change in CHANGES.items()},
    "after": AFTER,
    **{name: {**AFTER, **change} for name, change in REMOVALS.items()},
    "cnn": {**BEFORE, "model": "cnn"},
}
# Beyond the request: what the physics suggests. The classes differ only at small scales, which raw density
# drowns in large-scale structure; whitened log-density (--whiten) gives every scale equal weight. Every raw
# row again on whitened input, so each change is measured on both.
WHITENED = {f"{name}+whiten": {**config, "whiten": True}
            for name, config in RAW.items()}
CONFIGS: dict[str, dict[str, Any]] = {**RAW, **WHITENED}
# The initialisation as an axis: truncated normal std 0.02 (timm/DeiT, with which SGD stayed at the constant
# predictor) against the fan-in default, for SGD and AdamW, raw and whitened.
TRUNC02 = {f"{name}@trunc02": {**CONFIGS[name], "init": "trunc02"}
           for name in ("before", "after", "before+whiten", "after+whiten")}
# Beyond the request: ViT levers on top of the requested recipe on whitened input.
AUG_TTA = {"augment": "auto", "tta": "auto", "tta_shifts": 4}  # the symmetries the check finds in the data
LEVERS = {"after+whiten+mean-pool": {**CONFIGS["after+whiten"], "pool": "mean"},
          "after+whiten+mean-pool+aug-tta": {**CONFIGS["after+whiten"], "pool": "mean", **AUG_TTA},
          "after+whiten+aug-tta": {**CONFIGS["after+whiten"], **AUG_TTA}}
# The README's command, `python run_transformer.py --loss smooth`, as it ships (Config's defaults: 2 heads, mean
# pooling, augmentation and views) on its own 6-epoch schedule, scored like every row; the one row that does not
# train for the grid's 8 epochs.
DEFAULT = {"default": {"optimizer": Config().optimizer, "loss": "smooth", "epochs": Config().epochs}}
CONFIGS.update({**LEVERS, **DEFAULT, **TRUNC02})
# Each requested change measured both ways, as (with it, without it): on `before`, and in the company of the
# other changes (`after`). MSE and smoothing are each compared with plain BCE.
EFFECTS = {
    "BatchNorm after the patch convolution": (("+patch-bn", "before"), ("after", "after-patch-bn")),
    "SGD + LinearLR instead of AdamW + warmup-cosine": (("+sgd-linear", "before"), ("after", "after-sgd-linear")),
    "label-smoothed BCE instead of BCE": (("+smooth", "before"), ("after", "after-smooth+bce")),
    "MSE on sigmoid instead of BCE": (("+mse", "before"), ("after-smooth+mse", "after-smooth+bce")),
    "BatchNorm inside the blocks (optional)": (("+block-bn", "before"), ("after+block-bn", "after")),
}
# The date-channel question is asked of the scientist's rows: `before`, each change on it, `after`, the CNN.
WITH_DATE = ("before", *CHANGES, "after", "cnn")
CHANNEL_SETS = {"with-date": "density,recording_date", "no-date": "density"}
# Peak learning rates. The full grid trains every row at one rate per optimizer (FIXED_LR), checked against
# probes over LR_GRID on before and after, raw and whitened (docs/evaluation.md: learning rates). An optimizer
# given several rates (--lrs, --quick) is probed per configuration and the best probe's rate is used.
LR_GRID = {"adamw": (1e-3, 2e-3, 4e-3), "sgd": (0.025, 0.05, 0.1)}
FIXED_LR = {"adamw": (4e-3,), "sgd": (Config().lr,)}
PROBE_SEED = 100  # probes use a seed that the reported runs do not, so selection and evaluation stay apart


@dataclasses.dataclass(frozen=True)
class Settings:
    """How big a grid: the full defaults, or --quick."""
    configs: tuple[str, ...]
    epochs: int
    probe_epochs: int
    seeds: int
    lr_grid: dict[str, tuple[float, ...]]
    channel_sets: tuple[str, ...] = tuple(CHANNEL_SETS)
    heldout: str = ""  # the labelled set every final run is scored on (compare.py sets it)


# Every row's reported runs train for 8 epochs with early stopping (a row that names its epochs keeps them for
# its reported runs: `default`; probes always train for probe_epochs).
FULL = Settings(tuple(CONFIGS), epochs=8, probe_epochs=3, seeds=3, lr_grid=FIXED_LR)
# --quick: the scientist's question in minutes: `before`, each requested change on it, `after` and the CNN, on
# density alone, at the full grid's rates (no probes).
QUICK = Settings(("before", *(c for c in CHANGES if c != "+block-bn"), "after", "cnn"), epochs=4, probe_epochs=2,
                 seeds=2, lr_grid=FIXED_LR, channel_sets=("no-date",))
# --quick trains on a small instance of the built-in benchmark (same generator, 1/10 of the samples) and
# scores on a held-out set of 1,000 images per class instead of 10,000.
QUICK_SIZES = synthetic.Sizes(1000, 1800, 250, 450, 250, 250)
QUICK_HELDOUT_PER_CLASS = 1000


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration with one channel set."""
    config: str
    channels: str  # a key of CHANNEL_SETS

    @property
    def name(self) -> str:
        return f"{self.config}/{self.channels}"

    def build(self, base: Config, **changes: Any) -> Config:
        """base, then the row's settings, then `changes` (the grid's seed, rate, epochs, folders)."""
        return dataclasses.replace(base, **{**CONFIGS[self.config], **changes}, channels=CHANNEL_SETS[self.channels])

    def final_epochs(self, grid_epochs: int) -> int:
        """Epochs of the reported runs: the grid's, unless the row names its own (`default`)."""
        return CONFIGS[self.config].get("epochs", grid_epochs)


def variants(configs: tuple[str, ...], channel_sets: tuple[str, ...] = tuple(CHANNEL_SETS)) -> list[Variant]:
    """Each configuration without the date channel, and WITH_DATE's also with it (where `channel_sets` has it)."""
    return [Variant(c, ch) for c in configs for ch in channel_sets if ch == "no-date" or c in WITH_DATE]
