"""The Ray engine end to end on a local Ray cluster: 2 actors, 3 short DAVIS sample videos.

Same masks as the plain run; an actor killed (SIGKILL) partway through a video is replaced and
the video redone once; no temporary or partial file is left; a rerun does no work; a changed mask
redoes its video only (the local engine's resume rules: both run the same per-video function); a
video with bad input fails once, without retries, with exit code 2. CI runs this file with VIDPROP_SLOW=1
(see .ci/run).
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from vidprop import cli  # noqa: E402
from vidprop.engines.ray_engine import FAULT_ENV, start_local_ray  # noqa: E402
from vidprop.io.atomic import COMPLETE_MARKER  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LAB = str(REPO / "configs" / "davis2017_lab.yaml")
FAST = ["--config", LAB, "--short-side", "224"]
VIDEOS = {"dog": 10, "car-shadow": 5, "blackswan": 5}  # dog: the longest, dispatched first and killed
KILLED, KILL_AFTER = "dog", 3


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for the module (the engine uses the one already initialised)."""
    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def _copy_videos(davis_root: Path, dest: Path, videos: dict[str, int]) -> tuple[Path, Path]:
    src, masks = dest / "videos", dest / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    for name, n in videos.items():
        (src / name).mkdir(parents=True)
        for frame in sorted((davis_root / "JPEGImages" / "480p" / name).glob("*.jpg"))[:n]:
            shutil.copy2(frame, src / name / frame.name)
        shutil.copy2(davis_root / "Annotations" / "480p" / name / "00000.png", masks / f"{name}.png")
    return src, masks


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def _files(folder: Path) -> dict[Path, int]:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _messages(caplog, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def test_ray_engine_end_to_end(ray_cluster, davis_root, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.INFO, logger="vidprop")
    src, masks = _copy_videos(davis_root, tmp_path, VIDEOS)
    plain, out = tmp_path / "plain", tmp_path / "ray"
    assert cli.main(["propagate", str(src), "--masks", str(masks), "--out", str(plain), *FAST]) == 0
    ray_args = ["propagate", str(src), "--masks", str(masks), "--out", str(out), *FAST, "--engine", "ray", "--workers", "2"]

    # one actor is killed partway through the longest video
    caplog.clear()
    monkeypatch.setenv(FAULT_ENV, f"{KILLED}:{KILL_AFTER}")
    assert cli.main(ray_args) == 0
    monkeypatch.delenv(FAULT_ENV)
    assert "3 video(s) done (20 frames), 0 already complete, 0 failed" in capsys.readouterr().out
    assert _messages(caplog, "longest first: dog (10), blackswan (5), car-shadow (5)")
    started = [m.split(": ")[1].split(" started")[0] for m in _messages(caplog, " started (")]
    # first tries in queue order, longest first (the killed video's retry may come anywhere after)
    assert list(dict.fromkeys(started)) == ["dog", "blackswan", "car-shadow"]
    assert sorted(started) == ["blackswan", "car-shadow", "dog", "dog"]
    assert len(_messages(caplog, f"died while running {KILLED} (try 1 of 3)")) == 1, caplog.text
    assert len(_messages(caplog, f"{KILLED} started ({VIDEOS[KILLED]} frames, try 2 of 3)")) == 1
    for name in VIDEOS:
        assert len(_messages(caplog, f"{name} done (")) == 1, name  # each video finished exactly once

    # every video written whole, exactly the plain run's masks, nothing else left behind
    for name, n in VIDEOS.items():
        expected = sorted(p.name for p in (plain / name).iterdir())
        assert sorted(p.name for p in (out / name).iterdir()) == expected
        assert len(expected) == n + 1 and COMPLETE_MARKER in expected
        for png in (plain / name).glob("*.png"):
            a, b = Image.open(png), Image.open(out / name / png.name)
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"{name}/{png.name}"
            assert a.getpalette() == b.getpalette()
    assert not _temporaries(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*VIDEOS, "config.yaml"])

    # a rerun of the finished job does no work: no actor, no file rewritten
    before = _files(out)
    caplog.clear()
    assert cli.main(ray_args) == 0
    assert "0 video(s) done (0 frames), 3 already complete, 0 failed" in capsys.readouterr().out
    assert not _messages(caplog, " started (") and not _messages(caplog, "Ray engine:")
    after = _files(out)
    assert after.pop(Path("config.yaml")) and before.pop(Path("config.yaml"))  # the effective config is rewritten each run
    assert after == before

    # the local engine's resume rules: a changed mask redoes its video, the others are skipped; and bad input
    # partway through a video added now: reported failed, not retried, exit code 2
    shutil.copy2(davis_root / "Annotations" / "480p" / "car-shadow" / "00001.png", masks / "car-shadow.png")
    _copy_videos(davis_root, tmp_path, {"goat": 6})
    # frame 3 becomes a PNG whose compressed data is damaged: its header and end chunk are fine (the
    # checks on opening pass), so the video fails only when the worker decodes that frame
    frame = src / "goat" / "00003.jpg"
    png = io.BytesIO()
    Image.open(frame).save(png, format="PNG")
    data = bytearray(png.getvalue())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    frame.unlink()
    (src / "goat" / "00003.png").write_bytes(bytes(data))
    caplog.clear()
    assert cli.main([*ray_args[:-1], "1"]) == 2  # --workers 1
    printed = capsys.readouterr().out
    assert "1 video(s) done (5 frames), 2 already complete, 1 failed" in printed
    assert "FAILED goat:" in printed and "00003.png: cannot decode image" in printed
    assert _messages(caplog, "car-shadow: complete but stale, redoing it: the mask changed")
    assert sorted(m.split(": ")[1].split(" started")[0] for m in _messages(caplog, " started (")) == ["car-shadow", "goat"]
    assert _messages(caplog, "goat failed (not retried")
    assert not (out / "goat" / COMPLETE_MARKER).exists() and (out / "car-shadow" / COMPLETE_MARKER).exists()
    assert not _temporaries(out)
    after = _files(out)
    for name in ("dog", "blackswan"):
        assert {p: t for p, t in after.items() if p.parts[0] == name} == {p: t for p, t in before.items() if p.parts[0] == name}
