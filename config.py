"""Every default in one visible block, and the command-line parsers built from it.

A flag and its default live in one place: `Config` below. Each field also carries one role tag, which says
what a change of it means; the lists that checkpoints, --resume and compare.py's run identities need are
derived from those tags (fields_with), so they cannot disagree. `build_parser` and `add_config_flags` turn
fields into `--flags` with the field's help text, choices and range check, for every entry point that shares
them; `Parser` and `checked` give every parser one-line errors.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from vision_transformer import BLOCK_NORMS, INITS, PATCH_NORMS, POOLS

CHANNEL_NAMES = ("density", "recording_date")

# The role of each Config field: what a change of it means.
MODEL = "model"  # the network and the input its weights expect: a checkpoint loads only with the same values
OPTIMIZER = "optimizer"  # kept in the optimizer and scheduler state: a resumed run cannot change it
EXPERIMENT = "experiment"  # data, loss, regularisation, seed, precision: another value is another experiment
CONTROL = "control"  # changes the result, so part of a run's identity, but a resumed run may change it
EXECUTION = "execution"  # how the same experiment is computed (device, compiler): a resumed run may change it
SAMPLING = "sampling"  # how random numbers are drawn: the same experiment in distribution, but a resumed run
#                        keeps its random stream
OUTPUT = "output"  # where the results are written
ROLES = (MODEL, OPTIMIZER, EXPERIMENT, CONTROL, EXECUTION, SAMPLING, OUTPUT)


class UserError(Exception):
    """A problem with the user's input or environment: printed as one line, exit code 2, no traceback."""


