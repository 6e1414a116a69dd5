"""The pipeline on real DAVIS frames: Python API, batches, resume, sharding, torchrun, DIFT end to end.

Most tests use the weight-free ``lab`` backend on downscaled frames (short side 128) so that
they run in seconds on a CPU; one runs the DIFT backend with the tiny random SD model.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_mp4
from vidprop.config import load_config
from vidprop.device import resolve_device
from vidprop.errors import ConfigError, MaskError, SourceError
from vidprop.io.atomic import COMPLETE_MARKER, is_complete
from vidprop.io.masks import davis_palette, read_mask, write_mask
from vidprop.pipeline import (
    MaskPropagation,
    PropagatedFrame,
    VideoJob,
    VideoPipeline,
    find_videos,
    propagate_video,
    resolve_runtime,
    run_job,
    run_videos,
    select_shard,
)

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "configs" / "davis2017_lab.yaml"


def lab_config(*overrides: str):
    """The lab preset on 64-pixel frames (8 x 14 cells): fast, for tests of plumbing, not quality."""
    return load_config(LAB, ["data.short_side=64", "runtime.device=cpu", *overrides])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def gt_mask(root: Path, seq: str, name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "Annotations" / "480p" / seq / f"{name}.png"))


@pytest.fixture
def seq_dir(short_sequence) -> Path:
    """A DAVIS root with the first 6 frames of car-shadow."""
    return short_sequence("car-shadow", 6)


def frames_of(root: Path, seq: str = "car-shadow") -> Path:
    return root / "JPEGImages" / "480p" / seq


def first_mask_of(root: Path, seq: str = "car-shadow") -> Path:
    return root / "Annotations" / "480p" / seq / "00000.png"


def test_propagate_video_streams_masks_close_to_the_ground_truth(seq_dir):
    outs = list(propagate_video(frames_of(seq_dir), first_mask_of(seq_dir), lab_config("data.short_side=192")))
    assert [o.name for o in outs] == [f"{i:05d}" for i in range(6)]
    assert [o.index for o in outs] == list(range(6))
    assert all(isinstance(o, PropagatedFrame) for o in outs)
    for out in outs:
        assert out.mask.dtype == np.uint8 and out.mask.shape == (480, 854)
        assert set(np.unique(out.mask)) <= {0, 1}
    # frame 0 is the given mask itself; later frames follow the car
    np.testing.assert_array_equal(outs[0].mask, gt_mask(seq_dir, "car-shadow", "00000"))
    for out in outs[1:]:
        assert iou(out.mask > 0, gt_mask(seq_dir, "car-shadow", out.name) > 0) > 0.6, out.name


def test_arrays_in_give_the_same_masks_as_paths(seq_dir):
    cfg = lab_config()
    by_path = [o.mask for o in propagate_video(frames_of(seq_dir), first_mask_of(seq_dir), cfg)]
    images = (np.asarray(Image.open(p).convert("RGB")) for p in sorted(frames_of(seq_dir).glob("*.jpg")))
    first = read_mask(first_mask_of(seq_dir)).ids
    by_array = [o.mask for o in VideoPipeline(cfg).propagate(images, first)]
    assert len(by_array) == len(by_path) == 6
    for a, b in zip(by_array, by_path):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_ids_and_void_keep_their_ids(seq_dir, multi_object_mask):
    outs = list(propagate_video(frames_of(seq_dir), multi_object_mask, lab_config("data.short_side=128")))
    np.testing.assert_array_equal(outs[0].mask, multi_object_mask)  # void kept in frame 0, like DAVIS
    for out in outs[1:]:
        ids = set(np.unique(out.mask).tolist())
        assert ids <= {0, 1, 3} and {1, 3} <= ids


def test_bad_inputs_are_reported_before_compute(seq_dir, tmp_path):
    cfg = lab_config()
    with pytest.raises(MaskError, match="does not match the frame size"):
        next(propagate_video(frames_of(seq_dir), np.zeros((10, 10), np.uint8), cfg))
    with pytest.raises(MaskError, match="no object"):
        next(propagate_video(frames_of(seq_dir), np.zeros((480, 854), np.uint8), cfg))
    with pytest.raises(SourceError, match="does not exist"):
        next(propagate_video(tmp_path / "nope", first_mask_of(seq_dir), cfg))
    with pytest.raises(SourceError, match=r"\(H, W, 3\) uint8"):
        next(propagate_video([np.zeros((4, 4), np.uint8)], np.ones((4, 4), np.uint8), cfg))


def test_stopping_early_stops_the_prefetch_thread(seq_dir):
    before = threading.active_count()
    stream = propagate_video(frames_of(seq_dir), first_mask_of(seq_dir), lab_config())
    assert next(stream).index == 0
    assert next(stream).index == 1
    stream.close()
    assert threading.active_count() == before


def test_one_extractor_serves_many_videos(seq_dir, monkeypatch):
    from vidprop.features.lab import LabExtractor

    built, real = [], LabExtractor.__init__
    monkeypatch.setattr(LabExtractor, "__init__", lambda self, *a, **k: built.append(1) or real(self, *a, **k))
    pipe = VideoPipeline(lab_config())
    for _ in range(2):
        assert len(list(pipe.propagate(frames_of(seq_dir), first_mask_of(seq_dir)))) == 6
    assert len(built) == 1


# --------------------------------------------------------------------------------------------
# batches on disk


@pytest.fixture
def videos(davis_root, tmp_path) -> tuple[Path, Path]:
    """A folder of 3 videos (two frame folders, one mp4) and a masks folder using both conventions."""
    src, masks = tmp_path / "videos", tmp_path / "masks"
    for seq in ("car-shadow", "blackswan"):
        (src / seq).mkdir(parents=True)
        for p in sorted((davis_root / "JPEGImages" / "480p" / seq).glob("*.jpg"))[:4]:
            shutil.copy2(p, src / seq / p.name)
    (masks / "blackswan").mkdir(parents=True)
    shutil.copy2(first_mask_of(davis_root, "car-shadow"), masks / "car-shadow.png")
    shutil.copy2(first_mask_of(davis_root, "blackswan"), masks / "blackswan" / "00000.png")
    frames = [np.asarray(Image.open(p).convert("RGB"))[::4, ::4] for p in sorted((davis_root / "JPEGImages" / "480p" / "dog").glob("*.jpg"))[:4]]
    write_mp4(frames, src / "dog.mp4")
    small = read_mask(first_mask_of(davis_root, "dog")).ids[::4, ::4]
    write_mask(masks / "dog.png", small)
    return src, masks


def test_find_videos_conventions(videos, tmp_path, seq_dir):
    src, masks = videos
    jobs = find_videos(src, tmp_path / "out", masks_dir=masks)
    assert [j.name for j in jobs] == ["blackswan", "car-shadow", "dog"]
    assert {j.name: [Path(f).relative_to(masks).as_posix() for f in j.mask_files] for j in jobs} == {
        "blackswan": ["blackswan/00000.png"],
        "car-shadow": ["car-shadow.png"],
        "dog": ["dog.png"],
    }
    assert jobs[0].keyframes == (("00000", masks / "blackswan" / "00000.png"),) and jobs[0].mask is None  # by frame name
    assert jobs[1].mask == masks / "car-shadow.png" and not jobs[1].keyframes  # the first frame's
    assert all(j.out_dir == tmp_path / "out" / j.name for j in jobs)
    single = find_videos(frames_of(seq_dir), tmp_path / "one", mask=first_mask_of(seq_dir))
    assert [(j.name, j.out_dir) for j in single] == [("car-shadow", tmp_path / "one")]
    with pytest.raises(MaskError, match="--masks DIR"):
        find_videos(src, tmp_path / "out")
    (masks / "car-shadow.png").unlink()
    with pytest.raises(MaskError, match="car-shadow"):
        find_videos(src, tmp_path / "out", masks_dir=masks)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no frames"):
        find_videos(tmp_path / "empty", tmp_path / "out", masks_dir=masks)


def test_videos_in_formats_not_read_are_named_not_left_out_silently(videos, tmp_path, caplog, davis_root):
    # a video of BMP frames (or a .m4v file) beside readable ones was dropped without a word, its mask unused
    src, masks = videos
    (src / "goat").mkdir()
    for p in sorted((davis_root / "JPEGImages" / "480p" / "goat").glob("*.jpg"))[:3]:
        Image.open(p).save(src / "goat" / f"{p.stem}.bmp")
    (src / "clip.m4v").write_bytes((src / "dog.mp4").read_bytes())
    shutil.copy2(first_mask_of(davis_root, "goat"), masks / "goat.png")
    caplog.set_level(logging.WARNING)
    jobs = find_videos(src, tmp_path / "out", masks_dir=masks)
    assert [j.name for j in jobs] == ["blackswan", "car-shadow", "dog"]
    assert "not read, neither a video file nor a sub-folder of frames (frames .jpg/.jpeg/.png, videos .mp4" in caplog.text
    assert "clip.m4v, goat/" in caplog.text
    assert f"{masks}: masks of no video in {src}, not used: goat.png" in caplog.text
    # alone, such a folder is an error that says what it holds
    with pytest.raises(SourceError, match=r"no frames, video files .*\); it holds 00000.bmp, 00001.bmp, 00002.bmp$"):
        find_videos(src / "goat", tmp_path / "out", mask=masks / "goat.png")


def test_a_keyframe_mask_that_is_not_a_png_is_an_error(videos, tmp_path):
    # a corrected mask saved as JPEG in masks/<video>/ was left out silently (--mask refuses a JPEG mask)
    src, masks = videos
    Image.open(masks / "blackswan" / "00000.png").convert("L").save(masks / "blackswan" / "00002.jpg")
    with pytest.raises(MaskError) as info:
        find_videos(src, tmp_path / "out", masks_dir=masks)
    assert info.value.path == str(masks / "blackswan")
    assert "masks named by frame must be PNG files" in info.value.message and "also holds 00002.jpg" in info.value.message


def test_batch_writes_every_frame_with_palette_config_and_marker(videos, tmp_path):
    src, masks = videos
    out = tmp_path / "out"
    summary = run_videos(find_videos(src, out, masks_dir=masks), lab_config(), config_dirs=[out])
    assert summary.exit_code == 0 and summary.count("done") == 3
    for name, size in (("car-shadow", (480, 854)), ("blackswan", (480, 854)), ("dog", (120, 214))):
        folder = out / name
        assert is_complete(folder)
        pngs = sorted(folder.glob("*.png"))
        assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(4)]
        with Image.open(pngs[-1]) as img:
            assert img.mode == "P" and img.size == (size[1], size[0])
            np.testing.assert_array_equal(np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)[:4], davis_palette()[:4])
    assert load_config(out / "config.yaml") == lab_config()


def test_failing_video_is_reported_and_the_others_go_on(videos, tmp_path):
    src, masks = videos
    Image.new("RGB", (854, 480)).save(masks / "car-shadow.png")  # RGB: not a label image
    jobs = find_videos(src, tmp_path / "out", masks_dir=masks)
    summary = run_videos(jobs, lab_config())
    assert [o.status for o in summary.outcomes] == ["done", "failed", "done"]
    assert "car-shadow.png" in summary.failed[0].error and summary.exit_code == 2
    assert not (tmp_path / "out" / "car-shadow").exists()  # checked before any compute
    with pytest.raises(MaskError):
        run_videos(jobs, lab_config("runtime.fail_fast=true", "runtime.overwrite=true"))


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_interrupted_video_is_never_complete_and_resumes(videos, tmp_path, monkeypatch, error):
    import vidprop.pipeline.jobs as batch

    src, masks = videos
    out = tmp_path / "out"
    jobs = find_videos(src, out, masks_dir=masks)
    real_write, calls = batch.write_mask, []

    def flaky_write(path, ids, palette=None):
        calls.append(path)
        if Path(path).parent.name == "car-shadow" and Path(path).stem == "00002":
            raise error("interrupted")
        return real_write(path, ids, palette)

    monkeypatch.setattr(batch, "write_mask", flaky_write)
    if error is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            run_videos(jobs, lab_config())
    else:
        summary = run_videos(jobs, lab_config())
        assert [o.status for o in summary.outcomes] == ["done", "failed", "done"] and summary.exit_code == 1
    assert is_complete(out / "blackswan") and not is_complete(out / "car-shadow")
    assert (out / "car-shadow" / "00001.png").is_file() and not (out / "car-shadow" / "00002.png").exists()

    monkeypatch.setattr(batch, "write_mask", real_write)
    summary = run_videos(jobs, lab_config())
    statuses = {o.name: o.status for o in summary.outcomes}
    assert statuses["blackswan"] == "skipped" and statuses["car-shadow"] == "done"
    assert all(is_complete(out / name) for name in ("blackswan", "car-shadow", "dog"))
    assert len(list((out / "car-shadow").glob("*.png"))) == 4


def test_other_settings_or_overwrite_redo_complete_videos(seq_dir, tmp_path):
    job = VideoJob("car-shadow", frames_of(seq_dir), first_mask_of(seq_dir), tmp_path / "out")
    statuses = [
        run_videos([job], lab_config(*overrides)).outcomes[0].status
        for overrides in ([], ["runtime.num_shards=1"], ["propagation.topk=5"], ["propagation.topk=5", "runtime.overwrite=true"])
    ]
    assert statuses == ["done", "skipped", "done", "done"]


def test_a_feature_cache_dtype_that_rounds_redoes_complete_videos(short_sequence, tmp_path):
    # cached features come back rounded to the cache's dtype: a float16 cache changes these masks,
    # so a complete output made without the cache is not taken for one made with it
    root = short_sequence("dog", 8)
    job = VideoJob("dog", frames_of(root, "dog"), first_mask_of(root, "dog"), tmp_path / "out")
    plain = load_config(LAB, ["data.short_side=128", "runtime.device=cpu"])
    cached = plain.with_overrides([f"features.cache.dir={tmp_path / 'cache'}"])
    fresh = VideoJob("dog", frames_of(root, "dog"), first_mask_of(root, "dog"), tmp_path / "fresh")
    run_videos([fresh], cached)
    assert run_videos([job], plain).outcomes[0].status == "done"
    written = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").glob("*.png"))}
    assert written != {p.name: p.read_bytes() for p in sorted((tmp_path / "fresh").glob("*.png"))}
    assert run_videos([job], cached).outcomes[0].status == "done"
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "out").glob("*.png"))} == {
        p.name: p.read_bytes() for p in sorted((tmp_path / "fresh").glob("*.png"))
    }
    assert run_videos([job], cached.with_overrides([f"features.cache.dir={tmp_path / 'elsewhere'}"])).outcomes[0].status == "skipped"


def test_shards_cover_every_video_exactly_once(videos, tmp_path):
    names = [f"v{i}" for i in range(11)]
    shards = [select_shard(names, 3, i, key=str) for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(names)
    assert shards == [select_shard(list(reversed(names)), 3, i, key=str) for i in range(3)]  # order-independent

    src, masks = videos
    out = tmp_path / "out"
    jobs = find_videos(src, out, masks_dir=masks)
    done = []
    for index in range(2):
        summary = run_videos(jobs, lab_config("runtime.num_shards=2", f"runtime.shard_index={index}"))
        done += [o.name for o in summary.outcomes if o.status == "done"]
    assert sorted(done) == ["blackswan", "car-shadow", "dog"]
    assert all((out / name / COMPLETE_MARKER).is_file() for name in done)


def test_torchrun_environment_sets_shard_and_device(monkeypatch):
    cfg = lab_config()
    assert resolve_runtime(cfg) == cfg
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rt = resolve_runtime(cfg).runtime
    assert (rt.num_shards, rt.shard_index) == (4, 3)
    with pytest.raises(ConfigError, match="torchrun started 4"):
        resolve_runtime(lab_config("runtime.num_shards=2"))
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    else:  # pragma: no cover - GPU machines
        assert resolve_device("auto") == torch.device("cuda", 1 % torch.cuda.device_count())


def test_overlay_mp4_is_written_with_the_masks(seq_dir, tmp_path):
    import cv2

    job = VideoJob("car-shadow", frames_of(seq_dir), first_mask_of(seq_dir), tmp_path / "out")
    assert run_videos([job], lab_config("runtime.overlay=true")).exit_code == 0
    video = cv2.VideoCapture(str(tmp_path / "out" / "overlay.mp4"))
    count = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        count += 1
        assert frame.shape == (480, 854, 3)
    assert count == 6
    assert not list((tmp_path / "out").glob(".overlay*"))
    assert run_videos([job], lab_config("runtime.overlay=true", "runtime.overlay_format=png", "runtime.overwrite=true")).exit_code == 0
    assert len(list((tmp_path / "out" / "overlay").glob("*.png"))) == 6


def test_dift_backend_end_to_end_with_a_tiny_model(seq_dir, tiny_sd_dir, tmp_path, monkeypatch):
    cfg = load_config(
        None,
        [
            f"features.dift.model_id={tiny_sd_dir}",
            "features.dift.ensemble_size=2",
            "data.short_side=64",
            "runtime.device=cpu",
            f"features.cache.dir={tmp_path / 'cache'}",
        ],
    )
    job = VideoJob("car-shadow", frames_of(seq_dir), first_mask_of(seq_dir), tmp_path / "out")
    pipe = VideoPipeline(cfg)
    assert run_videos([job], cfg, pipeline=pipe).exit_code == 0
    assert pipe.extractor.stride == 8
    masks = {p.stem: np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").glob("*.png"))}
    assert list(masks) == [f"{i:05d}" for i in range(6)]
    np.testing.assert_array_equal(masks["00000"], gt_mask(seq_dir, "car-shadow", "00000"))
    for mask in masks.values():
        assert mask.shape == (480, 854) and set(np.unique(mask)) <= {0, 1}
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 6
    # A fresh pipeline over the warm cache gives the same masks without constructing Stable Diffusion.
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from vidprop.features.dift_sd import DiftExtractor

    def no_model(*args, **kwargs):
        raise AssertionError("the model was constructed although every feature is in the cache")

    monkeypatch.setattr(DiftExtractor, "__init__", no_model)
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", no_model)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", no_model)
    warm = VideoPipeline(cfg)
    cached = {o.name: o.mask for o in warm.propagate(frames_of(seq_dir), first_mask_of(seq_dir))}
    assert warm.features.cache.stats() == {"hits": 6, "misses": 0, "corrupt": 0}
    assert not warm.features.loaded
    for name, mask in masks.items():
        np.testing.assert_array_equal(cached[name], mask)


def test_run_job_runs_one_video_end_to_end_whatever_the_sharding(seq_dir, tmp_path, monkeypatch):
    # The one public function another engine calls per video: it never looks at RANK/WORLD_SIZE.
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    job = VideoJob("car-shadow", frames_of(seq_dir), first_mask_of(seq_dir), tmp_path / "out")
    pipe = VideoPipeline(lab_config())
    outcome = run_job(job, pipe)
    assert (outcome.status, outcome.frames) == ("done", 6)
    assert is_complete(tmp_path / "out") and len(list((tmp_path / "out").glob("*.png"))) == 6
    expected = [o.mask for o in pipe.propagate(frames_of(seq_dir), first_mask_of(seq_dir))]
    for mask, path in zip(expected, sorted((tmp_path / "out").glob("*.png"))):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), mask)
    assert run_job(job, pipe).status == "skipped"


def test_job_length_lists_folders_and_reads_video_headers(videos, tmp_path, davis_root):
    import dataclasses

    from vidprop.io.davis import DavisDataset
    from vidprop.pipeline import davis_jobs
    from vidprop.pipeline.jobs import job_length

    src, masks = videos
    jobs = {job.name: job for job in find_videos(src, tmp_path / "out", masks_dir=masks)}
    assert {name: job_length(job) for name, job in jobs.items()} == {"blackswan": 4, "car-shadow": 4, "dog": 4}
    # a path given as a string is a path (not a sequence of characters); an opened source gives its length
    assert job_length(dataclasses.replace(jobs["dog"], source=str(src / "dog.mp4"))) == 4
    davis = davis_jobs(DavisDataset(davis_root), tmp_path / "davis-out", ["dog"])[0]
    assert job_length(davis) == len(list((davis_root / "JPEGImages" / "480p" / "dog").glob("*.jpg")))
    # a Matroska file states no frame count: its duration x frame rate
    import av

    mkv = tmp_path / "clip.mkv"
    with av.open(str(mkv), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(17):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")))
        container.mux(stream.encode())
    assert job_length(dataclasses.replace(jobs["dog"], source=mkv)) == 17
    # a file that is no video: unknown (0); the worker that opens it reports the error
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert job_length(dataclasses.replace(jobs["dog"], source=tmp_path / "broken.mp4")) == 0


def test_each_job_opens_its_frames_and_reads_its_mask_once(videos, tmp_path, monkeypatch):
    import vidprop.pipeline.inputs as inputs
    from vidprop.io.image_folder import ImageFolderSource

    opened, read = [], []
    real_init, real_read = ImageFolderSource.__init__, inputs.read_mask
    monkeypatch.setattr(ImageFolderSource, "__init__", lambda self, path, *a, **k: opened.append(Path(path).name) or real_init(self, path, *a, **k))
    monkeypatch.setattr(inputs, "read_mask", lambda path, *a, **k: read.append(Path(path).name) or real_read(path, *a, **k))
    src, masks = videos
    summary = run_videos(find_videos(src, tmp_path / "out", masks_dir=masks), lab_config())
    assert summary.count("done") == 3
    assert sorted(opened) == ["blackswan", "car-shadow"]  # the third video is an mp4
    assert sorted(read) == ["00000.png", "car-shadow.png", "dog.png"]


def test_one_pass_over_the_features_feeds_several_propagations(seq_dir):
    cfg = lab_config()
    settings = [cfg.with_overrides(["propagation.topk=3"]), cfg.with_overrides(["propagation.topk=15", "propagation.radius=2"])]
    pipe = VideoPipeline(cfg)
    mask = read_mask(first_mask_of(seq_dir))
    propagations = [MaskPropagation(mask, VideoPipeline(c).propagation_config()) for c in settings]
    together: list[list[np.ndarray]] = [[], []]
    for frame, fmap in pipe.frames_with_features(frames_of(seq_dir)):
        for out, propagation in zip(together, propagations):
            out.append(propagation.step(frame, fmap).mask)
    for masks, c in zip(together, settings):
        alone = [o.mask for o in propagate_video(frames_of(seq_dir), first_mask_of(seq_dir), c)]
        assert len(masks) == len(alone) == 6
        for a, b in zip(masks, alone):
            np.testing.assert_array_equal(a, b)
    assert any((a != b).any() for a, b in zip(*together))  # the two settings do differ


def test_streamed_arrays_report_misuse_as_source_errors(seq_dir):
    from vidprop.pipeline import ArrayFrameSource

    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(frames_of(seq_dir).glob("*.jpg"))[:2]]
    stream = ArrayFrameSource(iter(images))
    with pytest.raises(SourceError, match="unknown until it ends"):
        len(stream)
    with pytest.raises(SourceError, match="known only while reading"):
        stream.names
    assert len(list(stream)) == 2
    with pytest.raises(SourceError, match="can be read once"):
        list(stream)
    assert ArrayFrameSource(images).names == ["00000", "00001"]


@pytest.mark.parametrize("deferred", [False, True])
def test_non_finite_features_stop_the_video_naming_the_frame(seq_dir, monkeypatch, deferred):
    """NaN features of frame 3 (an fp16 overflow, say) stop the video there with an error naming the frame:
    at once on the CPU, with the frame's mask on a GPU (the deferred check, forced here on the CPU)."""
    from vidprop.errors import ShapeError
    from vidprop.features.config import LabConfig
    from vidprop.features.lab import LabExtractor
    from vidprop.propagation import engine

    class Overflowing(LabExtractor):
        seen = 0

        def extract(self, images):
            out = super().extract(images)
            for i in range(out.shape[0]):
                if Overflowing.seen + i == 3:
                    out[i, 0, 1, 1] = float("nan")
            Overflowing.seen += out.shape[0]
            return out

    if deferred:
        monkeypatch.setattr(engine, "_defers_checks", lambda device: True)
    pipe = VideoPipeline(lab_config(), extractor=Overflowing(LabConfig()))
    names = []
    with pytest.raises(ShapeError, match=r"frame 00003 \(index 3\): .*1 NaN or infinite"):
        for out in pipe.propagate(frames_of(seq_dir), first_mask_of(seq_dir)):
            names.append(out.name)
    assert names == ["00000", "00001", "00002"]  # no mask of the bad frame, nor after it


def test_one_mask_for_a_folder_of_videos_is_refused_with_the_count(videos, tmp_path, davis_root):
    src, _ = videos
    with pytest.raises(MaskError, match="holds 3 videos: --mask gives one video's mask"):
        find_videos(src, tmp_path / "out", mask=first_mask_of(davis_root, "car-shadow"))
    single = tmp_path / "single"
    shutil.copytree(src / "car-shadow", single / "car-shadow")
    (single / "notes.txt").write_text("not a video")
    with pytest.raises(MaskError, match="holds 1 video: --mask"):
        find_videos(single, tmp_path / "out1", mask=first_mask_of(davis_root, "car-shadow"))
