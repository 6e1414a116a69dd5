"""Mask reading/writing, the DAVIS palette, object ids and one-hot labels (vidprop/io/masks.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vidprop.errors import InputError, MaskError, ShapeError
from vidprop.io.masks import (
    VOID_ID,
    LabelMask,
    ObjectIds,
    davis_palette,
    labels_to_onehot,
    onehot_to_labels,
    read_label_image,
    read_mask,
    suspicious_objects,
    write_mask,
)


@pytest.fixture
def first_png(davis_root):
    return davis_root / "Annotations" / "480p" / "car-shadow" / "00000.png"


def _file_palette(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "P"
        return np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)


def _dift_read_seg_small(path, stride):
    """DIFT eval_davis.py read_seg(): PIL NEAREST resize of the id image to the feature grid."""
    seg = Image.open(path)
    w, h = seg.size
    th, tw = (480, int(((480 * w) / h // 32) * 32)) if w > h else (int(((480 * h) / w // 32) * 32), 480)
    return np.array(seg.resize((tw // stride, th // stride), 0))


# --- palette -----------------------------------------------------------------------------------


def test_davis_palette_equals_real_davis_pngs(first_png, davis_root):
    palette = davis_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette, _file_palette(first_png))
    np.testing.assert_array_equal(palette, _file_palette(davis_root / "Annotations" / "480p" / "blackswan" / "00010.png"))
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0] and palette[VOID_ID].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in palette}) == 256  # every id has its own colour
    palette[1] = 0  # a copy: callers cannot corrupt the shared palette
    assert davis_palette()[1].tolist() == [128, 0, 0]


# --- reading -----------------------------------------------------------------------------------


def test_read_real_mask(first_png):
    mask = read_mask(first_png, expected_size=(480, 854))
    assert isinstance(mask, LabelMask)
    assert mask.size == (480, 854) and mask.ids.dtype == np.uint8
    assert mask.object_ids == ObjectIds((1,)) and mask.object_ids.num_channels == 2
    assert set(np.unique(mask.ids).tolist()) == {0, 1}
    assert not mask.has_void
    np.testing.assert_array_equal(mask.palette, davis_palette())
    np.testing.assert_array_equal(mask.ids, read_label_image(first_png))


def test_palette_round_trip_non_contiguous_ids_and_void(multi_object_mask, tmp_path):
    assert set(np.unique(multi_object_mask).tolist()) == {0, 1, 3, 255}
    path = write_mask(tmp_path / "out" / "00000.png", multi_object_mask)
    assert path == tmp_path / "out" / "00000.png"
    np.testing.assert_array_equal(_file_palette(path)[:256], davis_palette())
    mask = read_mask(path, expected_size=multi_object_mask.shape)
    np.testing.assert_array_equal(mask.ids, multi_object_mask)
    assert mask.object_ids.ids == (1, 3) and mask.object_ids.num_channels == 3
    assert mask.has_void
    # channels: void -> background, ids 1, 3 -> channels 1, 2; back to ids without the void
    channels = mask.channels()
    assert set(np.unique(channels).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(channels[multi_object_mask == 3], 2)
    np.testing.assert_array_equal(channels[multi_object_mask == VOID_ID], 0)
    expected = np.where(multi_object_mask == VOID_ID, 0, multi_object_mask)
    np.testing.assert_array_equal(mask.object_ids.to_ids(channels), expected)
    np.testing.assert_array_equal(mask.object_ids.to_ids(torch.from_numpy(channels.astype(np.int64))), expected)
    assert list(tmp_path.joinpath("out").iterdir()) == [path]


def test_input_palette_is_kept(multi_object_mask, tmp_path):
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    src = write_mask(tmp_path / "custom.png", multi_object_mask, palette)
    mask = read_mask(src)
    np.testing.assert_array_equal(mask.palette, palette)
    out = write_mask(tmp_path / "copy.png", mask.ids, mask.palette)
    np.testing.assert_array_equal(_file_palette(out), palette)


def test_short_palette_is_padded_with_davis_colours(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [2, 7]], np.uint8))
    img.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60])  # only 3 entries
    img.save(tmp_path / "short.png")
    mask = read_mask(tmp_path / "short.png")
    assert mask.palette.shape == (256, 3)
    assert mask.palette[1].tolist() == [10, 20, 30] and mask.palette[7].tolist() == davis_palette()[7].tolist()


def test_grayscale_mask_of_ids(multi_object_mask, tmp_path):
    ids = multi_object_mask.copy()
    ids[ids == 3] = 7
    Image.fromarray(ids).save(tmp_path / "gray.png")  # mode "L"
    mask = read_mask(tmp_path / "gray.png")
    assert mask.palette is None
    assert mask.object_ids.ids == (1, 7)
    np.testing.assert_array_equal(mask.ids, ids)


# --- bad masks ---------------------------------------------------------------------------------


def test_mask_size_differs_from_frames(first_png):
    with pytest.raises(MaskError, match=r"mask is 480x854 \(HxW\) but the frames are 240x427") as info:
        read_mask(first_png, expected_size=(240, 427))
    assert info.value.path == str(first_png)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


@pytest.mark.parametrize("fill", [0, VOID_ID])
def test_mask_without_object(tmp_path, fill):
    path = write_mask(tmp_path / "empty.png", np.full((12, 20), fill, np.uint8))
    with pytest.raises(MaskError, match="no object") as info:
        read_mask(path)
    assert info.value.path == str(path)


def test_rgb_mask_is_rejected(first_png, tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.open(first_png).convert("RGB").save(rgb)
    with pytest.raises(MaskError, match="unsupported image mode 'RGB'") as info:
        read_mask(rgb)
    assert info.value.path == str(rgb)


def test_missing_truncated_and_foreign_mask_files(first_png, tmp_path):
    with pytest.raises(MaskError, match="does not exist"):
        read_mask(tmp_path / "missing.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(first_png.read_bytes()[:300])
    with pytest.raises(MaskError, match="cannot read mask image") as info:
        read_mask(truncated)
    assert info.value.path == str(truncated)
    text = tmp_path / "mask.png"
    text.write_text("not a png")
    with pytest.raises(MaskError, match="cannot read mask image"):
        read_mask(text)


def test_object_ids_validation():
    with pytest.raises(MaskError, match="1..254"):
        ObjectIds((0, 1))
    with pytest.raises(MaskError, match="1..254"):
        ObjectIds((VOID_ID,))
    with pytest.raises(MaskError, match="unique"):
        ObjectIds((2, 2))
    ids = ObjectIds((3, 1))  # channel order is the given order
    np.testing.assert_array_equal(ids.to_channels(np.array([[0, 1, 3, 255]], np.uint8)), [[0, 2, 1, 0]])
    with pytest.raises(MaskError, match=r"object ids \[5\]"):
        ids.to_channels(np.array([[5]], np.uint8))
    with pytest.raises(ShapeError, match="0..2"):
        ids.to_ids(np.array([[3]]))


# --- writing -----------------------------------------------------------------------------------


def test_write_mask_error_leaves_no_partial_file(multi_object_mask, tmp_path, monkeypatch):
    target = tmp_path / "00000.png"
    target.write_bytes(b"previous")

    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_mask(target, multi_object_mask)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["00000.png"]


def test_write_mask_rejects_bad_arrays(tmp_path):
    with pytest.raises(ShapeError, match=r"\(H, W\) integer array") as info:
        write_mask(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert info.value.path == str(tmp_path / "a.png")  # the error names the file, like every InputError
    with pytest.raises(ShapeError, match=r"\(H, W\) integer array"):
        write_mask(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ShapeError, match="0..255"):
        write_mask(tmp_path / "a.png", np.full((4, 4), 300, np.int64))
    with pytest.raises(ShapeError, match="palette"):
        write_mask(tmp_path / "a.png", np.zeros((4, 4), np.uint8), palette=np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
    path = write_mask(tmp_path / "int64.png", np.array([[0, 2], [7, 1]], np.int64))
    np.testing.assert_array_equal(read_label_image(path), [[0, 2], [7, 1]])


# --- one-hot labels ----------------------------------------------------------------------------


def test_labels_to_onehot_matches_reference_nearest_resize(first_png):
    mask = read_mask(first_png)
    onehot = labels_to_onehot(mask.channels(), mask.object_ids.num_channels, (60, 104))
    assert onehot.shape == (2, 60, 104) and onehot.dtype == torch.float32
    assert onehot.sum(0).eq(1).all()
    reference = _dift_read_seg_small(first_png, stride=8)
    np.testing.assert_array_equal(onehot[1].numpy(), reference == 1)
    np.testing.assert_array_equal(onehot_to_labels(onehot).numpy(), reference)


def test_onehot_round_trip_multi_object(multi_object_mask):
    ids = ObjectIds.from_mask(multi_object_mask)
    channels = ids.to_channels(multi_object_mask)
    onehot = labels_to_onehot(torch.from_numpy(channels.astype(np.int64)), ids.num_channels, (60, 107))
    assert onehot.shape == (3, 60, 107)
    labels = onehot_to_labels(onehot)
    assert labels.dtype == torch.int64 and set(labels.unique().tolist()) == {0, 1, 2}
    full = labels_to_onehot(channels, ids.num_channels, channels.shape)
    np.testing.assert_array_equal(onehot_to_labels(full).numpy(), channels)  # same size: exact


def test_onehot_to_labels_soft_and_ties():
    soft = torch.tensor([[[0.2, 0.5]], [[0.7, 0.5]], [[0.1, 0.0]]])
    assert onehot_to_labels(soft).tolist() == [[1, 0]]  # a tie goes to the first channel


def test_onehot_rejects_bad_input():
    with pytest.raises(ShapeError, match="0..1"):
        labels_to_onehot(np.array([[0, 2]]), 2, (1, 1))
    with pytest.raises(ShapeError, match=r"\(H, W\)"):
        labels_to_onehot(np.zeros((2, 2, 2), np.int64), 2, (1, 1))
    with pytest.raises(ShapeError, match=r"\(K, h, w\)"):
        onehot_to_labels(torch.zeros(2, 3))


# --- lossless masks, suspicious objects, orientation -------------------------------------------


def test_jpeg_masks_are_rejected(first_png, tmp_path):
    # A white-on-black JPEG mask reads as dozens of ids (compression ringing), a 0/1 JPEG mask
    # gains an id 2: masks must be lossless.
    binary = (np.asarray(Image.open(first_png)) > 0).astype(np.uint8)
    white = tmp_path / "white.jpg"
    Image.fromarray(binary * 200).save(white, quality=90)
    assert len(np.unique(np.asarray(Image.open(white)))) > 20  # what reading it blindly would give
    ones = tmp_path / "ones.png"  # a JPEG under a .png name: the content decides
    Image.fromarray(binary).save(ones, format="JPEG", quality=75)
    for path in (white, ones):
        with pytest.raises(MaskError, match="masks must be lossless PNG files, got a JPEG file") as info:
            read_mask(path)
        assert info.value.path == str(path) and info.value.exit_code == 2
    with pytest.raises(MaskError, match="got a JPEG file"):
        read_label_image(ones)  # the scorer's reader too
    gif = tmp_path / "mask.gif"
    Image.fromarray(binary).save(gif)
    with pytest.raises(MaskError, match="masks must be lossless PNG files .* got a GIF file"):
        read_mask(gif)


def test_jpeg_mask_exits_2_in_the_cli(short_sequence, tmp_path, caplog):
    from vidprop.cli import main

    root = short_sequence("car-shadow", 2)
    mask = tmp_path / "mask.jpg"
    Image.open(root / "Annotations" / "480p" / "car-shadow" / "00000.png").convert("L").save(mask)
    frames = root / "JPEGImages" / "480p" / "car-shadow"
    assert main(["propagate", str(frames), "--mask", str(mask), "--out", str(tmp_path / "out"), "--backend", "lab"]) == 2
    assert f"{mask}: masks must be lossless PNG files" in caplog.text
    assert "Traceback" not in caplog.text


def test_binary_0_255_mask_says_255_is_void(tmp_path):
    ids = np.zeros((12, 20), np.uint8)
    ids[3:9, 4:12] = VOID_ID
    path = write_mask(tmp_path / "binary.png", ids)
    with pytest.raises(MaskError, match="255, which is void .* give the object another id, e.g. 1"):
        read_mask(path)


def _antialiased_mask() -> np.ndarray:
    """Object 3 drawn with anti-aliasing (4x supersampled, then averaged): its edge pixels get
    the blended values 1 and 2, one pixel thin; plus a real 10x10 object 5 and a 3x3 speck 7."""
    from PIL import ImageDraw

    big = Image.new("L", (4 * 160, 4 * 96), 0)
    ImageDraw.Draw(big).ellipse((40, 40, 400, 300), fill=3)
    ids = np.asarray(big.resize((160, 96), Image.BOX)).copy()  # BOX averages: edge values 1, 2
    ids[70:80, 120:130] = 5
    ids[5:8, 150:153] = 7
    return ids


def test_suspicious_objects_are_antialiasing_residue_and_specks():
    ids = _antialiased_mask()
    counts = np.bincount(ids.ravel(), minlength=256)
    assert set(np.unique(ids)) == {0, 1, 2, 3, 5, 7}
    # ids 1 and 2 are rings one pixel thin (no pixel with four same-id neighbours); 7 has 9 < 16 pixels
    assert suspicious_objects(ids) == {1: int(counts[1]), 2: int(counts[2]), 7: 9}


def test_suspicious_objects_are_warned_once_per_mask(tmp_path, caplog):
    import logging
    import os

    path = write_mask(tmp_path / "drawn.png", _antialiased_mask())
    counts = np.bincount(_antialiased_mask().ravel(), minlength=256)
    with caplog.at_level(logging.WARNING, logger="vidprop"):
        read_mask(path)
        read_mask(path)  # the batch runner reads a mask twice (check, then run)
    warnings = [r.getMessage() for r in caplog.records if "only a few pixels" in r.getMessage()]
    assert len(warnings) == 1
    assert f"id 1 ({counts[1]} px), id 2 ({counts[2]} px), id 7 (9 px)" in warnings[0]
    assert str(path) in warnings[0]
    caplog.clear()
    ids = _antialiased_mask()
    ids[0, 0] = 7  # edited in place: a new warning
    write_mask(path, ids)
    os.utime(path, ns=(1, 1))
    with caplog.at_level(logging.WARNING, logger="vidprop"):
        read_mask(path)
    assert "id 7 (10 px)" in caplog.text


def test_real_davis_masks_raise_no_warning(davis_root, multi_object_mask):
    for path in sorted((davis_root / "Annotations" / "480p").glob("*/*.png"))[::7]:
        assert suspicious_objects(np.asarray(Image.open(path))) == {}, path
    assert suspicious_objects(multi_object_mask) == {}


def test_array_masks_through_the_api_are_checked_too(caplog):
    import logging

    from vidprop.pipeline.inputs import as_label_mask

    ids = _antialiased_mask()
    with caplog.at_level(logging.WARNING, logger="vidprop"):
        mask = as_label_mask(ids, ids.shape)
    assert mask.object_ids.ids == (1, 2, 3, 5, 7)
    assert "first_mask: 3 object(s) of only a few pixels" in caplog.text


def test_masks_follow_their_exif_orientation_like_frames(multi_object_mask, tmp_path):
    # A PNG with an eXIf orientation is read as displayed, by the mask reader and the scorer's reader.
    from vidprop.scoring.png import read_ids

    image = Image.fromarray(multi_object_mask)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif.tobytes())
    displayed = np.rot90(multi_object_mask, -1)
    np.testing.assert_array_equal(read_mask(path).ids, displayed)
    np.testing.assert_array_equal(read_ids(path), displayed)
    assert read_mask(path, expected_size=displayed.shape).size == (854, 480)
