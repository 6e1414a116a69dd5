"""Image-folder frame sources, natural sort, the resize policy and prefetch (vidprop/io)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from vidprop.config_base import from_dict
from vidprop.errors import ConfigError, InputError, SourceError
from vidprop.io.config import DataConfig
from vidprop.io.frames import Frame, FrameSource, is_video_file, natural_key, open_source
from vidprop.io.image_folder import ImageFolderSource
from vidprop.io.prefetch import prefetch
from vidprop.io.resize import ResizePolicy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def seq_dir(short_sequence):
    """Folder of the first 8 real car-shadow JPEGs (854x480)."""
    return short_sequence("car-shadow", 8) / "JPEGImages" / "480p" / "car-shadow"


def _pil_rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


# --- natural sort ------------------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value():
    names = ["frame10.jpg", "frame2.jpg", "frame1.jpg", "Frame3.png", "frame02.jpg", "a.jpg"]
    assert sorted(names, key=natural_key) == ["a.jpg", "frame1.jpg", "frame02.jpg", "frame2.jpg", "Frame3.png", "frame10.jpg"]
    # plain string order gets this wrong, which is why natural order matters
    assert sorted(["frame2", "frame10"]) == ["frame10", "frame2"]
    assert sorted(["frame2", "frame10"], key=natural_key) == ["frame2", "frame10"]


def test_folder_is_read_in_natural_order(seq_dir, tmp_path):
    real = sorted(seq_dir.glob("*.jpg"))[:3]
    folder = tmp_path / "renamed"
    folder.mkdir()
    for src, name in zip(real, ["frame1.jpg", "frame2.jpg", "frame10.jpg"]):
        shutil.copy2(src, folder / name)
    source = ImageFolderSource(folder)
    assert source.names == ["frame1", "frame2", "frame10"]
    for frame, src in zip(source, real):
        np.testing.assert_array_equal(frame.image, _pil_rgb(src))


# --- image folders -----------------------------------------------------------------------------


def test_image_folder_streams_real_frames(seq_dir):
    source = open_source(seq_dir)
    assert isinstance(source, ImageFolderSource) and isinstance(source, FrameSource)
    assert len(source) == 8
    assert source.names == [f"{i:05d}" for i in range(8)]
    assert source.size == (480, 854)
    assert source.name == "car-shadow"
    frames = list(source)
    assert [f.index for f in frames] == list(range(8))
    assert [f.name for f in frames] == source.names
    for frame, path in zip(frames, source.files):
        assert isinstance(frame, Frame)
        assert frame.size == (480, 854)
        assert frame.image.shape == (480, 854, 3) and frame.image.dtype == np.uint8
        np.testing.assert_array_equal(frame.image, _pil_rgb(path))
    # consecutive real frames differ: the frames are not one image repeated
    assert np.abs(frames[0].image.astype(int) - frames[7].image).mean() > 1


def test_image_folder_mixed_extensions_and_other_files(seq_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    jpgs = sorted(seq_dir.glob("*.jpg"))[:3]
    shutil.copy2(jpgs[0], folder / "f0.jpg")
    Image.open(jpgs[1]).save(folder / "f1.png")
    shutil.copy2(jpgs[2], folder / "f2.JPEG")
    (folder / "notes.txt").write_text("not a frame")
    (folder / "._f0.jpg").write_bytes(b"macOS resource fork, not a JPEG")
    (folder / "sub").mkdir()
    source = ImageFolderSource(folder)
    assert source.names == ["f0", "f1", "f2"]
    frames = list(source)
    np.testing.assert_array_equal(frames[1].image, _pil_rgb(jpgs[1]))  # PNG is lossless


def test_frames_in_formats_not_read_are_named_in_a_warning(seq_dir, tmp_path, caplog):
    # a frame saved as BMP among JPEGs was skipped without a word: the video lost a frame and its mask
    folder = tmp_path / "gap"
    folder.mkdir()
    jpgs = sorted(seq_dir.glob("*.jpg"))[:4]
    for p in jpgs:
        shutil.copy2(p, folder / p.name)
    Image.open(jpgs[2]).save(folder / f"{jpgs[2].stem}.bmp")
    (folder / jpgs[2].name).unlink()
    (folder / "notes.txt").write_text("not an image: no warning")
    source = ImageFolderSource(folder)
    assert source.names == [jpgs[0].stem, jpgs[1].stem, jpgs[3].stem]
    assert f"{folder}: 1 image file(s) in formats not read as frames (only .jpg/.jpeg/.png), skipped: {jpgs[2].stem}.bmp" in caplog.text
    assert "notes.txt" not in caplog.text


def test_grayscale_and_rgba_frames_become_rgb(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)).save(folder / "b.png")
    frames = list(ImageFolderSource(folder))
    assert all(f.image.shape == (20, 30, 3) for f in frames)
    assert (frames[0].image[..., 0] == frames[0].image[..., 2]).all()


def test_read_random_access(seq_dir):
    source = ImageFolderSource(seq_dir)
    frame = source.read(-1)
    assert frame.index == 7 and frame.name == "00007"
    np.testing.assert_array_equal(frame.image, _pil_rgb(source.files[7]))


# --- bad input ---------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SourceError, match="does not exist") as info:
        open_source(missing)
    assert info.value.path == str(missing)
    with pytest.raises(SourceError, match="does not exist"):
        ImageFolderSource(missing)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no image frames") as info:
        open_source(tmp_path)
    assert info.value.path == str(tmp_path)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


def test_file_that_is_neither_folder_nor_video(tmp_path):
    path = tmp_path / "frames.txt"
    path.write_text("x")
    with pytest.raises(SourceError, match="not a folder of images or a video file"):
        open_source(path)
    with pytest.raises(SourceError, match="not a folder"):
        ImageFolderSource(path)


def test_mixed_frame_sizes(seq_dir, tmp_path):
    folder = tmp_path / "sizes"
    folder.mkdir()
    jpgs = sorted(seq_dir.glob("*.jpg"))[:3]
    shutil.copy2(jpgs[0], folder / "00000.jpg")
    shutil.copy2(jpgs[1], folder / "00001.jpg")
    Image.open(jpgs[2]).resize((427, 240)).save(folder / "00002.jpg")
    with pytest.raises(SourceError, match=r"00002\.jpg is 240x427 .* 00000\.jpg is 480x854") as info:
        ImageFolderSource(folder)
    assert info.value.path == str(folder)


def test_unreadable_image_header(seq_dir, tmp_path):
    folder = tmp_path / "garbage"
    shutil.copytree(seq_dir, folder)
    (folder / "00003.jpg").write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(SourceError, match="cannot read image header") as info:
        ImageFolderSource(folder)
    assert info.value.path == str(folder / "00003.jpg")


def test_truncated_jpeg_in_the_middle_fails_at_opening(seq_dir, tmp_path):
    # issue 10 item 14: an interrupted copy leaves a JPEG without its EOI marker; opening the
    # folder (before any frame is decoded or any mask written) refuses it, naming the file.
    folder = tmp_path / "truncated"
    shutil.copytree(seq_dir, folder)
    bad = folder / "00005.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated or damaged image: it does not end with the JPEG end marker") as info:
        ImageFolderSource(folder)
    assert info.value.path == str(bad)


def test_truncated_png_fails_at_opening(seq_dir, tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for jpg in sorted(seq_dir.glob("*.jpg"))[:3]:
        Image.open(jpg).save(folder / f"{jpg.stem}.png")
    bad = folder / "00001.png"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(SourceError, match="does not end with the PNG end marker") as info:
        ImageFolderSource(folder)
    assert info.value.path == str(bad)


def test_data_after_the_jpeg_end_marker_is_accepted(seq_dir, tmp_path):
    # Some cameras append data after EOI: the file decodes, so it is not refused.
    folder = tmp_path / "trailer"
    shutil.copytree(seq_dir, folder)
    odd = folder / "00002.jpg"
    expected = np.asarray(Image.open(odd).convert("RGB"))
    odd.write_bytes(odd.read_bytes() + b"camera trailer")
    source = ImageFolderSource(folder)
    np.testing.assert_array_equal(source.read(2).image, expected)


def test_png_damaged_inside_fails_when_decoded(seq_dir, tmp_path):
    # Damage inside a complete file (its end marker intact) is found when the frame is decoded.
    folder = tmp_path / "damaged"
    folder.mkdir()
    for jpg in sorted(seq_dir.glob("*.jpg"))[:6]:
        Image.open(jpg).save(folder / f"{jpg.stem}.png")
    bad = folder / "00004.png"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    source = ImageFolderSource(folder)  # header and end marker intact: opening succeeds
    seen = []
    with pytest.raises(SourceError, match="cannot decode image") as info:
        for frame in source:
            seen.append(frame.name)
    assert info.value.path == str(bad)
    assert seen == ["00000", "00001", "00002", "00003"]


def test_duplicate_frame_names(seq_dir, tmp_path):
    folder = tmp_path / "dups"
    folder.mkdir()
    jpg = sorted(seq_dir.glob("*.jpg"))[0]
    shutil.copy2(jpg, folder / "a.jpg")
    Image.open(jpg).save(folder / "a.png")
    with pytest.raises(SourceError, match="share the name 'a'"):
        ImageFolderSource(folder)


# --- resize policy -----------------------------------------------------------------------------


def _dift_read_frame(path, short_side=480):
    """DIFT eval_davis.py read_frame(), restated: cv2 BGR decode, cv2.resize, /255, RGB, (x-.5)/.5."""
    img = cv2.imread(str(path))
    h, w, _ = img.shape
    if h > w:
        tw, th = short_side, int(((short_side * h) / w // 32) * 32)
    else:
        th, tw = short_side, int(((short_side * w) / h // 32) * 32)
    img = cv2.resize(img, (tw, th)).astype(np.float32) / 255.0
    img = torch.from_numpy(np.transpose(img[:, :, ::-1].copy(), (2, 0, 1))).float()
    return (img - 0.5) / 0.5


def test_resize_policy_davis_size_and_reference_values(seq_dir):
    policy = ResizePolicy()
    assert policy.target_size((480, 854)) == (480, 832)
    assert policy.target_size((854, 480)) == (832, 480)  # portrait: the width is the short side
    assert policy.grid_size((480, 854), stride=8) == (60, 104)
    path = sorted(seq_dir.glob("*.jpg"))[0]
    tensor = policy(_pil_rgb(path))
    assert tensor.shape == (3, 480, 832) and tensor.dtype == torch.float32
    assert -1.0 <= tensor.min() and tensor.max() <= 1.0
    # identical to the reference preprocessing (OpenCV bilinear on uint8, same float ops)
    assert torch.equal(tensor, _dift_read_frame(path))


def test_resize_policy_value_range_and_custom_sizes():
    policy = ResizePolicy(short_side=256, multiple=64)
    assert policy.target_size((480, 854)) == (256, 448)  # 455.1 floored to 448
    assert policy.target_size((300, 300)) == (256, 256)
    black_white = np.zeros((300, 500, 3), np.uint8)
    black_white[:, 250:] = 255
    out = policy(black_white)
    assert out.shape == (3, 256, 384)
    assert out[:, :, 0].eq(-1).all() and out[:, :, -1].eq(1).all()
    same = ResizePolicy(short_side=480)
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    # no resampling when the size already fits: values are the exact affine map of the pixels
    expected = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(same(img), expected)


def test_resize_policy_rejects_bad_settings_and_images():
    with pytest.raises(ConfigError, match="short_side"):
        ResizePolicy(short_side=500, multiple=32)
    with pytest.raises(ConfigError, match="multiple"):
        ResizePolicy(multiple=0)
    with pytest.raises(InputError, match="uint8 RGB"):
        ResizePolicy()(np.zeros((10, 10), np.uint8))


def test_data_config_defaults_and_validation():
    cfg = DataConfig()
    assert (cfg.short_side, cfg.multiple, cfg.prefetch) == (480, 32, 8)
    assert cfg.resize_policy() == ResizePolicy(480, 32)
    with pytest.raises(ConfigError) as info:
        from_dict(DataConfig, {"prefetch": -1})
    assert info.value.key == "prefetch"
    with pytest.raises(ConfigError) as info:
        from_dict(DataConfig, {"short_side": 470}, prefix="data.")
    assert info.value.key == "data.short_side"


def test_is_video_file():
    assert is_video_file("a/b.MP4") and is_video_file("x.webm") and is_video_file("x.mkv")
    assert not is_video_file("x.jpg") and not is_video_file("folder")


# --- prefetch ----------------------------------------------------------------------------------


class CountingSource:
    """A frame source over synthetic frames that records how far it was read."""

    def __init__(self, n=20, fail_at=None, size=(24, 40)):
        self.n, self.fail_at, self.size = n, fail_at, size
        self.produced = 0
        self.closed = False
        self.path = "counting"
        self.names = [f"{i:05d}" for i in range(n)]

    def __len__(self):
        return self.n

    def __iter__(self):
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise SourceError(f"cannot decode frame {i}", "counting")
                self.produced += 1
                yield Frame(i, self.names[i], self.size, np.full((*self.size, 3), i, np.uint8))
        finally:
            self.closed = True


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("vidprop-prefetch")]


def test_prefetch_matches_sequential_order_and_values(seq_dir):
    source = ImageFolderSource(seq_dir)
    policy = ResizePolicy()
    got = list(prefetch(source, policy, depth=3))
    assert [f.name for f, _ in got] == source.names
    for (frame, tensor), path in zip(got, source.files):
        np.testing.assert_array_equal(frame.image, _pil_rgb(path))
        assert torch.equal(tensor, policy(frame.image))
    assert not _prefetch_threads()


def test_prefetch_without_policy_or_thread():
    items = []
    for item in prefetch(CountingSource(5), None, depth=0):
        assert not _prefetch_threads()  # depth 0 reads on the caller's thread
        items.append(item)
    assert [f.index for f, _ in items] == [0, 1, 2, 3, 4]
    assert all(t is None for _, t in items)


def test_prefetch_is_bounded_and_stops_early():
    source = CountingSource(100)
    stream = prefetch(source, None, depth=4)
    first, _ = next(stream)
    assert first.index == 0
    time.sleep(0.3)  # let the worker run ahead as far as it can
    # consumed 1 + at most 4 queued + 1 waiting in the worker's put
    assert source.produced <= 6
    for frame, _ in stream:
        if frame.index == 2:
            break
    stream.close()
    assert not _prefetch_threads()
    assert source.closed
    assert source.produced < 100


def test_prefetch_reraises_worker_error_in_consumer():
    source = CountingSource(10, fail_at=3)
    seen = []
    with pytest.raises(SourceError, match="cannot decode frame 3"):
        for frame, _ in prefetch(source, None, depth=2):
            seen.append(frame.index)
    assert seen == [0, 1, 2]
    assert not _prefetch_threads()


def test_prefetch_reraises_policy_error():
    policy = ResizePolicy()
    bad = [Frame(0, "a", (4, 4), np.zeros((4, 4), np.uint8))]  # not RGB: the policy rejects it
    with pytest.raises(InputError, match="uint8 RGB"):
        list(prefetch(bad, policy, depth=2))


def test_prefetch_truncated_jpeg_names_the_file(seq_dir, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(seq_dir, folder)
    bad = folder / "00002.jpg"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(SourceError) as info:
        list(prefetch(ImageFolderSource(folder), ResizePolicy(), depth=2))
    assert info.value.path == str(bad)


# --- 16-bit PNGs and EXIF orientation ----------------------------------------------------------

# 16-bit samples and their 8-bit values by the 16-bit range, round(v * 255 / 65535), by hand:
# 257 * 255 / 65535 = 1; 1000 * 255 / 65535 = 3.89 -> 4; 32767 -> 127.498 -> 127; 32768 -> 127.502 -> 128.
SAMPLES_16 = np.array([0, 257, 1000, 32767, 32768, 65535, 65534, 128], np.uint16)
EXPECTED_8 = np.array([0, 1, 4, 127, 128, 255, 255, 0], np.uint8)


def _write_16bit(kind: str, path):
    """A 2x8 16-bit PNG whose first row holds SAMPLES_16 (in every channel it has)."""
    row = np.stack([SAMPLES_16, SAMPLES_16[::-1]])
    if kind == "I;16":  # Pillow's 16-bit grey mode
        Image.fromarray(row).save(path)
        assert Image.open(path).mode == "I;16"
    elif kind == "grey16":  # 16-bit grey as OpenCV, ImageJ and camera software write it
        cv2.imwrite(str(path), row)
    elif kind == "RGB16":  # channels differ so that a channel swap would show
        cv2.imwrite(str(path), np.stack([row // 4, row // 2, row], axis=-1))  # OpenCV writes BGR
    elif kind == "RGBA16":
        cv2.imwrite(str(path), np.stack([row // 4, row // 2, row, np.full_like(row, 9)], axis=-1))
    with open(path, "rb") as fh:
        assert fh.read(25)[24] == 16, "not a 16-bit PNG"


@pytest.mark.parametrize("kind", ["I;16", "grey16", "RGB16", "RGBA16"])
def test_16bit_pngs_are_scaled_by_the_16bit_range(kind, tmp_path):
    # Pillow's conversion clips 16-bit grey to white and keeps only the high byte of 16-bit colour.
    folder = tmp_path / kind
    folder.mkdir()
    _write_16bit(kind, folder / "00000.png")
    (frame,) = list(ImageFolderSource(folder))
    assert frame.image.dtype == np.uint8 and frame.image.shape == (2, 8, 3)
    red = EXPECTED_8
    if kind in ("RGB16", "RGBA16"):
        np.testing.assert_array_equal(frame.image[0, :, 0], red)
        # green = v // 2, blue = v // 4, by hand: round((v // 2) / 257), round((v // 4) / 257)
        np.testing.assert_array_equal(frame.image[0, :, 1], [0, 0, 2, 64, 64, 127, 127, 0])
        np.testing.assert_array_equal(frame.image[0, :, 2], [0, 0, 1, 32, 32, 64, 64, 0])
    else:
        for channel in range(3):
            np.testing.assert_array_equal(frame.image[0, :, channel], red)
    np.testing.assert_array_equal(frame.image[1, :, 0], EXPECTED_8[::-1])


def test_16bit_frames_are_the_overlay_background(short_sequence, tmp_path):
    # The overlay blends masks over the decoded frames: with 16-bit frames its background pixels
    # (mask 0) are the 8-bit values, not white.
    from vidprop.cli import main

    root = short_sequence("car-shadow", 3)
    src = root / "JPEGImages" / "480p" / "car-shadow"
    folder = tmp_path / "frames16"
    folder.mkdir()
    for path in sorted(src.glob("*.jpg")):
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.uint32)
        deep = np.minimum(rgb * 257 + 100, 65535).astype(np.uint16)  # 8-bit value v -> 257 v + 100 (255 -> 65535)
        cv2.imwrite(str(folder / f"{path.stem}.png"), deep[:, :, ::-1])
    mask = root / "Annotations" / "480p" / "car-shadow" / "00000.png"
    out = tmp_path / "out"
    argv = ["propagate", str(folder), "--mask", str(mask), "--out", str(out), "--config", str(REPO / "configs" / "davis2017_lab.yaml")]
    assert main([*argv, "--short-side", "64", "--overlay", "--set", "runtime.overlay_format=png"]) == 0
    overlay = np.asarray(Image.open(out / "overlay" / "00000.png"))
    background = np.asarray(Image.open(mask)) == 0
    expected = np.asarray(Image.open(src / "00000.jpg").convert("RGB"))  # round((257 v + 100) / 257) = v
    np.testing.assert_array_equal(overlay[background], expected[background])


def _jpeg_with_orientation(array, path, orientation):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_image_viewers(seq_dir, tmp_path, orientation):
    from PIL import ImageOps

    stored = np.asarray(Image.open(seq_dir / "00000.jpg").convert("RGB"))[:96, :160]
    folder = tmp_path / "phone"
    folder.mkdir()
    for i in range(2):
        _jpeg_with_orientation(stored, folder / f"IMG_{i}.jpg", orientation)
    source = ImageFolderSource(folder)
    displayed = np.asarray(ImageOps.exif_transpose(Image.open(folder / "IMG_0.jpg")).convert("RGB"))
    assert source.size == displayed.shape[:2] == ((160, 96) if orientation >= 5 else (96, 160))
    frame = source.read(0)
    np.testing.assert_array_equal(frame.image, displayed)
    if orientation == 6:  # "rotate 90 clockwise to display", the usual portrait phone photo
        np.testing.assert_array_equal(frame.image, np.rot90(np.asarray(Image.open(folder / "IMG_0.jpg").convert("RGB")), -1))


def test_16bit_truncated_png_names_the_file(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 65536, (64, 64, 3), dtype=np.uint16)
    cv2.imwrite(str(folder / "a.png"), noise)
    cv2.imwrite(str(folder / "b.png"), noise)
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])  # the header is intact, the pixels are not
    # no IEND chunk: decoded at opening (16-bit path), and refused there
    with pytest.raises(SourceError, match=r"truncated or damaged image.*cannot decode 16-bit PNG") as info:
        ImageFolderSource(folder)
    assert info.value.path == str(folder / "b.png")
