"""Atomic writes and completion markers (vidprop/io/atomic.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from vidprop.io.atomic import (
    COMPLETE_MARKER,
    atomic_save,
    atomic_write,
    clear_complete,
    is_complete,
    HOST_TAG,
    mark_complete,
    read_complete_info,
    remove_stale_temporaries,
    temp_path,
)

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def umask():
    """Set the process umask for one test: ``umask(0o022)``; the old one is restored."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _modes(folder):
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=oct)
def test_written_files_follow_the_umask(tmp_path, umask, mask):
    # mkstemp-made temporaries used to leave every output at 0o600 whatever the umask.
    umask(mask)
    with atomic_write(tmp_path / "a.txt", "w") as fh:
        fh.write("x")
    atomic_save(tmp_path / "b.npy", lambda tmp: np.save(tmp, np.zeros(3)))
    with atomic_write(tmp_path / "c.bin", "xb") as fh:
        fh.write(b"x")
    mark_complete(tmp_path / "sub")
    expected_file, expected_dir = 0o666 & ~mask, 0o777 & ~mask
    modes = _modes(tmp_path)
    assert modes == {
        "a.txt": expected_file, "b.npy": expected_file, "c.bin": expected_file,
        "sub": expected_dir, f"sub/{COMPLETE_MARKER}": expected_file,
    }  # fmt: skip


def test_every_output_of_a_run_follows_the_umask(short_sequence, tmp_path, umask):
    # Masks, overlay frames, config.yaml, the completion marker and the feature cache.
    from vidprop.cli import main

    root = short_sequence("car-shadow", 3)
    umask(0o027)
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = [
        "propagate", str(root / "JPEGImages" / "480p" / "car-shadow"),
        "--mask", str(root / "Annotations" / "480p" / "car-shadow" / "00000.png"), "--out", str(out),
        "--config", str(REPO / "configs" / "davis2017_lab.yaml"), "--short-side", "64", "--cache-dir", str(cache),
        "--overlay", "--set", "runtime.overlay_format=png",
    ]  # fmt: skip
    assert main(argv) == 0
    modes = {**_modes(out), **{f"cache/{k}": v for k, v in _modes(cache).items()}}
    names = set(modes)
    assert {"00000.png", "00002.png", "config.yaml", COMPLETE_MARKER, "overlay/00001.png"} <= names
    assert any(name.startswith("cache/") and not (cache / name[6:]).is_dir() for name in names)
    for name, mode in modes.items():
        is_dir = (out / name).is_dir() if not name.startswith("cache/") else (cache / name[6:]).is_dir()
        assert mode == (0o750 if is_dir else 0o640), (name, oct(mode))


def test_temporaries_of_a_process_reported_dead_on_another_host_are_removed(tmp_path):
    # a Ray actor on another machine: its pid cannot be checked here, but Ray said it died
    (tmp_path / "00000.png").write_bytes(b"done")
    theirs = tmp_path / ".00001.abcdef-4242-0123456789ab.tmp.png"
    other = tmp_path / ".00002.abcdef-4343-0123456789ab.tmp.png"
    mine = temp_path(tmp_path / "00003.png")  # this live process's
    for path in (theirs, other):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == []  # unknown host, young files: kept
    assert remove_stale_temporaries(tmp_path, dead={("abcdef", 4242)}) == [theirs]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["00000.png", other.name, mine.name])
    assert remove_stale_temporaries(tmp_path, dead={(HOST_TAG, os.getpid())}) == [mine]  # named dead: removed
