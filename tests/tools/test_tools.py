"""A tool starts however it is called: `python PATH/tools/X.py` from any folder and `python -m X` inside tools/,
not only `python -m tools.X` from the root (every tool puts the repository root on sys.path the same way)."""
import os
import subprocess
import sys

from conftest import ROOT


def test_a_tool_runs_as_a_file_from_any_folder_and_as_a_module_inside_tools(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for argv, cwd in (([str(ROOT / "tools" / "compare.py")], tmp_path), (["-m", "other_physics"], ROOT / "tools")):
        proc = subprocess.run([sys.executable, *argv, "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and proc.stderr == "", (argv, cwd, proc.stderr)
        assert proc.stdout.startswith("usage: "), (argv, cwd, proc.stdout[:200])
