"""The ``vidprop`` command line, in-process (return codes, files written, printed scores)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import copy_short_sequence
from vidprop import cli
from vidprop.config import VidpropConfig, load_config
from vidprop.config_base import iter_fields
from vidprop.io.atomic import is_complete
from vidprop.io.masks import read_mask, write_mask
from vidprop.scoring import evaluate_davis

REPO = Path(__file__).resolve().parents[1]
LAB = str(REPO / "configs" / "davis2017_lab.yaml")
FAST = ["--config", LAB, "--device", "cpu"]
# fast-moving sequences: repeating the first mask scores badly on them
DAVIS_SEQUENCES = ("drift-chicane", "drift-straight", "dog")


def test_python_m_vidprop_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "vidprop", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("propagate", "davis", "evaluate", "extract"):
        assert command in proc.stdout
    # building the parser stays cheap (no torch) so that every command starts fast
    code = "import sys; from vidprop.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_verbosity_flags_go_before_or_after_the_command():
    # `vidprop propagate ... -v` was "unrecognized arguments: -v"
    parser = cli.build_parser()
    tail = ["--gt", "g", "--pred", "p"]
    for argv, verbose, quiet in ((["-v", "evaluate", *tail], True, False), (["evaluate", *tail, "-v"], True, False),
                                 (["evaluate", "-q", *tail], False, True), (["evaluate", *tail], False, False)):
        args = parser.parse_args(argv)
        assert (args.verbose, args.quiet) == (verbose, quiet), argv


@pytest.mark.parametrize("command", ["propagate", "davis", "extract"])
def test_help_documents_every_option_and_config_key(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--set", "--device", "--dtype", "--seed", "--num-shards", "--shard-index", "--fail-fast"):
        assert flag in text
    for key, _, _, help_ in iter_fields(VidpropConfig):
        assert help_ and f"  {key} = " in text, key
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    undocumented = [a.dest for a in sub._actions if not a.help and a.dest != "help"]
    assert undocumented == []


def test_propagate_folder_and_mp4(short_sequence, tiny_mp4, tmp_path, capsys):
    root = short_sequence("car-shadow", 6)
    out = tmp_path / "out"
    mask = root / "Annotations" / "480p" / "car-shadow" / "00000.png"
    rc = cli.main(["propagate", str(root / "JPEGImages" / "480p" / "car-shadow"), "--mask", str(mask), "--out", str(out), *FAST, "--short-side", "128"])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(6)]
    assert is_complete(out)
    assert load_config(out / "config.yaml").data.short_side == 128
    assert "1 video(s) done (6 frames)" in capsys.readouterr().out

    small = tmp_path / "small.png"
    write_mask(small, np.asarray(Image.fromarray(read_mask(mask).ids).resize((214, 120), Image.NEAREST)))
    rc = cli.main(["propagate", str(tiny_mp4), "--mask", str(small), "--out", str(tmp_path / "mp4"), *FAST, "--short-side", "64", "--overlay"])
    assert rc == 0
    pngs = sorted((tmp_path / "mp4").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(6)]
    assert all(Image.open(p).size == (214, 120) for p in pngs)
    assert (tmp_path / "mp4" / "overlay.mp4").stat().st_size > 0


def test_propagate_folder_of_videos(davis_root, tmp_path, capsys):
    root = tmp_path / "davis"
    for seq in ("car-shadow", "libby"):
        copy_short_sequence(davis_root, root, seq, 4)
    out = tmp_path / "out"
    dense = ["propagate", str(root / "JPEGImages" / "480p"), "--masks", str(root / "Annotations" / "480p"), "--out", str(out), *FAST]
    assert cli.main(dense) == 2  # a mask on every frame (dense ground truth) would propagate nothing
    captured = capsys.readouterr()
    assert "every one of the 4 frames of car-shadow has a mask" in captured.out + captured.err
    masks = tmp_path / "masks"
    masks.mkdir()
    for seq in ("car-shadow", "libby"):
        shutil.copy2(root / "Annotations" / "480p" / seq / "00000.png", masks / f"{seq}.png")
    args = ["propagate", str(root / "JPEGImages" / "480p"), "--masks", str(masks), "--out", str(out), *FAST, "--short-side", "64"]
    assert cli.main(args) == 0
    assert all(is_complete(out / seq) and len(list((out / seq).glob("*.png"))) == 4 for seq in ("car-shadow", "libby"))
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "0 video(s) done (0 frames), 2 already complete" in capsys.readouterr().out


def test_exit_codes_and_messages(short_sequence, tmp_path, capsys, caplog):
    root = short_sequence("car-shadow", 4)
    frames = str(root / "JPEGImages" / "480p" / "car-shadow")
    mask = str(root / "Annotations" / "480p" / "car-shadow" / "00000.png")
    out = str(tmp_path / "out")
    cases = [
        (["propagate", frames, "--mask", str(tmp_path / "missing.png"), "--out", out, *FAST], "missing.png"),
        (["propagate", str(tmp_path / "nowhere"), "--mask", mask, "--out", out, *FAST], "nowhere"),
        (["propagate", frames, "--mask", mask, "--out", out, "--config", "no/such.yaml"], str(Path("no/such.yaml").absolute())),
        (["propagate", frames, "--mask", mask, "--out", out, *FAST, "--set", "propagation.topkk=3"], "did you mean 'propagation.topk'"),
        (["propagate", frames, "--mask", mask, "--out", out, *FAST, "--topk", "0"], "propagation.topk"),
        (["davis", "--davis-root", str(tmp_path), "--set", "val", "--out", out, *FAST], "not a DAVIS root"),
        (["davis", "--davis-root", str(root), "--set", "val", "--out", out, *FAST, "--sequences", "nope"], "nope"),
        (["extract", frames, *FAST], "features.cache.dir"),
        (["davis", "--davis-root", str(root), "--set", "propagation.topk", "--out", out, *FAST], "--set propagation.topk=VALUE"),
        (["davis", "--davis-root", str(root), "--set", "val", "--split", "train", "--out", out, *FAST], "several DAVIS splits"),
    ]
    for argv, fragment in cases:
        caplog.clear()
        assert cli.main(argv) == 2, argv
        assert fragment in caplog.text, (argv, caplog.text)


def test_davis_scores_equal_the_scorer_and_beat_repeating_the_first_mask(davis_root, tmp_path, capsys):
    root = tmp_path / "davis"
    for seq in DAVIS_SEQUENCES:
        copy_short_sequence(davis_root, root, seq, 10)
    out = tmp_path / "results"
    rc = cli.main(["davis", "--davis-root", str(root), "--set", "val", "--out", str(out), *FAST, "--short-side", "128"])
    assert rc == 0
    printed = capsys.readouterr().out
    jf = float(re.search(r"J&F-Mean: ([0-9.]+)", printed).group(1))
    scores = evaluate_davis(root, out, split="val")
    assert jf == pytest.approx(scores.j_and_f_mean, abs=1e-6)
    assert scores.sequences == DAVIS_SEQUENCES
    assert (out / "global_results-val.csv").is_file() and (out / "per-sequence_results-val.csv").is_file()
    # a trivial baseline: the first mask repeated on every frame
    trivial = tmp_path / "trivial"
    for seq in DAVIS_SEQUENCES:
        (trivial / seq).mkdir(parents=True)
        for i in range(10):
            shutil.copy2(root / "Annotations" / "480p" / seq / "00000.png", trivial / seq / f"{i:05d}.png")
    baseline = evaluate_davis(root, trivial, split="val").j_and_f_mean
    assert jf > baseline + 0.15, (jf, baseline)


def test_davis_shards_score_once_all_are_done(short_sequence, tmp_path, capsys):
    short_sequence("car-shadow", 4)
    root = short_sequence("libby", 4)
    out = tmp_path / "results"
    common = ["davis", "--davis-root", str(root), "--set", "val", "--out", str(out), *FAST, "--short-side", "64", "--num-shards", "2"]
    assert cli.main([*common, "--shard-index", "0"]) == 0
    first = capsys.readouterr().out
    assert "scoring waits for 1 sequence(s)" in first and "J&F-Mean" not in first
    assert not (out / "global_results-val.csv").exists()
    assert cli.main([*common, "--shard-index", "1"]) == 0
    assert "J&F-Mean" in capsys.readouterr().out
    assert (out / "global_results-val.csv").is_file()


def test_davis_sequences_option_restricts_the_run_and_the_score(short_sequence, tmp_path, capsys):
    short_sequence("car-shadow", 4)
    root = short_sequence("libby", 4)
    out = tmp_path / "results"
    argv = ["davis", "--davis-root", str(root), "--split", "val", "--out", str(out), *FAST, "--short-side", "64", "--sequences", "libby"]
    assert cli.main(argv) == 0
    assert (out / "libby").is_dir() and not (out / "car-shadow").exists()
    assert "J&F-Mean" in capsys.readouterr().out
    assert "libby" in (out / "per-sequence_results-val.csv").read_text()


@pytest.mark.parametrize("command", ["davis", "extract", "evaluate", "sweep"])
@pytest.mark.parametrize("value", ["", ","])
def test_sequences_option_that_names_no_sequence_is_an_error(command, value, short_sequence, tmp_path, caplog):
    # `--sequences "$SEQS"` with an empty variable ran (or scored) the whole split
    root = short_sequence("libby", 4)
    out = tmp_path / "out"
    argv = {
        "davis": ["davis", "--davis-root", str(root), "--out", str(out), *FAST],
        "extract": ["extract", "--davis-root", str(root), "--cache-dir", str(out), *FAST],
        "evaluate": ["evaluate", "--davis-root", str(root), "--results", str(root / "Annotations" / "480p"), "--out", str(out)],
        "sweep": ["sweep", "--davis-root", str(root), "--out", str(out), "--grid", "propagation.topk=5,10", *FAST],
    }[command]
    assert cli.main([*argv, "--sequences", value]) == 2
    assert f"--sequences: {value!r} names no sequence; leave --sequences out for the whole split" in caplog.text
    assert "Traceback" not in caplog.text and not out.exists()


def test_extract_fills_the_cache_and_davis_reads_it(short_sequence, tmp_path, caplog):
    root = short_sequence("car-shadow", 4)
    cache = tmp_path / "cache"
    base = [*FAST, "--short-side", "64", "--cache-dir", str(cache)]
    assert cli.main(["extract", "--davis-root", str(root), "--set", "val", *base]) == 0
    assert len(list(cache.rglob("*.safetensors"))) == 4
    caplog.clear()
    with caplog.at_level("INFO", logger="vidprop"):
        assert cli.main(["davis", "--davis-root", str(root), "--set", "val", "--out", str(tmp_path / "r"), *base]) == 0
    assert "4 hits, 0 misses" in caplog.text


def test_extract_a_video_then_propagate_reads_the_cache(short_sequence, tmp_path, caplog):
    root = short_sequence("car-shadow", 4)
    frames = str(root / "JPEGImages" / "480p" / "car-shadow")
    mask = str(root / "Annotations" / "480p" / "car-shadow" / "00000.png")
    base = [*FAST, "--short-side", "64", "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(["extract", frames, *base]) == 0
    caplog.clear()
    with caplog.at_level("INFO", logger="vidprop"):
        assert cli.main(["propagate", frames, "--mask", mask, "--out", str(tmp_path / "out"), *base]) == 0
    assert "4 hits, 0 misses" in caplog.text


def test_seed_flag_seeds_the_dift_noise():
    from vidprop.cli.common import config_from_args

    args = cli.build_parser().parse_args(["propagate", "frames", "--mask", "m.png", "--out", "o", "--seed", "7"])
    cfg = config_from_args(args)
    assert cfg.features.dift.seed == 7
    default = config_from_args(cli.build_parser().parse_args(["propagate", "frames", "--mask", "m.png", "--out", "o"]))
    assert default.features.dift.seed == 0


def make_full_resolution_root(davis_root: Path, dest: Path, seq: str = "car-shadow", n: int = 5, scale: int = 2) -> Path:
    """A DAVIS root with only a Full-Resolution folder: the first ``n`` frames and masks of ``seq``
    upscaled ``scale`` times (frames bicubic, masks nearest)."""
    import cv2

    for path in sorted((davis_root / "JPEGImages" / "480p" / seq).glob("*.jpg"))[:n]:
        image = np.asarray(Image.open(path).convert("RGB"))
        big = cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_CUBIC)
        (dest / "JPEGImages" / "Full-Resolution" / seq).mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(dest / "JPEGImages" / "Full-Resolution" / seq / path.name, quality=95)
        mask = read_mask(davis_root / "Annotations" / "480p" / seq / f"{path.stem}.png")
        big_ids = np.repeat(np.repeat(mask.ids, scale, axis=0), scale, axis=1)
        write_mask(dest / "Annotations" / "Full-Resolution" / seq / f"{path.stem}.png", big_ids, mask.palette)
    (dest / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (dest / "ImageSets" / "2017" / "val.txt").write_text(seq + "\n")
    return dest


def test_full_resolution_run_is_written_and_scored_against_full_resolution_ground_truth(davis_root, tmp_path, capsys):
    root = make_full_resolution_root(davis_root, tmp_path / "davis")
    out = tmp_path / "results"
    argv = ["davis", "--davis-root", str(root), "--set", "val", "--resolution", "Full-Resolution", "--out", str(out)]
    assert cli.main([*argv, *FAST, "--short-side", "64"]) == 0
    masks = sorted((out / "car-shadow").glob("*.png"))
    assert [p.stem for p in masks] == [f"{i:05d}" for i in range(5)]
    assert all(Image.open(p).size == (1708, 960) for p in masks)
    jf = float(re.search(r"J&F-Mean: ([0-9.]+)", capsys.readouterr().out).group(1))
    scores = evaluate_davis(root, out, resolution="Full-Resolution", processes=1)
    assert jf == pytest.approx(scores.j_and_f_mean, abs=1e-6) and jf > 0.5
    assert cli.main(["evaluate", "--davis-root", str(root), "--results", str(out), "--resolution", "Full-Resolution", "--processes", "1"]) == 0
    assert f"{scores.j_and_f_mean:.3f}" in capsys.readouterr().out


def test_extract_needs_no_masks(davis_root, tmp_path):
    root = make_full_resolution_root(davis_root, tmp_path / "davis", n=3)
    shutil.rmtree(root / "Annotations")
    cache = tmp_path / "cache"
    argv = ["extract", "--davis-root", str(root), "--set", "val", "--resolution", "Full-Resolution", "--cache-dir", str(cache)]
    assert cli.main([*argv, *FAST, "--short-side", "64"]) == 0
    assert len(list(cache.rglob("*.safetensors"))) == 3
