"""Every tool starts however it is called: `python PATH/tools/X.py` from any folder and `python -m X` inside
tools/, not only `python -m tools.X` from the root."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

TOOLS = ("bench", "compare", "other_physics", "real_check")


def help_text(argv: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *argv, "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_runs_as_a_file_from_any_folder_and_as_a_module_inside_tools(tool, tmp_path):
    for argv, cwd in (([str(ROOT / "tools" / f"{tool}.py")], tmp_path), (["-m", tool], ROOT / "tools")):
        proc = help_text(argv, cwd)
        assert proc.returncode == 0 and proc.stderr == "", (argv, cwd, proc.stderr)
        assert proc.stdout.startswith("usage: "), (argv, cwd, proc.stdout[:200])
