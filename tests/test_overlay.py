"""The overlay writer: temporary names per process, stale temporaries, odd frame sizes (issue 10, 11 and 16)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest

from vidprop.io.atomic import STALE_TEMP_AGE_S, remove_stale_temporaries, temp_path
from vidprop.overlay import OverlayWriter


def _frames(n=3, size=(6, 8)):
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        ids = np.zeros(size, np.uint8)
        ids[: size[0] // 2] = 1
        yield image, ids, f"{i:05d}"


def _read_mp4(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_two_overlays_into_one_folder_do_not_share_a_temporary(tmp_path):
    # Item 11: both runs used the fixed name .overlay.tmp.mp4, so the second failed.
    first, second = OverlayWriter(tmp_path), OverlayWriter(tmp_path)
    for image, ids, name in _frames():
        first.add(image, ids, name)
        second.add(image, ids, name)
    assert first._tmp != second._tmp
    assert len(_temporaries(tmp_path)) == 2
    first.close()
    second.close()
    assert _temporaries(tmp_path) == []
    assert len(_read_mp4(tmp_path / "overlay.mp4")) == 3


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from vidprop.overlay import OverlayWriter
    writer = OverlayWriter(sys.argv[1])
    writer.add(np.zeros((6, 8, 3), np.uint8), np.ones((6, 8), np.uint8), "00000")
    print(writer._tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)

LIVE_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vidprop.io.atomic import temp_path
    print(temp_path(Path(sys.argv[1]) / "overlay.mp4"), flush=True)
    time.sleep(120)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and pid checks are POSIX")
def test_temporaries_of_a_killed_run_are_removed_by_the_next_run_and_live_ones_kept(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9
    stale = tmp_path / os.path.basename(killed.stdout.strip())
    assert stale.is_file()
    live = subprocess.Popen([sys.executable, "-c", LIVE_RUN, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        live_tmp = tmp_path / os.path.basename(live.stdout.readline().strip())
        foreign = tmp_path / ".overlay.tmp.mp4"  # not a name vidprop makes: never touched
        foreign.write_bytes(b"x")
        writer = OverlayWriter(tmp_path)
        for image, ids, name in _frames():
            writer.add(image, ids, name)
        writer.close()
        assert not stale.exists()
        assert live_tmp.is_file()
        assert foreign.is_file()
    finally:
        live.kill()
        live.wait()
    # once the live run is gone, its temporary is stale too
    assert remove_stale_temporaries(tmp_path) == [live_tmp]


def test_temporaries_untouched_for_a_day_are_stale_whoever_made_them(tmp_path):
    # A temporary of this (live) process counts as in use, unless it is a day old (another host's run).
    mine = temp_path(tmp_path / "overlay.mp4")
    assert remove_stale_temporaries(tmp_path) == []
    old = time.time() - STALE_TEMP_AGE_S - 60
    os.utime(mine, (old, old))
    assert remove_stale_temporaries(tmp_path) == [mine]


def test_png_overlay_removes_stale_temporaries_in_its_folder(tmp_path):
    folder = tmp_path / "overlay"
    folder.mkdir()
    stale = temp_path(folder / "00000.png")
    old = time.time() - STALE_TEMP_AGE_S - 60
    os.utime(stale, (old, old))
    writer = OverlayWriter(tmp_path, "png")
    for image, ids, name in _frames(1):
        writer.add(image, ids, name)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png"]


def test_odd_frame_size_is_padded_not_cropped(tmp_path):
    # Item 16: mp4v needs even sizes; a 5x7 frame used to come out 4x6 (a row and a column lost).
    image = np.zeros((5, 7, 3), np.uint8)
    image[:, 6] = 255  # the last column and the last row are white: cropping would drop them
    image[4, :] = 255
    writer = OverlayWriter(tmp_path)
    for i in range(3):
        writer.add(image, np.zeros((5, 7), np.uint8), f"{i:05d}")
    writer.close()
    frames = _read_mp4(tmp_path / "overlay.mp4")
    assert len(frames) == 3
    grey = frames[0].mean(axis=2)
    assert grey.shape == (6, 8)
    assert grey[:, 6:].min() > 200 and grey[4:, :].min() > 200  # last column/row, and their copies
    assert grey[:4, :6].max() < 50
