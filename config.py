"""Every setting and its default (Config), with a role tag each that says what a change of it means (for --resume
and compare.py's run identities), and the command-line flags built from it."""

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

CHANNEL_NAMES = ("density", "recording_date")

FIXED = "fixed"  # the experiment (network, optimizer, data, loss, seed, precision): a resumed run keeps it
CONTROL = "control"  # part of a run's identity, but a resumed run may change it
EXECUTION = "execution"  # how and where the same experiment is computed and written: a resumed run may change it


class UserError(Exception):
    """A problem with the user's input or environment: printed as one line, exit code 2, no traceback."""


def _opt(role: str, default: Any, help: str, choices: tuple | None = None, check: tuple | None = None,
         negation: str | None = None) -> Any:
    """A Config field; `check`: (test of the value, what it must be); `negation`: the value that a --no-FLAG form
    sets (for a str field)."""
    return field(default=default, metadata=dict(role=role, help=help, choices=choices, check=check, negation=negation))


positive = (lambda x: x > 0, "must be > 0")
non_negative = (lambda x: x >= 0, "must be >= 0")
probability = (lambda x: 0 <= x < 1, "must be in [0, 1)")


def channel_spec(text: str) -> bool:
    names = [n.strip() for n in text.split(",")]
    return text == "auto" or (all(n in CHANNEL_NAMES for n in names) and len(set(names)) == len(names))


@dataclass
class Config:
    data_dir: str = _opt(FIXED, "data", "folder of train.hdf5, valid.hdf5, test_no_labels.hdf5; without "
                         "train.hdf5 the synthetic benchmark is generated in DATA_DIR/synthetic")
    channels: str = _opt(FIXED, "auto", "input channels, comma separated from density, recording_date; auto "
                         "drops those the shortcut guard flags", check=(channel_spec, "'auto' or distinct names "
                         "from density, recording_date separated by commas"))
    whiten: bool = _opt(FIXED, True, "feed log-density whitened by the training set's mean power spectrum")
    augment: str = _opt(FIXED, "auto", "train on random symmetries: auto (those the training data show), off, "
                        "or a list such as flip0,flip1,transpose=swap,shift", negation="off")
    tta: str = _opt(FIXED, "auto", "predict the mean logit over symmetric views: auto, off or a list as for "
                    "--augment", negation="off")
    tta_shifts: int = _opt(FIXED, 4, "views' periodic shifts per axis within a patch", check=positive)
    model: str = _opt(FIXED, "vit", "the BatchNorm Vision Transformer or the reference CNN", choices=("vit", "cnn"))
    patch_size: int = _opt(FIXED, 4, "side of the square patches (must divide the image size)", check=positive)
    emb_dim: int = _opt(FIXED, 32, "token width of the ViT", check=positive)
    depth: int = _opt(FIXED, 4, "number of transformer blocks", check=positive)
    heads: int = _opt(FIXED, 2, "attention heads (must divide --emb-dim)", check=positive)
    mlp_dim: int = _opt(FIXED, 64, "hidden width of each block's MLP", check=positive)
    dropout: float = _opt(FIXED, 0.0, "dropout of attention weights and MLPs in the blocks", check=probability)
    emb_dropout: float = _opt(FIXED, 0.2, "dropout after the patch embedding", check=probability)
    patch_norm: str = _opt(FIXED, "batch", "normalisation after the patch convolution", choices=("batch", "none"))
    block_norm: str = _opt(FIXED, "layer", "normalisation in the transformer blocks", choices=("layer", "batch"))
    init: str = _opt(FIXED, "torch", "init of the ViT's Linear weights: fan-in uniform, Xavier or N(0, 0.02)",
                     choices=("torch", "xavier", "trunc02"))
    pool: str = _opt(FIXED, "mean", "the ViT head reads the mean patch token or the CLS token", choices=("cls", "mean"))
    optimizer: str = _opt(FIXED, "sgd", "SGD with momentum and LinearLR 1 -> 0.1, or AdamW with warmup and "
                          "cosine decay", choices=("sgd", "adamw"))
    lr: float = _opt(FIXED, 0.05, "peak learning rate", check=positive)
    momentum: float = _opt(FIXED, 0.9, "SGD momentum", check=probability)
    weight_decay: float = _opt(FIXED, 5e-4, "weight decay (L2 for SGD, decoupled for AdamW)", check=non_negative)
    warmup_epochs: float = _opt(FIXED, 2.0, "AdamW: epochs of linear warmup", check=non_negative)
    loss: str = _opt(FIXED, "bce", "BCE with logits, MSE on sigmoid(logits), or BCE on label-smoothed targets",
                     choices=("bce", "mse", "smooth"))
    smoothing: float = _opt(FIXED, 0.1, "--loss smooth: targets y*(1-eps) + 0.5*eps", check=probability)
    epochs: int = _opt(FIXED, 6, "maximum number of epochs (LinearLR spans all of them)", check=positive)
    batch_size: int = _opt(FIXED, 128, "training batch size", check=positive)
    patience: int = _opt(CONTROL, 6, "stop after this many epochs without a better validation loss", check=positive)
    seed: int = _opt(FIXED, 0, "seed for initialisation, shuffling and dropout")
    device: str = _opt(EXECUTION, "auto", "auto picks cuda when available", choices=("auto", "cpu", "cuda"))
    precision: str = _opt(FIXED, "auto", "auto: bf16 autocast where native", choices=("auto", "fp32", "bf16"))
    compile: bool = _opt(EXECUTION, False, "torch.compile the training steps")
    sync_bn: bool = _opt(CONTROL, False, "under torchrun: synchronise BatchNorm statistics across processes")
    out_dir: str = _opt(EXECUTION, "runs", "each run gets a fresh sub-folder here")
    predictions: str = _opt(EXECUTION, "outputs/predictions.txt", "copy of the test predictions (one 0/1 per line)")


