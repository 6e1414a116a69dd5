"""Inputs users really have and outputs that never hurt them (issue 10): every input-side problem
is exit code 2 with the path named and no traceback, and nothing is marked complete that is not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vidprop import cli
from vidprop.io.atomic import is_complete

REPO = Path(__file__).resolve().parents[1]
LAB = str(REPO / "configs" / "davis2017_lab.yaml")
FAST = ["--config", LAB, "--device", "cpu", "--short-side", "64"]


@pytest.fixture
def seq(short_sequence):
    """(frames folder, first mask) of a 5-frame DAVIS sequence copied into tmp_path."""
    root = short_sequence("car-shadow", 5)
    return root / "JPEGImages" / "480p" / "car-shadow", root / "Annotations" / "480p" / "car-shadow" / "00000.png"


def _no_traceback(caplog):
    assert "Traceback" not in caplog.text
    assert not any(r.exc_info for r in caplog.records)


# --- item 14: a truncated JPEG in the middle of a folder -----------------------------------------


def test_truncated_frame_in_the_middle_stops_before_any_mask(seq, tmp_path, caplog):
    frames, mask = seq
    bad = frames / "00003.jpg"
    bad.write_bytes(bad.read_bytes()[:5000])
    out = tmp_path / "out"
    assert cli.main(["propagate", str(frames), "--mask", str(mask), "--out", str(out), *FAST]) == 2
    assert f"{bad}: truncated or damaged image" in caplog.text
    assert not list(out.glob("*.png")) and not is_complete(out)
    _no_traceback(caplog)


def test_frame_damaged_inside_fails_at_decode_and_the_video_is_not_complete(seq, tmp_path, caplog):
    # A complete file (end marker intact) with damaged data is found only when decoded: the masks
    # before it are written, the video is not marked complete, exit 2 naming the file.
    from PIL import Image

    frames, mask = seq
    for jpg in sorted(frames.glob("*.jpg")):
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
    bad = frames / "00003.png"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert cli.main(["propagate", str(frames), "--mask", str(mask), "--out", str(out), *FAST]) == 2
    assert f"{bad}: cannot decode image" in caplog.text
    assert not is_complete(out)
    _no_traceback(caplog)


# --- item 16: --mask given a folder, an empty config -----------------------------------------------


def test_mask_given_a_folder_says_so_and_what_to_use(seq, tmp_path, caplog):
    frames, mask = seq
    assert cli.main(["propagate", str(frames), "--mask", str(mask.parent), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert f"{mask.parent}: is a folder, not a mask file" in caplog.text
    assert f"e.g. --mask {mask}" in caplog.text  # its first PNG
    assert "--masks DIR" in caplog.text
    assert "does not exist" not in caplog.text
    _no_traceback(caplog)


def test_empty_config_file_runs_with_the_defaults_and_says_so(tmp_path, caplog):
    from vidprop.config import VidpropConfig, load_config

    empty = tmp_path / "empty.yaml"
    empty.write_text("# every key commented out\n# propagation:\n#   topk: 10\n")
    with caplog.at_level(logging.WARNING, logger="vidprop"):
        assert load_config(empty) == VidpropConfig()
    assert f"{empty}: config file is empty (no keys); every option keeps its default" in caplog.text
    caplog.clear()
    nonempty = tmp_path / "topk.yaml"
    nonempty.write_text("propagation:\n  topk: 3\n")
    with caplog.at_level(logging.WARNING, logger="vidprop"):
        assert load_config(nonempty).propagation.topk == 3
    assert "empty" not in caplog.text
