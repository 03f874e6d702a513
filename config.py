"""Every default in one visible block, and the command-line parser built from it.

A flag and its default live in one place: `Config` below. `build_parser` turns each field into a `--flag`
with the field's help text, choices and range check, so nothing is written twice.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

CHANNEL_NAMES = ("density", "recording_date")


class UserError(Exception):
    """A problem with the user's input or environment: printed as one line, exit code 2, no traceback."""


def _opt(default: Any, help: str, choices: tuple | None = None, check: Callable | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


def positive(x: float) -> bool:
    """must be > 0"""
    return x > 0


def non_negative(x: float) -> bool:
    """must be >= 0"""
    return x >= 0


def probability(x: float) -> bool:
    """must be in [0, 1): a dropout rate, a momentum or a smoothing eps"""
    return 0 <= x < 1


def channel_spec(text: str) -> bool:
    """'auto' or distinct names from density, recording_date separated by commas"""
    if text == "auto":
        return True
    names = [n.strip() for n in text.split(",")]
    return len(names) > 0 and all(n in CHANNEL_NAMES for n in names) and len(set(names)) == len(names)


@dataclass
class Config:
    # ---- data --------------------------------------------------------------------------------------------
    data_dir: str = _opt("data", "folder with train.hdf5, valid.hdf5, test_no_labels.hdf5; when it has no "
                         "train.hdf5 the built-in synthetic benchmark is generated into DATA_DIR/synthetic")
    channels: str = _opt("auto", "input channels, comma separated from {density, recording_date}; 'auto' "
                         "drops channels the shortcut guard flags as confounders", check=channel_spec)
    whiten: bool = _opt(True, "feed density as log-density whitened by the training set's mean power spectrum "
                        "(every scale gets equal weight; the classes differ only at small scales); --no-whiten "
                        "feeds raw density")
    augment: bool = _opt(True, "train on a random symmetry of each image (reflections keep the label, a transpose "
                         "swaps it) and a random periodic shift per batch; whitening then uses a filter "
                         "averaged over the symmetries")
    tta: bool = _opt(True, "predict with the mean logit over views of each image: it and its transpose (which "
                     "votes with the opposite sign), each at --tta-shifts squared periodic shifts within a patch; "
                     "whitening then uses the symmetric filter too")
    tta_shifts: int = _opt(4, "with --tta: shifts per axis, spread evenly over one patch (2: by 0 and half a "
                           "patch; 2 x shifts^2 views in all)", check=positive)
    synthetic_seed: int = _opt(0, "seed of the built-in benchmark generator")
    # ---- model -------------------------------------------------------------------------------------------
    model: str = _opt("vit", "vit: the BatchNorm Vision Transformer; cnn: the scientist's reference CNN",
                      choices=("vit", "cnn"))
    patch_size: int = _opt(4, "side of the square patches (must divide the image size)", check=positive)
    emb_dim: int = _opt(32, "token width of the ViT", check=positive)
    depth: int = _opt(4, "number of transformer blocks", check=positive)
    heads: int = _opt(4, "attention heads (must divide --emb-dim)", check=positive)
    mlp_dim: int = _opt(64, "hidden width of each block's MLP", check=positive)
    dropout: float = _opt(0.1, "dropout inside the transformer blocks", check=probability)
    emb_dropout: float = _opt(0.2, "dropout after the patch embedding (the request: 0.2)", check=probability)
    patch_norm: str = _opt("batch", "normalisation after the patch convolution; 'none' is the pre-change ViT",
                           choices=("batch", "none"))
    block_norm: str = _opt("layer", "normalisation inside the transformer blocks", choices=("layer", "batch"))
    init: str = _opt("torch", "initialisation of the ViT's Linear weights: torch (nn.Linear's fan-in default), "
                     "xavier (Xavier-uniform) or trunc02 (truncated normal std 0.02, the DeiT/AdamW convention, "
                     "with which SGD does not train this ViT)", choices=("torch", "xavier", "trunc02"))
    pool: str = _opt("cls", "what the ViT's head reads: the CLS token, or the mean of the patch tokens",
                     choices=("cls", "mean"))
    dropout_sampler: str = _opt("fast", "how CPU training draws the ViT's dropout masks: fast (16-bit random "
                                "numbers, p rounded to 2**-16; a CPU step ~1.4x faster) or torch (torch's sampler, as "
                                "runs before this option); CUDA always uses torch's fused kernels",
                                choices=("fast", "torch"))
    # ---- optimisation ------------------------------------------------------------------------------------
    optimizer: str = _opt("sgd", "sgd: SGD with momentum and LinearLR 1.0 -> 0.1 (the request); adamw: the "
                          "previous AdamW with linear warmup then cosine decay", choices=("sgd", "adamw"))
    lr: float = _opt(0.05, "peak learning rate", check=positive)
    momentum: float = _opt(0.9, "SGD momentum", check=probability)
    weight_decay: float = _opt(5e-4, "weight decay (L2 for SGD, decoupled for AdamW)", check=non_negative)
    warmup_epochs: float = _opt(2.0, "AdamW only: epochs of linear warmup before the cosine decay",
                                check=non_negative)
    loss: str = _opt("bce", "bce: BCE with logits; mse: MSE on sigmoid(logits); smooth: BCE on "
                     "label-smoothed targets", choices=("bce", "mse", "smooth"))
    smoothing: float = _opt(0.1, "label smoothing eps for --loss smooth: targets y*(1-eps) + 0.5*eps",
                            check=probability)
    epochs: int = _opt(10, "maximum number of epochs", check=positive)
    batch_size: int = _opt(128, "training batch size", check=positive)
    patience: int = _opt(6, "stop after this many epochs without a better validation log loss",
                         check=positive)
    seed: int = _opt(0, "seed for initialisation, shuffling and dropout")
    # ---- hardware ----------------------------------------------------------------------------------------
    device: str = _opt("auto", "auto picks cuda when available", choices=("auto", "cpu", "cuda"))
    precision: str = _opt("fp32", "bf16 autocast (CUDA) or fp32 (fastest on CPU)", choices=("fp32", "bf16"))
    compile: bool = _opt(False, "torch.compile the model (fixed-shape batches, no recompiles)")
    sync_bn: bool = _opt(False, "under torchrun: synchronise BatchNorm statistics across processes")
    # ---- outputs -----------------------------------------------------------------------------------------
    out_dir: str = _opt("runs", "each run gets a fresh sub-folder here; nothing is ever overwritten")
    predictions: str = _opt("outputs/predictions.txt", "copy of the test predictions (one 0/1 per line)")
    resume: str = _opt("", "continue the run in this folder from its last.pt")
    predict: str = _opt("", "classify --input with the best checkpoint of this run folder")
    input: str = _opt("", "with --predict: the HDF5 file to classify")
    output: str = _opt("", "with --predict: where to write the 0/1 predictions (a .csv of probabilities "
                       "goes beside it)")

    def model_fields(self) -> dict[str, Any]:
        """The fields that fix the network's shape: a checkpoint only loads into a model with the same ones."""
        names = ("model", "patch_size", "emb_dim", "depth", "heads", "mlp_dim", "patch_norm", "block_norm", "pool",
                 "whiten")
        return {n: getattr(self, n) for n in names}


def _checked(kind: type, name: str, check: Callable | None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}")
        if check is not None and not check(value):
            hint = check.__doc__ or check.__name__  # the check's docstring says what is allowed
            raise argparse.ArgumentTypeError(f"{text!r} is out of range for --{name} ({hint})")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line and exit code 2 (argparse would print the whole usage block first)."""
        self.exit(2, f"error: {message}; see --help\n")


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    """One --flag per Config field, with the field's default, help, choices and range check."""
    parser = _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=meta["help"])
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type, type(f.default))
        parser.add_argument(flag, type=_checked(kind, f.name.replace("_", "-"), meta["check"]),
                            default=f.default, choices=meta["choices"], help=meta["help"])
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse the command line into a Config; argparse exits 2 with one error line on nonsense values."""
    args = build_parser().parse_args(argv)
    return Config(**vars(args))


# Settings added after runs were already saved, with the value those older runs actually used: a resumed old
# run then continues exactly as it started.
SAVED_BEFORE_ADDED = {"dropout_sampler": "torch", "init": "trunc02", "pool": "cls", "augment": False,
                      "tta": False, "tta_shifts": 2}


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config saved with a run, ignoring keys that later versions dropped."""
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{**SAVED_BEFORE_ADDED, **{k: v for k, v in values.items() if k in known}})
