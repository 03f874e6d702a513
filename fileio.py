"""Files: atomic writes (a kill leaves the old complete file or the new one), fingerprints, provenance."""

import contextlib
import errno
import hashlib
import io
import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from config import UserError

def _reason(path: Path, e: OSError) -> str:
    """Why `path` cannot be written: names a file standing where a folder should be."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    return f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))


def unreadable(path: str | Path, e: BaseException) -> UserError | None:
    """The one line for a file locked by another program or without read permission; None for other failures."""
    if "unable to lock file" in str(e) or (isinstance(e, OSError) and e.errno == errno.EAGAIN):
        return UserError(f"{path} is in use by another program (HDF5 could not lock it); close it there and rerun")
    if isinstance(e, PermissionError):
        return UserError(f"{path} cannot be read: permission denied; give yourself read access to it")
    return None


class WriteFailed(UserError):
    """A file could not be written (a full disk, a folder in the way); the old file, if any, is unchanged."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Serialise through `write(buffer)` in memory (a full disk is then our OSError, not a library's), write a
    temporary file beside `path`, fsync, and rename it over `path`."""
    path, buffer = Path(path), io.BytesIO()
    write(buffer)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"  # one per writer
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a file in the way of the folder, or `path` is a folder: nothing changed
        raise WriteFailed(f"cannot write {path}: {_reason(path, e)}; free some space or choose another path")
    finally:
        with contextlib.suppress(OSError):  # gone already after the rename
            tmp.unlink()
    return path


def rounded(obj: Any) -> Any:
    """`obj` with every float rounded to 6 significant digits: a float32 score has about 7, the rest is noise."""
    return json.loads(json.dumps(obj), parse_float=lambda text: float(f"{float(text):.6g}"))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def append_text(path: str | Path, text: str) -> Path:
    """`path` with `text` appended, rewritten atomically: a failed write leaves no torn record."""
    old = Path(path).read_bytes() if Path(path).is_file() else b""
    return atomic_write(path, lambda f: f.write(old + text.encode()))


def fingerprint(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of a file: a run records exactly the data it saw."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": digest}


def changed_files(recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """Paths of the recorded files (by key) that differ from, or are missing in, `current`."""
    return [(current.get(key) or recorded[key])["path"] for key in sorted(recorded)
            if (current.get(key) or {}).get("sha256") != recorded[key]["sha256"]]


def fresh_directory(parent: str | Path, name: str) -> Path:
    """Create parent/name, or parent/name-2, -3, ... : an existing run folder is never reused."""
    for i in itertools.count(1):
        candidate = Path(parent) / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except OSError as e:  # taken: try the next name; a file, or a link to nowhere, in the way: stop
            if not candidate.exists():
                raise UserError(f"cannot create output folder {candidate}: {_reason(candidate, e)}; "
                                f"choose another --out-dir")


def check_writable(path: str | Path) -> None:
    """Fail now, not after hours of training, when a file could not be written at `path` later."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; name a file, e.g. {path / 'predictions.txt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()  # gone when closed
    except OSError as e:
        raise UserError(f"cannot write {path}: {_reason(path, e)}; choose another path")


ROOT = Path(__file__).resolve().parent
NOT_CODE = (":(exclude)results", ":(exclude)docs", ":(exclude)*.md")  # changes there do not change the code


def git(*args: str) -> str | None:
    """The output of a git command in this repository, or None without git or a repository."""
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The commit, whether the code has uncommitted changes (None: unknown) and the command to type in the
    repository root, e.g. `python tools/compare.py --quick`."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).is_absolute() and Path(argv[0]).is_relative_to(ROOT):
        argv[0] = str(Path(argv[0]).relative_to(ROOT))  # python -m tools.compare puts the absolute path here
    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE) if commit else None
    return {"commit": commit or "unknown", "dirty": None if changes is None else bool(changes),
            "command": "python " + shlex.join(argv)}
