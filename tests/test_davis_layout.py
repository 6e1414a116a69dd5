"""The DAVIS-2017 folder layout (vidprop/io/davis.py)."""

from __future__ import annotations

import shutil

import pytest

from vidprop.errors import DavisLayoutError, InputError
from vidprop.io.davis import DavisDataset
from vidprop.io.image_folder import ImageFolderSource
from vidprop.io.masks import read_mask


def test_real_davis_sample(davis_root):
    ds = DavisDataset(davis_root)
    assert ds.split_file == davis_root / "ImageSets" / "2017" / "val.txt"
    assert len(ds.sequences) == 13 and "car-shadow" in ds.sequences and "blackswan" in ds.sequences
    frames = ds.frames("car-shadow")
    assert isinstance(frames, ImageFolderSource)
    assert len(frames) == 40 and frames.size == (480, 854)
    assert frames.names[:3] == ["00000", "00001", "00002"] and frames.names[-1] == "00039"
    annotations = ds.annotation_paths("car-shadow")
    assert [p.stem for p in annotations] == frames.names
    first = ds.first_mask_path("car-shadow")
    assert first == davis_root / "Annotations" / "480p" / "car-shadow" / "00000.png"
    mask = read_mask(first, expected_size=frames.size)
    assert mask.object_ids.ids == (1,)


def test_split_order_blank_lines_and_duplicates(short_sequence):
    root = short_sequence("car-shadow", 2)
    short_sequence("blackswan", 2)
    (root / "ImageSets" / "2017" / "val.txt").write_text("blackswan\n\ncar-shadow\nblackswan\n  \n")
    assert DavisDataset(root).sequences == ["blackswan", "car-shadow"]


def test_other_split(short_sequence):
    root = short_sequence("car-shadow", 2)
    (root / "ImageSets" / "2017" / "train.txt").write_text("car-shadow\n")
    assert DavisDataset(root, split="train").sequences == ["car-shadow"]


def test_missing_root(tmp_path):
    with pytest.raises(DavisLayoutError, match="does not exist") as info:
        DavisDataset(tmp_path / "nowhere")
    assert info.value.path == str(tmp_path / "nowhere")
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


@pytest.mark.parametrize("folder", ["JPEGImages/480p", "Annotations/480p", "ImageSets/2017"])
def test_missing_layout_folder(short_sequence, folder):
    root = short_sequence("car-shadow", 2)
    shutil.rmtree(root / folder)
    with pytest.raises(DavisLayoutError, match=f"missing folder {folder}") as info:
        DavisDataset(root)
    assert info.value.path == str(root)


def test_wrong_resolution(short_sequence):
    root = short_sequence("car-shadow", 2)
    with pytest.raises(DavisLayoutError, match="missing folder JPEGImages/Full-Resolution"):
        DavisDataset(root, resolution="Full-Resolution")


def test_missing_split_file_lists_available(short_sequence):
    root = short_sequence("car-shadow", 2)
    with pytest.raises(DavisLayoutError, match=r"no sequence list for split 'test-dev' \(expected ImageSets/2017/test-dev.txt; available: val\)") as info:
        DavisDataset(root, split="test-dev")
    assert info.value.path == str(root / "ImageSets" / "2017" / "test-dev.txt")


def test_empty_split_file(short_sequence):
    root = short_sequence("car-shadow", 2)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n")
    with pytest.raises(DavisLayoutError, match="lists no sequences"):
        DavisDataset(root)


def test_sequence_not_in_split(short_sequence):
    root = short_sequence("car-shadow", 2)
    short_sequence("blackswan", 2)
    (root / "ImageSets" / "2017" / "val.txt").write_text("car-shadow\n")  # blackswan is on disk only
    ds = DavisDataset(root)
    for method in (ds.frames, ds.annotation_paths, ds.first_mask_path):
        with pytest.raises(DavisLayoutError, match="'blackswan' is not in split 'val'") as info:
            method("blackswan")
        assert info.value.path == str(ds.split_file)


def test_split_sequence_without_frames(short_sequence):
    root = short_sequence("car-shadow", 2)
    (root / "ImageSets" / "2017" / "val.txt").write_text("car-shadow\nbike-packing\n")
    with pytest.raises(DavisLayoutError, match="have no frame folder in JPEGImages/480p: bike-packing"):
        DavisDataset(root)


def test_sequence_without_annotations(short_sequence):
    root = short_sequence("car-shadow", 3)
    ann = root / "Annotations" / "480p" / "car-shadow"
    (ann / "00000.png").unlink()
    ds = DavisDataset(root)
    assert [p.name for p in ds.annotation_paths("car-shadow")] == ["00001.png", "00002.png"]
    with pytest.raises(DavisLayoutError, match="no annotation for its first frame 00000.jpg") as info:
        ds.first_mask_path("car-shadow")
    assert info.value.path == str(ann / "00000.png")
    shutil.rmtree(ann)
    with pytest.raises(DavisLayoutError, match="no annotation folder"):
        ds.annotation_paths("car-shadow")


def test_ground_truth_only_and_frames_only_views(short_sequence):
    root = short_sequence("car-shadow", 3)
    shutil.move(root / "JPEGImages", root / "frames-elsewhere")
    gt_only = DavisDataset(root, frames=False)  # what the scorer needs
    assert [p.name for p in gt_only.annotation_paths("car-shadow")] == ["00000.png", "00001.png", "00002.png"]
    with pytest.raises(DavisLayoutError, match="missing folder JPEGImages/480p"):
        DavisDataset(root)
    shutil.move(root / "frames-elsewhere", root / "JPEGImages")
    shutil.rmtree(root / "Annotations")
    frames_only = DavisDataset(root, annotations=False)  # what feature extraction needs
    assert len(frames_only.frames("car-shadow")) == 3
    with pytest.raises(DavisLayoutError, match="missing folder Annotations/480p"):
        DavisDataset(root)


def test_select_keeps_split_order_and_rejects_unknown_names(short_sequence):
    short_sequence("car-shadow", 2)
    root = short_sequence("blackswan", 2)
    ds = DavisDataset(root)
    assert ds.select(None) == ds.select([]) == ["car-shadow", "blackswan"]
    assert ds.select(["blackswan", "car-shadow"]) == ["car-shadow", "blackswan"]
    with pytest.raises(DavisLayoutError, match="not in split 'val': bear, dog") as info:
        ds.select(["bear", "car-shadow", "dog"])
    assert info.value.path == str(ds.split_file)
