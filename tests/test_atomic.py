"""Atomic writes and completion markers (vidprop/io/atomic.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidprop.io.atomic import (
    COMPLETE_MARKER,
    atomic_save,
    atomic_write,
    clear_complete,
    is_complete,
    mark_complete,
    read_complete_info,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_creates_file_and_parent(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target, "w") as fh:
        fh.write("héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    assert _leftovers(target.parent) == ["out.txt"]


def test_atomic_write_error_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as fh:
            fh.write(b"x" * 10_000)
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_atomic_write_error_keeps_previous_content(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as fh:
            fh.write(b"new but unfinished")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["out.bin"]


def test_atomic_write_replaces_existing(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_write_exclusive_mode(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target, "xb") as fh:
        fh.write(b"first")
    with pytest.raises(FileExistsError):
        with atomic_write(target, "xb") as fh:
            fh.write(b"second")
    assert target.read_bytes() == b"first"
    assert _leftovers(tmp_path) == ["out.bin"]


def test_atomic_write_rejects_read_mode(tmp_path):
    with pytest.raises(ValueError, match="write mode"):
        with atomic_write(tmp_path / "x", "rb"):
            pass


def test_atomic_save_keeps_suffix_for_format_detection(tmp_path):
    target = tmp_path / "arr.npy"
    seen = []

    def writer(tmp):
        seen.append(tmp)
        np.save(tmp, np.arange(5))  # np.save appends ".npy" unless the name already ends with it

    atomic_save(target, writer)
    assert seen[0].suffix == ".npy" and seen[0].parent == tmp_path
    np.testing.assert_array_equal(np.load(target), np.arange(5))
    assert _leftovers(tmp_path) == ["arr.npy"]


def test_atomic_save_error_leaves_nothing(tmp_path):
    target = tmp_path / "img.png"

    def writer(tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(target, writer)
    assert _leftovers(tmp_path) == []


def test_atomic_save_writer_that_writes_nothing(tmp_path):
    target = tmp_path / "img.png"

    def writer(tmp):
        tmp.unlink()

    with pytest.raises(FileNotFoundError, match="did not create"):
        atomic_save(target, writer)
    assert not target.exists()


def test_completion_marker_round_trip(tmp_path):
    folder = tmp_path / "video"
    folder.mkdir()
    assert not is_complete(folder)
    assert read_complete_info(folder) is None
    marker = mark_complete(folder, {"frames": 40, "name": "car-shadow"})
    assert marker.name == COMPLETE_MARKER
    assert is_complete(folder)
    assert read_complete_info(folder) == {"frames": 40, "name": "car-shadow"}
    assert json.loads(marker.read_text())["frames"] == 40
    clear_complete(folder)
    assert not is_complete(folder)
    clear_complete(folder)  # no error when already absent


def test_corrupt_marker_reads_as_incomplete_info(tmp_path):
    (tmp_path / COMPLETE_MARKER).write_text("{not json")
    assert read_complete_info(tmp_path) is None