def _opt(role: str, default: Any, help: str, choices: tuple | None = None, check: Callable | None = None,
         negation: str | None = None) -> Any:
    """A Config field; `negation`: the value that a --no-FLAG form sets (for a str field)."""
    assert role in ROLES, f"unknown role {role!r}: use one of {ROLES}"
    return field(default=default, metadata={"role": role, "help": help, "choices": choices, "check": check,
                                            "negation": negation})


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
    data_dir: str = _opt(EXPERIMENT, "data", "folder with train.hdf5, valid.hdf5, test_no_labels.hdf5; when it has no "
                         "train.hdf5 the built-in synthetic benchmark is generated into DATA_DIR/synthetic")
    channels: str = _opt(EXPERIMENT, "auto", "input channels, comma separated from {density, recording_date}; 'auto' "
                         "drops channels the shortcut guard flags as confounders", check=channel_spec)
    whiten: bool = _opt(MODEL, True, "feed density as log-density whitened by the training set's mean power spectrum "
                        "(every scale gets equal weight; the classes differ only at small scales); --no-whiten "
                        "feeds raw density")
    augment: str = _opt(EXPERIMENT, "auto", "train on a random symmetry of each image: auto uses the symmetries "
                         "of the square and the periodic shifts that the check of the training data finds (each with "
                         "its label rule: keep or swap the state); off (or --no-augment) none; or force a list such "
                         "as flip0,flip1,transpose=swap,shift (a forced symmetry the data contradict gets a WARNING)",
                         negation="off")
    tta: str = _opt(EXPERIMENT, "auto", "predict with the mean logit over views of each image: the image and one "
                    "partner symmetry (a swapping partner votes with the opposite sign), each at --tta-shifts squared "
                    "periodic shifts within a patch when shifts hold; auto, off (or --no-tta) or a forced list as "
                    "for --augment", negation="off")
    tta_shifts: int = _opt(EXPERIMENT, 4, "views' periodic shifts per axis, spread evenly over one patch (2: by 0 "
                           "and half a patch)", check=positive)
    epoch_views: str = _opt(EXPERIMENT, "pair", "views of the validation after every epoch, which picks the best "
                            "epoch and stops early: pair (the image and its partner, unshifted: at most 2 views) or "
                            "all (every test-time view); the best epoch's final validation and the test always use "
                            "all views", choices=("pair", "all"))
    synthetic_seed: int = _opt(EXPERIMENT, 0, "seed of the built-in benchmark generator")
    # ---- model -------------------------------------------------------------------------------------------
    model: str = _opt(MODEL, "vit", "vit: the BatchNorm Vision Transformer; cnn: the scientist's reference CNN",
                      choices=("vit", "cnn"))
    patch_size: int = _opt(MODEL, 4, "side of the square patches (must divide the image size)", check=positive)
    emb_dim: int = _opt(MODEL, 32, "token width of the ViT", check=positive)
    depth: int = _opt(MODEL, 4, "number of transformer blocks", check=positive)
    heads: int = _opt(MODEL, 2, "attention heads (must divide --emb-dim); 2 by default: on two CPU cores a step "
                      "is ~1.2x faster than with 4 at the same accuracy (docs/speed.md)", check=positive)
    mlp_dim: int = _opt(MODEL, 64, "hidden width of each block's MLP", check=positive)
    dropout: float = _opt(EXPERIMENT, 0.0, "dropout inside the transformer blocks (attention weights and MLP); 0 "
                          "by default: with augmentation it measured no better at 0.1, and CPU steps were 1.7x "
                          "slower", check=probability)
    emb_dropout: float = _opt(EXPERIMENT, 0.2, "dropout after the patch embedding (the request: 0.2)",
                              check=probability)
    patch_norm: str = _opt(MODEL, "batch", "normalisation after the patch convolution; 'none' is the pre-change "
                           "ViT",
                           choices=PATCH_NORMS)
    block_norm: str = _opt(MODEL, "layer", "normalisation inside the transformer blocks", choices=BLOCK_NORMS)
    init: str = _opt(EXPERIMENT, "torch", "initialisation of the ViT's Linear weights: torch (nn.Linear's fan-in "
                     "default), xavier (Xavier-uniform) or trunc02 (truncated normal std 0.02, the DeiT/AdamW "
                     "convention, with which SGD does not train this ViT)", choices=INITS)
    pool: str = _opt(MODEL, "mean", "what the ViT's head reads: the mean of the patch tokens (the default: it "
                     "reaches in 6 epochs what the CLS token reached in 8) or the CLS token (the scientist's ViT)",
                     choices=POOLS)
    dropout_sampler: str = _opt(SAMPLING, "fast", "how CPU training draws the ViT's dropout masks: fast "
                                "(cpu_dropout.py: 16-bit random numbers, p rounded to 2**-16; a CPU step ~1.4x "
                                "faster) or torch (nn.Dropout's own); CUDA always uses torch's fused kernels",
                                choices=("fast", "torch"))
    # ---- optimisation ------------------------------------------------------------------------------------
    optimizer: str = _opt(OPTIMIZER, "sgd", "sgd: SGD with momentum and LinearLR 1.0 -> 0.1 (the request); adamw: "
                          "the scientist's AdamW with linear warmup then cosine decay", choices=("sgd", "adamw"))
    lr: float = _opt(OPTIMIZER, 0.05, "peak learning rate", check=positive)
    momentum: float = _opt(OPTIMIZER, 0.9, "SGD momentum", check=probability)
    weight_decay: float = _opt(OPTIMIZER, 5e-4, "weight decay (L2 for SGD, decoupled for AdamW)", check=non_negative)
    warmup_epochs: float = _opt(OPTIMIZER, 2.0, "AdamW only: epochs of linear warmup before the cosine decay",
                                check=non_negative)
    loss: str = _opt(EXPERIMENT, "bce", "bce: BCE with logits; mse: MSE on sigmoid(logits); smooth: BCE on "
                     "label-smoothed targets", choices=("bce", "mse", "smooth"))
    smoothing: float = _opt(EXPERIMENT, 0.1, "label smoothing eps for --loss smooth: targets y*(1-eps) + 0.5*eps",
                            check=probability)
    epochs: int = _opt(OPTIMIZER, 6, "maximum number of epochs (LinearLR spans all of them)", check=positive)
    batch_size: int = _opt(OPTIMIZER, 128, "training batch size", check=positive)
    patience: int = _opt(CONTROL, 6, "stop after this many epochs without a better validation log loss",
                         check=positive)
    seed: int = _opt(EXPERIMENT, 0, "seed for initialisation, shuffling and dropout")
    # ---- hardware ----------------------------------------------------------------------------------------
    device: str = _opt(EXECUTION, "auto", "auto picks cuda when available", choices=("auto", "cpu", "cuda"))
    precision: str = _opt(EXPERIMENT, "auto", "bf16 autocast or fp32; auto: bf16 on CUDA and on CPUs with native "
                          "bf16 (AVX512-BF16 or AMX), else fp32; the run's config records the choice",
                          choices=("auto", "fp32", "bf16"))
    compile: bool = _opt(EXECUTION, False, "torch.compile the model (fixed-shape batches, no recompiles)")
    sync_bn: bool = _opt(CONTROL, False, "under torchrun: synchronise BatchNorm statistics across processes")
    # ---- outputs -----------------------------------------------------------------------------------------
    out_dir: str = _opt(OUTPUT, "runs", "each run gets a fresh sub-folder here; nothing is ever overwritten")
    predictions: str = _opt(OUTPUT, "outputs/predictions.txt", "copy of the test predictions (one 0/1 per line)")


