"""One block of defaults, one parser: every field is a flag, nonsense values are argparse errors."""
import dataclasses

import pytest

from config import (CONTROL, EXECUTION, MODEL, OPTIMIZER, OUTPUT, ROLES, SAMPLING, Config, Parser, add_config_flags,
                    build_parser, config_from_dict, fields_with, parse_config)


def test_every_field_is_a_flag_with_help_and_the_same_default():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(Config):
        assert f.name in actions, f.name
        assert actions[f.name].help, f"--{f.name} has no help text"
        assert actions[f.name].default == f.default
    assert parse_config([]) == Config()


def test_request_defaults_and_flags():
    cfg = parse_config(["--loss", "smooth", "--optimizer", "adamw", "--channels", "density", "--no-compile"])
    assert (cfg.loss, cfg.optimizer, cfg.channels) == ("smooth", "adamw", "density")
    defaults = Config()
    assert (defaults.optimizer, defaults.momentum, defaults.patch_norm, defaults.emb_dropout) == \
        ("sgd", 0.9, "batch", 0.2)


@pytest.mark.parametrize("argv", [["--lr", "-1"], ["--smoothing", "1.0"], ["--smoothing", "-0.1"],
                                  ["--channels", "density,pressure"], ["--loss", "hinge"], ["--epochs", "0"],
                                  ["--batch-size", "abc"], ["--dropout", "1.5"]])
def test_nonsense_values_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_saved_config_round_trips_and_ignores_unknown_keys():
    cfg = Config(loss="mse", epochs=3)
    assert config_from_dict({**dataclasses.asdict(cfg), "from_the_future": 1}) == cfg


def test_a_config_saved_before_the_dropout_sampler_existed_resumes_with_torchs_sampler():
    saved = dataclasses.asdict(Config())
    del saved["dropout_sampler"]  # as written by runs before --dropout-sampler
    assert config_from_dict(saved).dropout_sampler == "torch"
    assert config_from_dict(dataclasses.asdict(Config())).dropout_sampler == "fast"


def test_defaults_train_the_requested_recipe_and_old_runs_keep_what_they_used():
    defaults = Config()
    assert (defaults.init, defaults.whiten, defaults.pool, defaults.augment, defaults.tta) == \
        ("torch", True, "mean", "auto", "auto")
    assert parse_config(["--no-augment", "--tta", "flip0,shift"]).augment == "off"
    assert parse_config(["--no-whiten"]).whiten is False
    saved = dataclasses.asdict(Config())
    for added in ("init", "pool", "augment", "tta", "tta_shifts"):
        del saved[added]  # as written by runs before these options existed
    old = config_from_dict({**saved, "whiten": False})
    assert (old.init, old.pool, old.whiten, old.augment, old.tta) == ("trunc02", "cls", False, "off", "off")
    switched = config_from_dict({**saved, "augment": True, "tta": False})  # the on/off switches before the check
    assert (switched.augment, switched.tta) == ("auto", "off")


def test_every_field_has_one_role_and_the_derived_lists_split_the_fields():
    roles = {f.name: f.metadata["role"] for f in dataclasses.fields(Config)}
    assert set(roles.values()) <= set(ROLES)
    assert sorted(sum((fields_with(r) for r in ROLES), ())) == sorted(roles)
    assert fields_with(MODEL) == ("whiten", "model", "patch_size", "emb_dim", "depth", "heads", "mlp_dim",
                                  "patch_norm", "block_norm", "pool")
    assert fields_with(OPTIMIZER) == ("optimizer", "lr", "momentum", "weight_decay", "warmup_epochs", "epochs",
                                      "batch_size")
    assert fields_with(CONTROL, EXECUTION, OUTPUT) == ("patience", "device", "compile", "sync_bn", "out_dir",
                                                       "predictions")
    assert fields_with(SAMPLING) == ("dropout_sampler",)


def test_add_config_flags_shares_checks_and_lets_an_entry_point_change_defaults(capsys):
    parser = Parser()
    add_config_flags(parser, ("emb_dim", "compile"), defaults={"emb_dim": 64}, notes={"emb_dim": "bench's ViT"})
    assert vars(parser.parse_args([])) == {"emb_dim": 64, "compile": False}
    assert vars(parser.parse_args(["--emb-dim", "8", "--compile"])) == {"emb_dim": 8, "compile": True}
    help_text = {a.dest: a.help for a in parser._actions}
    assert help_text["emb_dim"].endswith("; bench's ViT")
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--emb-dim", "-3"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: argument --emb-dim: '-3' is out of range for --emb-dim (must be > " \
                                      "0); see --help\n"
    with pytest.raises(AssertionError, match="not Config fields"):
        add_config_flags(Parser(), ("emb_dims",))


def test_help_shows_a_default_only_where_there_is_one_to_show():
    """An empty or unset default ('', None, {}) reads as `(default: )` or `(default: None)`: the help text says
    what happens instead, so nothing is appended; real defaults, 0 and False among them, still show."""
    from config import HelpFormatter
    parser = Parser(formatter_class=HelpFormatter)
    for name, default in (("empty", ""), ("unset", None), ("no-map", {}), ("zero", 0), ("rate", 0.05)):
        parser.add_argument(f"--{name}", default=default, help=f"the {name} flag")
    parser.add_argument("--flag", action="store_true", help="a switch")
    text = " ".join(parser.format_help().split())
    for name in ("empty", "unset", "no-map"):
        assert f"the {name} flag (default" not in text, text
    assert "the zero flag (default: 0)" in text and "the rate flag (default: 0.05)" in text
    assert "a switch (default: False)" in text
    import run_transformer
    text = " ".join(run_transformer.build_command_parser().format_help().split())
    assert "(default: )" not in text and "(default: None)" not in text
    assert "the run folder, NAME that of --input)" in text and "--input) (default" not in text
