"""The writer thread: masks written behind a bounded queue, identical to serial writes, failures surfaced."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest
from PIL import Image

from vidprop.config import load_config
from vidprop.errors import OutputError, ShapeError
from vidprop.io.atomic import COMPLETE_MARKER, is_complete
from vidprop.io.writer import BackgroundWriter
from vidprop.pipeline import VideoJob, run_videos

REPO = Path(__file__).resolve().parents[1]


def lab_config(*overrides: str):
    return load_config(REPO / "configs" / "davis2017_lab.yaml", ["data.short_side=64", "runtime.device=cpu", *overrides])


def job_of(root: Path, out: Path, seq: str = "car-shadow") -> VideoJob:
    return VideoJob(seq, root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq / "00000.png", out)


def test_masks_and_overlay_from_the_writer_thread_equal_serial_writes(short_sequence, tmp_path):
    root = short_sequence("car-shadow", 6)
    folders = {}
    for depth in (0, 2):
        out = tmp_path / f"q{depth}"
        cfg = lab_config(f"runtime.write_queue={depth}", "runtime.overlay=true", "runtime.overlay_format=png")
        assert run_videos([job_of(root, out)], cfg).count("done") == 1
        folders[depth] = out
    serial = sorted(p.relative_to(folders[0]) for p in folders[0].rglob("*.png"))
    assert len(serial) == 12 and serial == sorted(p.relative_to(folders[2]) for p in folders[2].rglob("*.png"))
    for rel in serial:
        assert (folders[0] / rel).read_bytes() == (folders[2] / rel).read_bytes()
    assert is_complete(folders[0]) and is_complete(folders[2])


@pytest.mark.parametrize("depth", [0, 3])
def test_a_failing_write_is_a_clear_error_with_no_temporary_file_and_no_marker(short_sequence, tmp_path, monkeypatch, depth):
    """The disk fills up while frame 00003's PNG is half written: the run names that file, the temporary
    is gone, no later frame is written and the folder is not marked complete."""
    root = short_sequence("car-shadow", 6)
    out = tmp_path / "out"
    real_save = Image.Image.save
    written = []

    def save(self, fp, *args, **kwargs):
        name = Path(fp).name
        if name.startswith(".00003."):
            Path(fp).write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(threading.current_thread().name)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(OutputError) as info:
        run_videos([job_of(root, out)], lab_config(f"runtime.write_queue={depth}", "runtime.fail_fast=true"))
    assert str(out / "00003.png") in str(info.value) and "No space left on device" in str(info.value)
    assert info.value.exit_code == 1
    assert sorted(p.name for p in out.iterdir() if p.name != ".vidprop-write-check") == ["00000.png", "00001.png", "00002.png"]
    assert not (out / COMPLETE_MARKER).exists()
    assert all(name.startswith("vidprop-writer") for name in written) == bool(depth)


def test_writer_keeps_order_bounds_its_queue_and_reports_the_first_failure(tmp_path):
    done, gate = [], threading.Event()
    writer = BackgroundWriter(2)
    writer.submit("a", lambda: gate.wait(5) and done.append("a"))
    writer.submit("b", lambda: done.append("b"))
    writer.submit("c", lambda: done.append("c"))  # the queue holds 2: b and c wait behind a
    blocked = threading.Thread(target=writer.submit, args=("d", lambda: done.append("d")))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # a full queue blocks the producer
    gate.set()
    blocked.join(5)
    writer.close()
    assert done == ["a", "b", "c", "d"]

    writer = BackgroundWriter(4)
    writer.submit(tmp_path / "x.png", lambda: (_ for _ in ()).throw(ShapeError("bad ids", tmp_path / "x.png")))
    writer.submit("later", lambda: done.append("later"))
    with pytest.raises(ShapeError, match="x.png: bad ids"):
        writer.close()
    assert "later" not in done  # dropped after the failure
    with pytest.raises(RuntimeError, match="after close"):
        writer.submit("y", lambda: None)
    with pytest.raises(ValueError):
        BackgroundWriter(-1)
