"""A tool starts however it is called: `python PATH/tools/X.py` from any folder, not only `python -m tools.X` from
the root (every tool puts the repository root on sys.path the same way)."""
import os
import subprocess
import sys

from conftest import ROOT


def test_a_tool_runs_as_a_file_from_any_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "other_physics.py"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: "), proc.stdout[:200]
