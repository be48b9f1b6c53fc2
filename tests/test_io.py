"""Atomic directory replacement: all of the new content or none, links followed, failures undone."""

import os

import pytest

from kolmotok import io as io_mod
from kolmotok.io import atomic_directory


def _write(directory, name, text):
    with atomic_directory(directory) as tmp:
        (tmp / name).write_text(text)


def test_replaces_a_directory_and_follows_a_link(tmp_path):
    _write(tmp_path / "d", "a.txt", "one")
    _write(tmp_path / "d", "b.txt", "two")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["b.txt"], "the old content is gone"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    _write(tmp_path / "link", "c.txt", "three")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "c.txt").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "link", "real"], "no temporary folder left"


def test_a_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    _write(tmp_path / "d", "a.txt", "old")
    real_rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(16, "Device or resource busy")
        return real_rename(src, dst)

    monkeypatch.setattr(io_mod.os, "rename", second_rename_fails)
    with pytest.raises(OSError):
        _write(tmp_path / "d", "a.txt", "new")
    assert (tmp_path / "d" / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_an_error_inside_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "half.txt").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_json_has_no_nan(tmp_path):
    import json
    import math

    from kolmotok.io import write_json

    write_json(tmp_path / "r.json", {"rho": math.nan, "rows": [1.5, math.inf], "n": 3})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and json.loads(text) == {"rho": None, "rows": [1.5, None], "n": 3}