def fields_with(*roles: str) -> tuple[str, ...]:
    """Names of the Config fields with any of these roles, in declaration order."""
    assert set(roles) <= set(ROLES), f"unknown roles {set(roles) - set(ROLES)}: use {ROLES}"
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata["role"] in roles)


def flag(name: str) -> str:
    """The --flag of a Config field."""
    return "--" + name.replace("_", "-")


def checked(kind: type, name: str, check: Callable | None = None) -> Callable[[str], Any]:
    """An argparse type: `kind(text)`, refused with a one-line reason when `check` (a function whose docstring
    says what is allowed, such as `positive`) fails."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}")
        if check is not None and not check(value):
            hint = check.__doc__ or check.__name__
            raise argparse.ArgumentTypeError(f"{text!r} is out of range for {flag(name)} ({hint})")
        return value
    return parse


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: every entry point's parser is one of these."""

    def error(self, message: str):
        """One line and exit code 2 (argparse would print the whole usage block first)."""
        self.exit(2, f"error: {message}; see --help\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help; the module docstring (the usage examples) kept as written.

    A flag whose default is no value ('', None, an empty collection) gets none appended: its help says what
    happens when it is not given, and `(default: )` would say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if default is None or (isinstance(default, (str, dict, list, tuple)) and not default):
            return action.help or ""
        return super()._get_help_string(action)


def add_config_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None,
                     defaults: dict[str, Any] | None = None, notes: dict[str, str] | None = None) -> None:
    """A --flag for each named Config field (all by default), with the field's help, choices and range check.

    `defaults` replaces a field's default for this parser (None: the caller resolves it later, say per
    device); `notes` adds to a field's help what the flag means for this entry point.
    """
    defaults, notes = defaults or {}, notes or {}
    by_name = {f.name: f for f in dataclasses.fields(Config)}
    unknown = set(names or ()) - by_name.keys() | (defaults.keys() | notes.keys()) - by_name.keys()
    assert not unknown, f"not Config fields: {sorted(unknown)}"
    for name in names or tuple(by_name):
        f, meta = by_name[name], by_name[name].metadata
        default = defaults.get(name, f.default)
        text = meta["help"] + (f"; {notes[name]}" if name in notes else "")
        if f.type in ("bool", bool):
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        kind = {"int": int, "float": float, "str": str}[f.type]
        parser.add_argument(flag(name), type=checked(kind, name, meta["check"]), default=default,
                            choices=meta["choices"], help=text)
        if meta["negation"] is not None:
            parser.add_argument("--no-" + flag(name)[2:], dest=name, action="store_const", const=meta["negation"],
                                default=default, help=f"the same as {flag(name)} {meta['negation']}")


def build_parser(description: str = __doc__) -> Parser:
    """One --flag per Config field, with the field's default, help, choices and range check."""
    parser = Parser(description=description, formatter_class=HelpFormatter)
    add_config_flags(parser)
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse Config flags into a Config; exits 2 with one error line on nonsense values."""
    return Config(**vars(build_parser().parse_args(argv)))


# Settings added after runs were already saved, with the value those older runs actually used: a resumed old
# run then continues exactly as it started.
SAVED_BEFORE_ADDED = {"dropout_sampler": "torch", "init": "trunc02", "pool": "cls", "augment": "off",
                      "tta": "off", "tta_shifts": 2, "epoch_views": "all"}
SWITCHES_BEFORE_CHECK = ("augment", "tta")  # on/off booleans before the symmetry check: on is auto, off is off


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config saved with a run, ignoring keys that later versions dropped."""
    known = {f.name for f in dataclasses.fields(Config)}
    values = {k: ({True: "auto", False: "off"}[v] if k in SWITCHES_BEFORE_CHECK and isinstance(v, bool) else v)
              for k, v in values.items() if k in known}
    return Config(**{**SAVED_BEFORE_ADDED, **values})
