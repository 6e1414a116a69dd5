"""Video files through every reader (vidprop/io/video/): counts, orientation, identical frames, errors.

The videos are made here from real DAVIS frames. Most are lossless RGB H.264 (``libx264rgb``,
qp 0), so every reader must return the source pixels exactly; the rest are lossy files
written the way users' tools write them (OpenCV's mp4v).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import write_mp4
from vidprop import cli
from vidprop.config import load_config
from vidprop.errors import ConfigError, SourceError
from vidprop.io.config import DataConfig
from vidprop.io.frames import open_source
from vidprop.io.masks import read_mask, write_mask
from vidprop.io.prefetch import prefetch
from vidprop.io.resize import ResizePolicy
from vidprop.io.video import VIDEO_BACKENDS, VideoFileSource, probe_video
from vidprop.io.video import readers

REPO = Path(__file__).resolve().parents[1]
# mp4v is lossy: per-frame mean absolute error against the source frames stays well below this
CODEC_MEAN_TOL = 8.0


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:
        return False
    return True


BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(not _importable(spec.module), reason=f"{spec.module} is not importable here"))
    for name, spec in VIDEO_BACKENDS.items()
]
needs_decord = pytest.mark.skipif(not _importable("decord"), reason="decord is not importable on this platform")
can_rotate = pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"), reason="this PyAV cannot write display matrices"
)


def davis_frames(davis_root: Path, n: int, size=(214, 120), name: str = "car-shadow") -> list[np.ndarray]:
    """The first ``n`` frames of a DAVIS sequence, downscaled to ``size`` (W, H)."""
    files = sorted((davis_root / "JPEGImages" / "480p" / name).glob("*.jpg"))[:n]
    return [cv2.resize(np.asarray(Image.open(p).convert("RGB")), size, interpolation=cv2.INTER_AREA) for p in files]


def write_lossless(path: Path, frames, *, rotation: int | None = None, hflip: bool = False, pts_ms=None, gop=None) -> Path:
    """Encode RGB frames losslessly (H.264 RGB, qp 0) with PyAV, optionally with a display rotation
    (degrees counter-clockwise, then a left-right mirror) and per-frame timestamps in milliseconds."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=24)
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        stream.options = {"qp": "0", **({"g": str(gop), "bf": "0"} if gop else {})}
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _images(source) -> list[np.ndarray]:
    frames = list(source)
    assert [f.name for f in frames] == source.names and [f.index for f in frames] == list(range(len(source)))
    assert all(f.image.dtype == np.uint8 and f.image.flags.c_contiguous and f.size == source.size for f in frames)
    return [f.image for f in frames]


def _assert_equal_frames(images, expected):
    assert len(images) == len(expected)
    for got, want in zip(images, expected):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.fixture(autouse=True)
def _fresh_announcements(monkeypatch):
    monkeypatch.setattr(readers, "_announced", set())


@pytest.fixture
def source_frames(davis_root):
    """The frames tiny_mp4 was made from (first 6 car-shadow frames at 214x120)."""
    return davis_frames(davis_root, 6)


# --- every reader: same names, counts and pixels ------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_reader_reads_an_opencv_mp4(backend, tiny_mp4, source_frames, caplog):
    with caplog.at_level(logging.INFO, logger="vidprop"):
        source = open_source(tiny_mp4, DataConfig(video_backend=backend))
    assert isinstance(source, VideoFileSource) and source.backend == backend
    assert f"reading video files with {backend}" in caplog.text
    assert len(source) == 6 and source.size == (120, 214) and source.name == "car-shadow"
    assert source.names == ["00000", "00001", "00002", "00003", "00004", "00005"]
    assert source.fps == pytest.approx(24.0)
    images = _images(source)
    for got, want in zip(images, source_frames):
        assert np.abs(got.astype(int) - want).mean() < CODEC_MEAN_TOL
    # colour order is RGB like the image folders (a BGR mix-up would exceed the tolerance)
    assert np.abs(images[0].astype(int) - source_frames[0][:, :, ::-1]).mean() > np.abs(images[0].astype(int) - source_frames[0]).mean()


