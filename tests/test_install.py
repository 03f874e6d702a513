"""A new user's first steps, as the README gives them: a virtual environment, which git leaves alone."""
import shutil
import subprocess

import pytest

from conftest import ROOT


def test_the_readme_installs_into_a_virtual_environment_that_git_ignores():
    install = (ROOT / "README.md").read_text().split("## Install, run, test", 1)[1].split("##", 1)[0]
    commands = [line.strip() for line in install.splitlines() if line.startswith("    ")]
    assert commands[0].startswith("python -m venv .venv") and "activate" in commands[0], commands
    assert any(c.startswith("pip install -r requirements.txt") for c in commands[1:]), commands
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".venv/bin/python"], cwd=ROOT)
    assert ignored.returncode == 0, ".venv/ would show in git status"
