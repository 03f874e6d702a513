"""fileio.py: what every written file shares (atomic writes are tested with the errors, in test_errors.py) and
the provenance every stored result carries: the code (commit, uncommitted changes) and the command."""

import math
import re
import subprocess

import numpy as np

import fileio
from conftest import ROOT


def test_scores_are_written_with_the_digits_they_have():
    noisy = float(np.float32(0.986))  # 0.9860000014305115: a float32 accuracy as a float
    assert fileio.rounded({"test_acc": noisy, "runs": [0.12345678912, 3], "n": 1000, "ok": True, "name": "x"}) == \
        {"test_acc": 0.986, "runs": [0.123457, 3], "n": 1000, "ok": True, "name": "x"}
    assert fileio.rounded(1.5e-9 + 1e-17) == 1.5e-9 and math.isnan(fileio.rounded(math.nan))
    assert fileio.rounded(math.inf) == math.inf


def test_a_record_names_this_checkout_and_whether_its_code_changed():
    record = fileio.provenance(["run_transformer.py", "--loss", "smooth"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:  # a copy without git: say so rather than guess
        assert record["commit"] == "unknown" and record["dirty"] is None
        return
    assert record["commit"] == head.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    assert isinstance(record["dirty"], bool)
    assert record["command"] == "python run_transformer.py --loss smooth"


def test_without_git_the_commit_is_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(fileio, "ROOT", tmp_path)  # not a repository
    record = fileio.provenance(["x.py"])
    assert record["commit"] == "unknown" and record["dirty"] is None


def test_a_tool_run_as_a_module_is_recorded_as_a_command_for_the_repository_root():
    """python -m tools.compare puts the file's absolute path in sys.argv[0]; the record names it from the
    repository root, with arguments quoted where the shell needs it."""
    argv = [str(ROOT / "tools" / "compare.py"), "--only", "before,after", "--out-dir", "my results"]
    assert fileio.provenance(argv)["command"] == "python tools/compare.py --only before,after --out-dir 'my results'"
    assert fileio.provenance([str(ROOT / "run_transformer.py")])["command"] == "python run_transformer.py"
