"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """Flush a written file (or a directory's entries) to disk, so a rename that follows cannot
    outlive its content after a power loss or crash of the machine."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def printable_path(path: str) -> str:
    """A path as UTF-8 text (Parquet strings, CSV, messages) can hold it: bytes of a file name
    that are not UTF-8 (kept by Python as surrogate escapes) become ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def one_line(path: str) -> str:
    """A path as one line of text shows it (messages, CSV cells): :func:`printable_path`, and
    control characters (newlines, carriage returns, NUL) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in printable_path(path))


def short_name(name: str, limit: int = 200) -> str:
    """``name`` cut to at most ``limit`` bytes at a character boundary, for a temporary name built
    from it that must fit where ``name`` itself just fits (file names hold 255 bytes)."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    return raw[:limit].decode("utf-8", "ignore") or "tmp"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{short_name(path.name)}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``directory``; on success it replaces
    ``directory`` (and everything in it) by renames, with its files flushed to disk and given
    the usual permissions. A symbolic link is followed: its target is replaced. On an error or
    an interrupt the temporary directory is removed and ``directory`` is as it was."""
    directory = Path(os.path.realpath(directory))
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{short_name(directory.name)}-", dir=directory.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        for written in [*sorted(tmp.rglob("*")), tmp]:  # content on disk before the rename names it
            if written.is_file():
                os.chmod(written, 0o666 & ~_umask())  # some writers (safetensors) make 0600 files
            fsync_path(written)
        _swap_in(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, directory: Path) -> None:
    """Rename ``new`` to ``directory``; an existing ``directory`` is moved aside first, put back
    if the second rename fails, and deleted once it succeeded."""
    if not directory.exists():
        os.rename(new, directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f".old-{short_name(directory.name)}-", dir=directory.parent))
    os.rmdir(old)  # only its unique name is wanted
    os.rename(directory, old)
    try:
        os.rename(new, directory)
    except BaseException:
        os.rename(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _finite(data: Any) -> Any:
    """``data`` with NaN and infinite floats as None: JSON has no NaN, and strict parsers refuse it."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def json_text(data: Any, indent: int | None = None) -> str:
    """Standard JSON (undefined numbers as null)."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(data, indent=2) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
