"""One block of defaults, one parser: every field is a flag, nonsense values are argparse errors."""
import dataclasses

import pytest

from config import Config, build_parser, config_from_dict, parse_config


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
    assert (defaults.optimizer, defaults.momentum, defaults.patch_norm, defaults.emb_dropout) == ("sgd", 0.9, "batch", 0.2)


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
        ("torch", True, "cls", True, True)
    assert parse_config(["--no-whiten"]).whiten is False
    saved = dataclasses.asdict(Config())
    for added in ("init", "pool", "augment", "tta", "tta_shifts"):
        del saved[added]  # as written by runs before these options existed
    old = config_from_dict({**saved, "whiten": False})
    assert (old.init, old.pool, old.whiten, old.augment, old.tta) == ("trunc02", "cls", False, False, False)
