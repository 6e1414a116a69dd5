"""Video-file frame sources: decord, the OpenCV fallback, and undecodable videos (vidprop/io/video_file.py)."""

from __future__ import annotations

import logging
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import write_mp4
from vidprop.errors import ConfigError, SourceError
from vidprop.io import video_file
from vidprop.io.frames import open_source
from vidprop.io.prefetch import prefetch
from vidprop.io.resize import ResizePolicy
from vidprop.io.video_file import VideoFileSource

# mp4v is lossy: per-frame mean absolute error against the source frames stays well below this
CODEC_MEAN_TOL = 8.0


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:
        return False
    return True


needs_decord = pytest.mark.skipif(not _has_decord(), reason="decord is not importable on this platform")


@pytest.fixture
def source_frames(davis_root):
    """The frames tiny_mp4 was made from (first 6 car-shadow frames at 214x120)."""
    src = sorted((davis_root / "JPEGImages" / "480p" / "car-shadow").glob("*.jpg"))[:6]
    return [cv2.resize(np.asarray(Image.open(p).convert("RGB")), (214, 120), interpolation=cv2.INTER_AREA) for p in src]


@pytest.fixture
def hide_decord(monkeypatch):
    """Make `import decord` fail, as on platforms without decord wheels."""
    monkeypatch.setitem(sys.modules, "decord", None)
    monkeypatch.setattr(video_file, "_announced", set())


def _read(source):
    frames = list(source)
    return [f.name for f in frames], [f.index for f in frames], [f.image for f in frames]


def _assert_close_to(images, reference):
    assert len(images) == len(reference)
    for got, want in zip(images, reference):
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want).mean() < CODEC_MEAN_TOL


@needs_decord
def test_decord_reads_mp4(tiny_mp4, source_frames, caplog, monkeypatch):
    monkeypatch.setattr(video_file, "_announced", set())
    with caplog.at_level(logging.INFO, logger="vidprop"):
        source = open_source(tiny_mp4)
    assert isinstance(source, VideoFileSource)
    assert source.backend == "decord"
    assert any("decord" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert len(source) == 6 and source.size == (120, 214) and source.name == "car-shadow"
    assert source.names == ["00000", "00001", "00002", "00003", "00004", "00005"]
    assert source.fps == pytest.approx(24.0)
    names, indices, images = _read(source)
    assert names == source.names and indices == list(range(6))
    _assert_close_to(images, source_frames)
    # colour order is RGB like the image folders (a BGR mix-up would exceed the tolerance)
    assert np.abs(images[0].astype(int) - source_frames[0][:, :, ::-1]).mean() > np.abs(images[0].astype(int) - source_frames[0]).mean()


def test_opencv_fallback_when_decord_is_missing(tiny_mp4, source_frames, hide_decord, caplog):
    with caplog.at_level(logging.INFO, logger="vidprop"):
        source = VideoFileSource(tiny_mp4)
    assert source.backend == "opencv"
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "decord is not importable" in infos[0] and "OpenCV" in infos[0]
    names, indices, images = _read(source)
    assert names == ["00000", "00001", "00002", "00003", "00004", "00005"] and indices == list(range(6))
    _assert_close_to(images, source_frames)
    with caplog.at_level(logging.INFO, logger="vidprop"):
        VideoFileSource(tiny_mp4)
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1  # logged once per process


@needs_decord
def test_opencv_matches_decord(tiny_mp4, monkeypatch):
    names_d, _, images_d = _read(VideoFileSource(tiny_mp4, backend="decord"))
    monkeypatch.setitem(sys.modules, "decord", None)
    names_o, _, images_o = _read(VideoFileSource(tiny_mp4))
    assert names_o == names_d
    for a, b in zip(images_d, images_o):
        # both decode with FFmpeg; only the YUV->RGB conversion may differ by a few levels
        assert np.abs(a.astype(int) - b).mean() < 2.0


def test_video_through_prefetch_and_resize(tiny_mp4):
    source = VideoFileSource(tiny_mp4, backend="opencv")
    policy = ResizePolicy()
    items = list(prefetch(source, policy, depth=2))
    assert [f.name for f, _ in items] == source.names
    assert all(t.shape == (3, *policy.target_size((120, 214))) for _, t in items)
    assert policy.target_size((120, 214)) == (480, 832)


def test_many_frames_keep_sortable_names(tmp_path):
    frames = [np.full((16, 16, 3), i * 2, np.uint8) for i in range(12)]
    path = write_mp4(frames, tmp_path / "ramp.avi")
    source = VideoFileSource(path, backend="opencv")
    assert len(source) == 12 and source.names[-1] == "00011"
    means = [f.image.mean() for f in source]
    assert means == sorted(means)  # frames come in order


def test_unknown_or_missing_backend(tiny_mp4, hide_decord):
    with pytest.raises(ConfigError, match="unknown video backend 'ffmpeg'"):
        VideoFileSource(tiny_mp4, backend="ffmpeg")
    with pytest.raises(ConfigError, match="decord is not importable"):
        VideoFileSource(tiny_mp4, backend="decord")


@pytest.mark.parametrize("backend", [None, "opencv"])
def test_undecodable_videos(tmp_path, tiny_mp4, backend):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video\xff" * 200)
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    data = tiny_mp4.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    for path in (garbage, empty, truncated):
        with pytest.raises(SourceError, match="cannot decode video") as info:
            VideoFileSource(path, backend=backend)
        assert info.value.path == str(path)


def test_missing_video_and_folder(tmp_path):
    with pytest.raises(SourceError, match="does not exist") as info:
        VideoFileSource(tmp_path / "missing.mp4")
    assert info.value.path == str(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match="folder"):
        VideoFileSource(tmp_path)


def test_video_truncated_mid_stream_fails_while_reading(tmp_path):
    rng = np.random.default_rng(0)
    path = write_mp4([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(20)], tmp_path / "noise.avi")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the AVI header still announces 20 frames
    source = VideoFileSource(path, backend="opencv")
    assert len(source) == 20
    with pytest.raises(SourceError, match=r"video ended after \d+ of 20 frames") as info:
        list(source)
    assert info.value.path == str(path)
