"""Writing files so that a kill at any moment leaves either the old complete file or the new one."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from config import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _reason(path: Path, e: OSError) -> str:
    """Why `path` cannot be written, in words: a file standing where a folder should be is named."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    return f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))


def unreadable(path: str | Path, e: BaseException) -> UserError | None:
    """The one line for a file that could not be opened for reading because of something around it, not in it:
    a lock that another program holds (HDF5 reports it), or no read permission; None for any other failure,
    which the caller words (a damaged file)."""
    if "unable to lock file" in str(e) or (isinstance(e, OSError) and e.errno == errno.EAGAIN):
        return UserError(f"{path} is in use by another program (HDF5 could not lock it: a program such as a "
                         f"notebook holds it open for writing); close it there, then run again")
    if isinstance(e, PermissionError):
        return UserError(f"{path} cannot be read: permission denied; give yourself read access to it")
    return None


class WriteFailed(UserError):
    """A file could not be written (a full disk, a folder in the way); the old file, if any, is unchanged."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write through `write(buffer)` into memory, then into a temporary file beside `path`, fsync, and rename it
    over `path`.

    Serialising into memory first keeps the disk out of the libraries' hands: torch.save, h5py and PIL turn a
    failed write (a full disk) into their own RuntimeError or SystemError, which cannot be told from a bug; a
    failed write of our own is an OSError, and becomes one WriteFailed line.
    """
    path = Path(path)
    buffer = io.BytesIO()
    write(buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteFailed(f"cannot write {path}: {_reason(path, e)}; choose a writable folder (e.g. --out-dir)")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give results the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, or `path` is a folder: the old file (if any) is left as it was
        Path(tmp).unlink(missing_ok=True)
        raise WriteFailed(f"cannot write {path}: {_reason(path, e)}; free some space or choose another path")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


SIGNIFICANT_DIGITS = 6  # of every score written, JSON or CSV: a float32 score has about 7, the rest is noise


def rounded(obj: Any) -> Any:
    """`obj` (dicts, lists, numbers, strings) with every float rounded to SIGNIFICANT_DIGITS significant digits,
    so that a float32 accuracy is written as 0.986, not 0.9860000014305115. For scores only: settings and
    timestamps are written as they are."""
    if isinstance(obj, float):
        return float(f"{obj:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(obj, dict):
        return {key: rounded(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(value) for value in obj]
    return obj


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def append_text(path: str | Path, text: str) -> Path:
    """Append `text` to `path` and fsync, so that a record is on disk before the next is written. A failed write
    (a full disk) is one WriteFailed line, and the part of `text` that was written is cut off again: no torn
    record is left for the next one to be glued to."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab", buffering=0) as f:
            start = f.seek(0, os.SEEK_END)
            try:
                rest = memoryview(text.encode())
                while rest:
                    rest = rest[f.write(rest):]
                os.fsync(f.fileno())
            except OSError:
                f.truncate(start)
                raise
    except OSError as e:
        raise WriteFailed(f"cannot write {path}: {_reason(path, e)}; free some space or choose another path")
    return path


def fingerprint(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of a file: recorded in config.json so a run names exactly the data it saw."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def changed_files(recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """Paths of the files, matched by key, whose size or SHA-256 differ between two sets of fingerprint()s, or
    that the recorded set has and the current one lacks (a file the run did not record, such as an answer key
    added later, is not a change of the run's data)."""
    def same(a: dict | None, b: dict | None) -> bool:
        return a is not None and b is not None and (a["bytes"], a["sha256"]) == (b["bytes"], b["sha256"])
    return [(current.get(key) or recorded[key])["path"] for key in sorted(recorded)
            if not same(recorded.get(key), current.get(key))]


def fresh_directory(parent: str | Path, name: str) -> Path:
    """Create parent/name, or parent/name-2, -3, ... : an existing run folder is never reused."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {parent}: {_reason(parent / 'x', e)}; "
                        f"choose another --out-dir")
    for i in range(1, 10_000):
        candidate = parent / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot create run folder {candidate}: {_reason(candidate, e)}; "
                            f"choose another --out-dir")
    raise UserError(f"too many runs named {name} in {parent}; choose another --out-dir")


def check_writable(path: str | Path) -> Path:
    """Fail now, not after hours of training, when a file could not be written at `path` later."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; name a file, e.g. {path / 'predictions.txt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"cannot write {path}: {_reason(path, e)}; choose another path")
    return path