def fields_with(*roles: str) -> tuple[str, ...]:
    """Names of the Config fields with any of these roles, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata["role"] in roles)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def checked(kind: type, name: str, check: tuple | None = None) -> Callable[[str], Any]:
    """An argparse type: `kind(text)`, refused when check = (test, what the value must be) fails."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}")
        if check is not None and not check[0](value):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range for {flag(name)} ({check[1]})")
        return value
    return parse


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit code 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see --help\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help, except an empty one (0 and False are shown); the description as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help or "" if action.default in (None, "", {}, [], ()) else super()._get_help_string(action)


def add_config_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None,
                     defaults: dict[str, Any] | None = None, notes: dict[str, str] | None = None) -> None:
    """A --flag for each named Config field (default: all), with these `defaults` and `notes` added to the help."""
    defaults, notes = defaults or {}, notes or {}
    by_name = {f.name: f for f in dataclasses.fields(Config)}
    unknown = (set(names or ()) | defaults.keys() | notes.keys()) - by_name.keys()
    assert not unknown, f"not Config fields: {sorted(unknown)}"
    for name in names or tuple(by_name):
        meta, default = by_name[name].metadata, defaults.get(name, by_name[name].default)
        text = meta["help"] + (f"; {notes[name]}" if name in notes else "")
        if by_name[name].type is bool:
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        parser.add_argument(flag(name), type=checked(by_name[name].type, name, meta["check"]), default=default,
                            choices=meta["choices"], help=text)
        if meta["negation"] is not None:
            parser.add_argument("--no-" + flag(name)[2:], dest=name, action="store_const", const=meta["negation"],
                                default=default, help=f"the same as {flag(name)} {meta['negation']}")


def parse_config(argv: list[str] | None = None) -> Config:
    parser = Parser(formatter_class=HelpFormatter)
    add_config_flags(parser)
    return Config(**vars(parser.parse_args(argv)))


def config_from_dict(values: dict[str, Any]) -> Config:
    """The Config saved with a run; another version's settings are a UserError."""
    fields = {f.name for f in dataclasses.fields(Config)}
    if values.keys() != fields:
        raise UserError(f"the run was written by another version (settings {sorted(values.keys() ^ fields)} "
                        f"differ); train it again")
    return Config(**values)
