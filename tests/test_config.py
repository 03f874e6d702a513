"""One block of defaults, one parser: every field is a flag, nonsense values are argparse errors."""
import dataclasses

import pytest

from config import Config, HelpFormatter, Parser, UserError, add_config_flags, config_from_dict, parse_config


def test_every_field_is_a_flag_with_help_and_the_same_default():
    parser = Parser()
    add_config_flags(parser)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(Config):
        assert f.name in actions, f.name
        assert actions[f.name].help, f"--{f.name} has no help text"
        assert actions[f.name].default == f.default
    assert parse_config([]) == Config()


def test_flags_parse_into_the_config():
    cfg = parse_config(["--loss", "smooth", "--optimizer", "adamw", "--channels", "density", "--no-compile"])
    assert (cfg.loss, cfg.optimizer, cfg.channels, cfg.compile) == ("smooth", "adamw", "density", False)
    assert parse_config(["--no-augment", "--tta", "flip0,shift"]).augment == "off"
    assert parse_config(["--no-whiten"]).whiten is False


@pytest.mark.parametrize("argv", [["--lr", "-1"], ["--smoothing", "1.0"], ["--smoothing", "-0.1"],
                                  ["--channels", "density,pressure"], ["--loss", "hinge"], ["--epochs", "0"],
                                  ["--batch-size", "abc"], ["--dropout", "1.5"]])
def test_nonsense_values_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_saved_config_round_trips_and_another_versions_is_one_clear_error():
    cfg = Config(loss="mse", epochs=3)
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg
    saved = dataclasses.asdict(cfg)
    del saved["pool"]
    for values in ({**dataclasses.asdict(cfg), "from_the_future": 1}, saved):
        with pytest.raises(UserError, match="written by another version.*train it again"):
            config_from_dict(values)


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


def test_help_shows_a_default_only_where_there_is_one_to_show(capsys):
    """An empty or unset default ('', None, {}) reads as `(default: )` or `(default: None)`: the help text says
    what happens instead, so nothing is appended; real defaults, 0 and False among them, still show."""
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
    assert run_transformer.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--patch-norm {batch,none}" in text and "--resume RUN_DIR" in text and "--predict RUN_DIR" in text
    assert "(default: )" not in text and "(default: None)" not in text
    assert "the run folder, NAME that of --input)" in text and "--input) (default" not in text
