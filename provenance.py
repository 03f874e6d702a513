"""Which code made a result: the git commit, whether the code had uncommitted changes, and the command line.

Recorded in every run folder's config.json, in bench output and in every row of the grid's results.jsonl, so
that a stored number can be traced to the code and the command that produced it.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
# Results and docs change while a grid or a benchmark runs; they do not change what the code computes.
NOT_CODE = (":(exclude)results", ":(exclude)docs", ":(exclude)*.md")


def git(*args: str) -> str | None:
    """The output of a git command in this repository, or None where there is no git or no repository."""
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed in the repository root: `python -m tools.compare --quick`, `python run_transformer.py`."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path()
    if script.is_absolute() and script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
        argv[0] = str(script)
        if (ROOT / script.parent / "__init__.py").exists():  # a module of a package runs as python -m
            argv[:1] = ["-m", ".".join(script.with_suffix("").parts)]
    return "python " + shlex.join(argv)


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """{"commit": sha or "unknown", "dirty": True/False (None when unknown), "command": the command line}."""
    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE) if commit else None
    return {"commit": commit or "unknown", "dirty": None if changes is None else bool(changes),
            "command": command_line(argv)}


def provenance_line(record: dict[str, Any]) -> str:
    """One line for printed output: `code a1b2c3d4e5f6 (uncommitted changes), command: python ...`."""
    state = {True: " (uncommitted changes)", False: "", None: " (unknown whether changed)"}[record["dirty"]]
    return f"code {record['commit'][:12]}{state}, command: {record['command']}"
