"""train.exit_code: every entry point turns its errors into one line on stderr and the documented exit code."""

import argparse
import signal

import pytest

from train import exit_code
from config import UserError
from train import Diverged, Interrupted


def raises(error: BaseException):
    def body():
        raise error
    return body


@pytest.mark.parametrize("error, code, line", [
    (UserError("the file is broken; fix it"), 2, "error: the file is broken; fix it"),
    (Diverged("training diverged at epoch 3"), 3, "error: training diverged at epoch 3"),
    (Interrupted("SIGTERM after epoch 1", signal.SIGTERM), 143, "interrupted: SIGTERM after epoch 1; do this next"),
    (KeyboardInterrupt(), 130, "interrupted: SIGINT; do this next")])
def test_errors_become_one_line_and_an_exit_code(error, code, line, capsys):
    assert exit_code(raises(error), lambda e: "do this next") == code
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""


def test_success_and_argparse_exits_pass_through_as_codes(capsys):
    assert exit_code(lambda: None) == 0
    assert exit_code(lambda: 4) == 4
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int)
    assert exit_code(lambda: parser.parse_args(["--n", "x"])) == 2
    assert exit_code(lambda: parser.parse_args(["--help"])) == 0
    assert "--n" in capsys.readouterr().out


def test_an_interruption_without_a_hint_is_the_message_alone(capsys):
    assert exit_code(raises(Interrupted("SIGINT while reading data"))) == 130
    assert capsys.readouterr().err == "interrupted: SIGINT while reading data\n"


def test_other_exceptions_are_bugs_and_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        exit_code(lambda: 1 / 0)