def test_readers_return_identical_frames(tiny_mp4):
    available = [name for name, spec in VIDEO_BACKENDS.items() if _importable(spec.module)]
    assert {"pyav", "opencv"} <= set(available)
    reference = _images(VideoFileSource(tiny_mp4, backend="pyav"))
    for name in available:
        _assert_equal_frames(_images(VideoFileSource(tiny_mp4, backend=name)), reference)


def test_auto_is_pyav_and_logged_once(tiny_mp4, caplog):
    with caplog.at_level(logging.INFO, logger="vidprop"):
        assert VideoFileSource(tiny_mp4).backend == "pyav"
        assert open_source(tiny_mp4).backend == "pyav"
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["reading video files with pyav (data.video_backend=auto)"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lossless_file_gives_the_source_pixels(backend, davis_root, tmp_path):
    frames = davis_frames(davis_root, 5)
    path = write_lossless(tmp_path / "lossless.mp4", frames)
    _assert_equal_frames(_images(VideoFileSource(path, backend=backend)), frames)


# --- orientation (issue 10, item 5) -------------------------------------------------------------


@can_rotate
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_comes_out_as_displayed(backend, rotation, davis_root, tmp_path):
    frames = davis_frames(davis_root, 4)
    path = write_lossless(tmp_path / f"rot{rotation}.mp4", frames, rotation=rotation)
    source = VideoFileSource(path, backend=backend)
    expected = [np.rot90(f, rotation // 90) for f in frames]  # PyAV: degrees counter-clockwise
    assert source.size == expected[0].shape[:2]
    _assert_equal_frames(_images(source), expected)


@can_rotate
@pytest.mark.parametrize("backend", BACKENDS)
def test_mirrored_display_matrix(backend, davis_root, tmp_path):
    frames = davis_frames(davis_root, 3)
    path = write_lossless(tmp_path / "selfie.mp4", frames, rotation=90, hflip=True)
    expected = [np.rot90(f, 1)[:, ::-1] for f in frames]
    if backend == "decord":  # decord would silently drop the mirror
        with pytest.raises(SourceError, match="mirrors the picture.*decord ignores.*video_backend=pyav") as info:
            VideoFileSource(path, backend=backend)
        assert info.value.path == str(path)
        return
    _assert_equal_frames(_images(VideoFileSource(path, backend=backend)), expected)


@can_rotate
def test_rotation_by_an_odd_angle_is_refused(davis_root, tmp_path):
    path = write_lossless(tmp_path / "tilted.mp4", davis_frames(davis_root, 2), rotation=45)
    with pytest.raises(SourceError, match="rotates frames by 45 degrees counter-clockwise; only multiples of 90") as info:
        VideoFileSource(path)
    assert info.value.path == str(path)


@can_rotate
def test_cli_propagates_a_portrait_phone_clip_with_every_backend(davis_root, tmp_path):
    """End to end: ``--set data.video_backend=...`` picks the reader; masks come out portrait and identical."""
    frames = davis_frames(davis_root, 4)
    path = write_lossless(tmp_path / "phone.mp4", frames, rotation=270)
    first = read_mask(davis_root / "Annotations" / "480p" / "car-shadow" / "00000.png").ids
    portrait = np.rot90(cv2.resize(first, (214, 120), interpolation=cv2.INTER_NEAREST), 3)
    mask = tmp_path / "first.png"
    write_mask(mask, portrait)
    lab = ["--config", str(REPO / "configs" / "davis2017_lab.yaml"), "--device", "cpu", "--short-side", "64"]
    results = {}
    for backend in (name for name, spec in VIDEO_BACKENDS.items() if _importable(spec.module)):
        out = tmp_path / backend
        args = ["propagate", str(path), "--mask", str(mask), "--out", str(out), *lab, "--set", f"data.video_backend={backend}"]
        assert cli.main(args) == 0
        assert load_config(out / "config.yaml").data.video_backend == backend
        masks = sorted(out.glob("*.png"))
        assert [p.stem for p in masks] == ["00000", "00001", "00002", "00003"]
        results[backend] = [read_mask(p).ids for p in masks]
    assert len(results) >= 2
    for ids in results.values():
        assert all(m.shape == (214, 120) for m in ids)  # (H, W): portrait
        for got, want in zip(ids, results["pyav"]):
            np.testing.assert_array_equal(got, want)
    # the last mask follows the object: compare with that frame's ground truth, turned the same way
    truth = read_mask(davis_root / "Annotations" / "480p" / "car-shadow" / "00003.png").ids
    truth = np.rot90(cv2.resize(truth, (214, 120), interpolation=cv2.INTER_NEAREST), 3) > 0
    last = results["pyav"][-1] > 0
    assert (last & truth).sum() / (last | truth).sum() > 0.5


# --- frame counts come from decoding (issue 10, item 6) -----------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_mkv(backend, davis_root, tmp_path):
    """30 real frames at changing intervals: containers and OpenCV estimate other counts."""
    frames = davis_frames(davis_root, 30, size=(107, 60))
    pts, t = [], 0
    for i in range(30):
        pts.append(t)
        t += (10, 40, 400)[i % 3]  # 100 fps, 25 fps and 2.5 fps stretches
    path = write_lossless(tmp_path / "vfr.mkv", frames, pts_ms=pts)
    source = VideoFileSource(path, backend=backend)
    assert len(source) == 30 and source.names[-1] == "00029"
    _assert_equal_frames(_images(source), frames)


def _cut_before_keyframe(src: Path, dst: Path) -> Path:
    """Remux ``src`` without its first packet: the P-frames up to the next keyframe cannot decode."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream_out = out.add_stream_from_template(stream_in)
        for i, packet in enumerate(inp.demux(stream_in)):
            if packet.dts is None or i == 0:
                continue
            packet.stream = stream_out
            out.mux(packet)
    return dst


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_cut_before_a_keyframe(backend, davis_root, tmp_path):
    frames = davis_frames(davis_root, 12)
    whole = write_lossless(tmp_path / "gop.mkv", frames, gop=4)
    path = _cut_before_keyframe(whole, tmp_path / "cut.mkv")
    assert probe_video(path).count == 8  # frames 4..11: the decoder drops 1..3, whose reference is gone
    if backend == "decord":  # decord indexes 11 packets and would fill 3 frames with copies of neighbours
        source = VideoFileSource(path, backend=backend)
        with pytest.raises(SourceError, match="decord indexes 11 frames but FFmpeg decodes 8.*video_backend=pyav"):
            list(source)
        return
    _assert_equal_frames(_images(VideoFileSource(path, backend=backend)), frames[4:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_file_reads_the_frames_that_decode(backend, davis_root, tmp_path, caplog):
    """An AVI cut in half still announces 20 frames: its decodable frames are read, with a warning."""
    frames = davis_frames(davis_root, 20)
    path = write_mp4(frames, tmp_path / "cut.avi")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="vidprop"):
        source = VideoFileSource(path, backend=backend)
    n = len(source)
    assert 0 < n < 20
    assert f"announces 20 frames but {n} decode" in caplog.text
    # the cut falls inside the last packet: the decoder conceals the damage and says so
    assert source.info.corrupt_frames == (n - 1,)
    assert f"concealed errors in 1 of {n} frames (frame {n - 1})" in caplog.text
    images = _images(source)
    for got, want in zip(images[:-1], frames):
        assert np.abs(got.astype(int) - want).mean() < CODEC_MEAN_TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_file_replaced_after_opening(backend, davis_root, tmp_path):
    frames = davis_frames(davis_root, 6)
    path = write_lossless(tmp_path / "clip.mp4", frames)
    source = VideoFileSource(path, backend=backend)
    assert len(source) == 6
    write_lossless(tmp_path / "short.mp4", frames[:4]).replace(path)
    with pytest.raises(SourceError, match=r"\b4\b.*\b6\b") as info:
        list(source)
    assert info.value.path == str(path)
    assert len(VideoFileSource(path, backend=backend)) == 4  # the probe cache sees the new file


@pytest.mark.parametrize("backend", BACKENDS)
def test_reading_leaves_no_decoded_frame_behind(backend, davis_root, tmp_path):
    """PyAV frames whose side data was read sit in a reference cycle; none may outlive its file
    (only a full collection, rare in a process holding torch, would free them: +120 MiB per 200 videos)."""
    original = write_lossless(tmp_path / "clip.mp4", davis_frames(davis_root, 3))
    copies = [original.parent / f"copy{i}.mp4" for i in range(3)]
    for copy in copies:
        copy.write_bytes(original.read_bytes())
    gc.collect()
    for copy in copies:
        assert len(list(VideoFileSource(copy, backend=backend))) == 3
    assert [o for o in gc.get_objects() if type(o) is av.VideoFrame] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_frames_keep_sortable_names(backend, tmp_path):
    frames = [np.full((16, 16, 3), i * 2, np.uint8) for i in range(12)]
    path = write_mp4(frames, tmp_path / "ramp.avi")
    source = VideoFileSource(path, backend=backend)
    assert len(source) == 12 and source.names[-1] == "00011"
    means = [f.image.mean() for f in source]
    assert means == sorted(means)  # frames come in order


def test_video_through_prefetch_and_resize(tiny_mp4):
    source = VideoFileSource(tiny_mp4)
    policy = ResizePolicy()
    items = list(prefetch(source, policy, depth=2))
    assert [f.name for f, _ in items] == source.names
    assert all(t.shape == (3, *policy.target_size((120, 214))) for _, t in items)
    assert policy.target_size((120, 214)) == (480, 832)


# --- choosing a backend -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", list(VIDEO_BACKENDS))
def test_backend_not_installed(backend, tiny_mp4, monkeypatch):
    """A reader whose package is missing names itself and how to install it."""
    monkeypatch.setitem(sys.modules, VIDEO_BACKENDS[backend].module, None)
    with pytest.raises(ConfigError, match=rf"video backend '{backend}' needs the '{VIDEO_BACKENDS[backend].module}' package") as info:
        VideoFileSource(tiny_mp4, backend=backend)
    assert info.value.key == "data.video_backend"
    assert "pip install" in str(info.value)


def test_backend_config_key(tiny_mp4):
    config = load_config(None, ["data.video_backend=opencv"])
    assert config.data.video_backend == "opencv"
    assert open_source(tiny_mp4, config.data).backend == "opencv"
    assert DataConfig().video_backend == "auto"
    with pytest.raises(ConfigError, match="auto | pyav") as info:
        load_config(None, ["data.video_backend=ffmpeg"])
    assert info.value.key == "data.video_backend"
    with pytest.raises(ConfigError, match="unknown video backend 'ffmpeg'") as info:
        VideoFileSource(tiny_mp4, backend="ffmpeg")
    assert info.value.key == "data.video_backend"


def test_cli_rejects_an_unknown_backend(tiny_mp4, tmp_path, capsys):
    mask = tmp_path / "m.png"
    write_mask(mask, np.ones((120, 214), np.uint8))
    rc = cli.main(["propagate", str(tiny_mp4), "--mask", str(mask), "--out", str(tmp_path / "o"), "--set", "data.video_backend=ffmpeg"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "data.video_backend" in err and "ffmpeg" in err and "Traceback" not in err


# --- bad files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_undecodable_videos(backend, tmp_path, tiny_mp4):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video\xff" * 200)
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"  # an mp4 cut before its index (moov) is unreadable
    data = tiny_mp4.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    for path in (garbage, empty, truncated):
        with pytest.raises(SourceError, match="cannot decode video") as info:
            VideoFileSource(path, backend=backend)
        assert info.value.path == str(path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "voice.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(SourceError, match="no video stream") as info:
        VideoFileSource(path)
    assert info.value.path == str(path)


def test_missing_video_and_folder(tmp_path):
    with pytest.raises(SourceError, match="does not exist") as info:
        VideoFileSource(tmp_path / "missing.mp4")
    assert info.value.path == str(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match="folder"):
        VideoFileSource(tmp_path)


def test_unreadable_video_file(tmp_path, tiny_mp4):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    tiny_mp4.chmod(0)
    with pytest.raises(SourceError, match="cannot") as info:
        VideoFileSource(tiny_mp4)
    assert info.value.path == str(tiny_mp4)
