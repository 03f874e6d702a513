"""provenance.py: every stored result names the code (commit, uncommitted changes) and the command."""
from __future__ import annotations

import re
import subprocess

import fileio as provenance
from conftest import ROOT


def test_a_record_names_this_checkout_and_whether_its_code_changed():
    record = provenance.provenance(["run_transformer.py", "--loss", "smooth"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:  # a copy without git: say so rather than guess
        assert record["commit"] == "unknown" and record["dirty"] is None
        return
    assert record["commit"] == head.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    assert isinstance(record["dirty"], bool)
    assert record["command"] == "python run_transformer.py --loss smooth"


def test_without_git_the_commit_is_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # not a repository
    record = provenance.provenance(["x.py"])
    assert record["commit"] == "unknown" and record["dirty"] is None
    assert "unknown whether changed" in provenance.provenance_line(record)


def test_a_tool_run_as_a_module_is_recorded_as_typed():
    """python -m tools.compare puts the file's absolute path in sys.argv[0]; the record says -m tools.compare,
    the command to type in the repository root, with arguments quoted where the shell needs it."""
    argv = [str(ROOT / "tools" / "compare.py"), "--only", "before,after", "--out-dir", "my results"]
    assert provenance.command_line(argv) == "python -m tools.compare --only before,after --out-dir 'my results'"
    assert provenance.command_line([str(ROOT / "run_transformer.py")]) == "python run_transformer.py"
