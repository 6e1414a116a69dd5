"""The job runner: many videos on disk, each written to PNGs resumably; sharding and failures.

A :class:`VideoJob` names one video's frames, its masks and its output folder. Jobs come
from discovery (:func:`find_videos` for a folder of videos or a YouTube-VOS root,
:func:`~vidprop.pipeline.davis.davis_jobs` for a DAVIS split), and two kinds of work run one job
end to end:

- :func:`run_job`: read the frames, propagate the masks, write every mask (and an
  overlay) and mark the folder complete; the one public function for one video on disk. It
  reads no RANK/WORLD_SIZE, so another engine (a cluster scheduler) can call it per video;
- :func:`extract_job`: compute (and so cache) a video's features, nothing else.

:func:`run_jobs` takes this process's shard of the jobs (``runtime.num_shards``, ``shard_index``,
or torchrun's RANK/WORLD_SIZE), skips finished ones, and hands the rest to the execution engine
(``runtime.engine``, :mod:`vidprop.engines`: here one after another, or a Ray cluster), which
isolates failures (``runtime.fail_fast``). The engine runs a worker per process:
:class:`MaskWriter` (:func:`run_job`) or :class:`FeatureFiller` (:func:`extract_job`), which
holds the pipeline (the model) across videos. :func:`run_videos` (the folder runner),
:func:`~vidprop.pipeline.davis.run_davis` and :func:`~vidprop.pipeline.extract.extract` are built
on :func:`run_jobs`.

Before any video starts, :func:`run_jobs` checks what concerns the whole run, so that a mistake
stops the run once, with one message, and leaves nothing behind: no output folder (nor the
feature cache) is, lies inside, or contains an input
(:func:`~vidprop.io.outputs.check_output_locations`); the feature stage is described, which finds
the model (a missing model is a run-level error, not one per video); the output folders can be
created and written to.

Resume: a folder is complete when its marker exists and records the same settings (the result
fingerprint), the same source (frame names and file sizes, or the video file's size and
modification time) and the same masks (their frames and content, SHA-256) as the job now;
otherwise the video is redone and the log says which of them changed (:func:`is_finished`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from vidprop import __version__
from vidprop.config import RuntimeConfig, VidpropConfig, dump_config, result_fingerprint
from vidprop.device import distributed_env
from vidprop.engines import Task, run_tasks
from vidprop.errors import ConfigError, MaskError, OutputError, SourceError, VidpropError
from vidprop.io.atomic import clear_complete, mark_complete, read_complete_info, remove_stale_temporaries
from vidprop.io.config import DataConfig
from vidprop.io.frames import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_image_file, is_video_file, natural_key
from vidprop.io.masks import check_mask_file, list_mask_files, write_mask
from vidprop.io.outputs import changed_inputs, check_output_locations, input_identity, prepare_output_folder
from vidprop.io.writer import BackgroundWriter
from vidprop.io.youtube_vos import is_youtube_vos, read_youtube_vos
from vidprop.log import progress

if TYPE_CHECKING:  # torch loads with the pipeline, only where videos run (not in a Ray driver)
    from vidprop.pipeline.inputs import VideoInput
    from vidprop.pipeline.stream import VideoPipeline

__all__ = [
    "CONFIG_FILE",
    "VideoJob",
    "VideoOutcome",
    "RunSummary",
    "list_videos",
    "find_videos",
    "resolve_runtime",
    "select_shard",
    "is_finished",
    "completion_record",
    "job_inputs",
    "open_job",
    "job_length",
    "run_job",
    "remove_earlier_outputs",
    "extract_job",
    "JobWorker",
    "MaskWriter",
    "FeatureFiller",
    "run_jobs",
    "run_videos",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"


@dataclasses.dataclass(frozen=True)
class VideoJob:
    """One video of a batch.

    Attributes:
        name: video name (output sub-folder, shard key).
        source: folder of frames or video file, or an opened FrameSource.
        mask: the first frame's mask file (None for feature extraction, or when ``keyframes``
            gives the masks).
        out_dir: where its masks go (``<out_dir>/<frame name>.png``; None for feature extraction).
        n_last_frames: cap of the recent-frame window for this video (None = the config's).
        keyframes: masks of any frames, ``((frame name, file), ...)`` (see
            :mod:`vidprop.pipeline.keyframes`); empty when ``mask`` gives the first frame's.
        first_appearance: the keyframes give only the objects that start on their frame
            (the YouTube-VOS layout), instead of every label of their frame.
        inputs: further inputs the outputs must keep clear of, as ``(description, path)``
            pairs: the folder of videos, the masks folder, the DAVIS or YouTube-VOS root.
    """

    name: str
    source: Any
    mask: Path | None = None
    out_dir: Path | None = None
    n_last_frames: int | None = None
    keyframes: tuple[tuple[str, Path], ...] = ()
    first_appearance: bool = False
    inputs: tuple[tuple[str, Path], ...] = ()

    @property
    def masks(self) -> Any:
        """What :func:`~vidprop.pipeline.inputs.open_video` takes: ``mask``, or the keyframes by frame name."""
        return dict(self.keyframes) if self.keyframes else self.mask

    @property
    def mask_files(self) -> list[str]:
        """Every mask file of the job."""
        return [str(p) for _, p in self.keyframes] if self.keyframes else ([] if self.mask is None else [str(self.mask)])


@dataclasses.dataclass(frozen=True)
class VideoOutcome:
    """What happened to one video: ``status`` is "done", "skipped" (already complete) or "failed"."""

    name: str
    status: str
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Outcomes of a batch, in job order."""

    outcomes: tuple[VideoOutcome, ...]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> tuple[VideoOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    @property
    def exit_code(self) -> int:
        """0 if nothing failed; 2 if every failure was bad input; else 1."""
        codes = {o.exit_code for o in self.failed}
        if not codes:
            return 0
        return 2 if codes == {2} else 1


def _frame_folder(path: Path) -> bool:
    return path.is_dir() and any(is_image_file(p) for p in path.iterdir() if p.is_file())


def _video_entries(folder: Path) -> list[Path]:
    """Sub-folders holding frames and video files directly inside ``folder``, in natural order."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and ((p.is_file() and is_video_file(p)) or _frame_folder(p))]
    return sorted(entries, key=lambda p: natural_key(p.name))


def _video_name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def _listed(folder: Path) -> list[Path]:
    """The entries of ``folder`` but hidden ones, in natural order."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def _some(paths: Sequence[Path], limit: int = 8) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths[:limit]]
    return ", ".join(names) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


READ_KINDS = f"frames {'/'.join(IMAGE_EXTENSIONS)}, videos {'/'.join(VIDEO_EXTENSIONS)}"


def _masks_in(masks_dir: Path, name: str) -> dict[str, Any]:
    """Video ``name``'s masks in ``masks_dir``: ``<name>.png`` is its first frame's mask; the PNGs
    of ``<name>/`` are masks of the frames of the same names (keyframes).

    Returns:
        ``VideoJob`` fields: ``{"mask": path}`` or ``{"keyframes": ((frame name, path), ...)}``.

    Raises:
        MaskError: neither exists, or both do (which one is meant cannot be told), or ``<name>/``
            holds files other than PNGs.
    """
    flat, folder = masks_dir / f"{name}.png", masks_dir / name
    pngs = list_mask_files(folder) if folder.is_dir() else []
    others = [p for p in _listed(folder) if p.is_file() and p.suffix.lower() != ".png"] if folder.is_dir() else []
    if others:  # a mask saved as JPEG (or BMP, ...) for a later frame would be left out without a word
        raise MaskError(
            f"masks named by frame must be PNG files (lossless, indexed or grayscale, pixel value = object id), "
            f"but {name}/ also holds {_some(others)}: save them as PNG, or move them out",
            folder,
        )
    if flat.is_file() and pngs:
        raise MaskError(
            f"video {name!r} has both {flat.name} (its first frame's mask) and masks in {name}/ (masks named by "
            "frame): keep one of them",
            masks_dir,
        )
    if flat.is_file():
        return {"mask": flat}
    if pngs:
        return {"keyframes": tuple((p.stem, p) for p in pngs)}
    raise MaskError(
        f"no mask for video {name!r} (expected {flat} for its first frame, or {folder}/<frame>.png named like its frames)",
        masks_dir,
    )


def list_videos(source: str | os.PathLike) -> tuple[bool, list[tuple[str, Path]]]:
    """``(is_batch, [(name, path), ...])`` of the videos in ``source``.

    ``source`` is one video (a video file, or a folder with frame images directly in it) or a
    folder of videos (sub-folders of frames and/or video files, named by folder name or stem).

    Raises:
        SourceError: missing source, a folder with neither frames nor videos, or two videos
            with the same name.
    """
    source = Path(source)
    if not source.exists():
        raise SourceError("input path does not exist", source)
    if source.is_file() or _frame_folder(source):
        return False, [(_video_name(source), source)]
    entries = _video_entries(source)
    unread = [p for p in _listed(source) if p not in entries]
    if not entries:
        held = f"; it holds {_some(unread)}" if unread else "; it is empty"
        raise SourceError(f"no frames, video files or sub-folders of frames found ({READ_KINDS}){held}", source)
    if unread:  # a video in another format would otherwise be left out without a word
        logger.warning("%s: not read, neither a video file nor a sub-folder of frames (%s): %s", source, READ_KINDS, _some(unread))
    seen: dict[str, Path] = {}
    for entry in entries:
        name = _video_name(entry)
        if name in seen:
            raise SourceError(f"two videos named {name!r}: {seen[name].name} and {entry.name}", source)
        seen[name] = entry
    return True, list(seen.items())


def find_videos(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    mask: str | os.PathLike | None = None,
    masks_dir: str | os.PathLike | None = None,
    mask_frame: str | None = None,
) -> list[VideoJob]:
    """The videos of ``source`` (see :func:`list_videos`) with their masks and output folders.

    Conventions:
        - one video: its mask is ``mask``, the mask of frame ``mask_frame`` (default: the first
          frame), or found in ``masks_dir`` as below; its outputs go to ``out_dir`` itself.
        - a folder of videos: video ``<name>`` takes its masks from ``masks_dir``: either
          ``<name>.png``, its first frame's mask, or the PNGs of ``<name>/``, each the mask of the
          frame of the same name (keyframes: any frames, several per video); it writes to
          ``out_dir/<name>/``.
        - a YouTube-VOS root (``JPEGImages/``, ``Annotations/``, optional ``meta.json``; see
          :mod:`vidprop.io.youtube_vos`): its own sparse first-appearance masks, no ``mask`` or
          ``masks_dir``; video ``<name>`` writes to ``out_dir/<name>/``.

    Raises:
        SourceError: see :func:`list_videos` and :func:`~vidprop.io.youtube_vos.read_youtube_vos`.
        MaskError: a missing mask argument or file, or arguments that do not go together.
    """
    out_dir = Path(out_dir)
    if mask_frame is not None and mask is None:
        raise MaskError("--mask-frame names the frame of the --mask FILE; give --mask too")
    if is_youtube_vos(source):
        if mask is not None or masks_dir is not None:
            raise MaskError(
                "SOURCE is a YouTube-VOS root: its masks are Annotations/<video>/*.png (objects on the frame where "
                "they first appear); give no --mask or --masks",
                source,
            )
        videos = read_youtube_vos(source)
        logger.info("YouTube-VOS layout: %d videos, %d masks", len(videos), sum(len(v.masks) for v in videos))
        root = (("YouTube-VOS root", Path(source)),)
        return [
            VideoJob(name=v.name, source=v.frames, keyframes=tuple(v.masks.items()), out_dir=out_dir / v.name,
                     first_appearance=True, inputs=root)
            for v in videos
        ]
    batch, videos = list_videos(source)
    roots = (("masks folder", Path(masks_dir)),) if masks_dir is not None else ()
    if not batch:
        name, path = videos[0]
        if mask is not None:
            mask = check_mask_file(mask)
            if mask_frame is not None:
                return [VideoJob(name=name, source=path, keyframes=((mask_frame, mask),), out_dir=out_dir)]
            return [VideoJob(name=name, source=path, mask=mask, out_dir=out_dir)]
        if masks_dir is None:
            raise MaskError("give the video's mask with --mask FILE (and --mask-frame NAME unless it is the first frame's)", path)
        return [VideoJob(name=name, source=path, out_dir=out_dir, inputs=roots, **_masks_in(Path(masks_dir), name))]
    if mask is not None:
        raise MaskError(
            f"this folder holds {len(videos)} video{'s' * (len(videos) != 1)}: --mask gives one video's mask; give the masks of all with "
            "--masks DIR (holding <video>.png or <video>/<frame>.png)",
            source,
        )
    if masks_dir is None:
        raise MaskError(
            f"this folder holds {len(videos)} videos: give their masks with --masks DIR "
            "(holding <video>.png or <video>/<frame>.png)",
            source,
        )
    roots = (("folder of videos", Path(source)), *roots)
    names = {name for name, _ in videos}
    unused = [p for p in _listed(Path(masks_dir)) if (p.is_dir() or p.suffix.lower() == ".png") and _video_name(p) not in names]
    if unused:
        logger.warning("%s: masks of no video in %s, not used: %s", masks_dir, source, _some(unused))
    return [
        VideoJob(name=name, source=path, out_dir=out_dir / name, inputs=roots, **_masks_in(Path(masks_dir), name))
        for name, path in videos
    ]


def resolve_runtime(cfg: VidpropConfig) -> VidpropConfig:
    """Apply torchrun's RANK/WORLD_SIZE to ``runtime.num_shards``/``shard_index`` when present.

    Raises:
        ConfigError: explicit sharding that disagrees with torchrun's world size.
    """
    env = distributed_env()
    if env is None or env[1] <= 1:
        return cfg
    rank, world_size, _ = env
    rt = cfg.runtime
    if rt.engine != "local":
        raise ConfigError(
            f"torchrun started {world_size} processes, but the {rt.engine!r} engine runs the videos on its own "
            "workers: start one process without torchrun",
            key="runtime.engine",
        )
    if rt.num_shards not in (1, world_size):
        raise ConfigError(
            f"{rt.num_shards} shards requested but torchrun started {world_size} processes "
            "(leave --num-shards unset under torchrun)",
            key="runtime.num_shards",
        )
    return cfg.replace(runtime=dataclasses.replace(rt, num_shards=world_size, shard_index=rank))


def select_shard(items: Sequence[Any], num_shards: int, shard_index: int, key: Callable[[Any], str] | None = None) -> list[Any]:
    """Every ``num_shards``-th item of ``items`` sorted by ``key``, starting at ``shard_index``.

    Deterministic (depends only on the names), so separate processes agree without talking,
    and the shards of all indices cover every item exactly once.
    """
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"invalid value {shard_index} (expected 0 <= shard_index < {num_shards})", key="runtime.shard_index")
    key = key or (lambda item: getattr(item, "name", str(item)))
    ordered = sorted(items, key=lambda item: natural_key(key(item)))
    return ordered[shard_index::num_shards]


def _source_path(job: VideoJob) -> Any:
    """The job's source on disk (a path, or an opened source's path)."""
    return getattr(job.source, "path", job.source)


def _labelled_masks(job: VideoJob) -> list[tuple[str, Path]]:
    """``(what it is the mask of, file)`` for every mask of ``job``."""
    if job.keyframes:
        kind = "first appearances on frame" if job.first_appearance else "frame"
        return [(f"{kind} {name}", Path(path)) for name, path in job.keyframes]
    return [] if job.mask is None else [("first frame", Path(job.mask))]


def job_inputs(job: VideoJob) -> list[tuple[str, Path]]:
    """``(description, path)`` of every input of ``job``: its frames folder or video file, its
    mask files, and :attr:`VideoJob.inputs`."""
    source = Path(_source_path(job))
    pairs = [("frames folder" if source.is_dir() else "video file", source)]
    pairs += [(f"mask of the {what}", path) for what, path in _labelled_masks(job)]
    return [*pairs, *job.inputs]


def completion_record(job: VideoJob, fingerprint: str) -> dict:
    """What the completion marker of ``job`` records about what determines its masks: the
    settings' ``fingerprint`` and the inputs' identity (:func:`~vidprop.io.outputs.input_identity`:
    the source, and each mask's frame and content)."""
    return {"fingerprint": fingerprint, **input_identity(_source_path(job), _labelled_masks(job))}


def is_finished(job: VideoJob, fingerprint: str) -> bool:
    """Whether ``job``'s outputs are complete and still match its settings and inputs.

    Compares the folder's completion marker with :func:`completion_record`: the settings of this
    ``fingerprint``, the source's identity and the masks (their frames and content). When
    something changed, logs which of them, and returns False.
    """
    info = read_complete_info(job.out_dir)
    if info is None:
        return False
    reasons = changed_inputs(info, completion_record(job, fingerprint))
    if reasons:
        logger.info("%s: complete but stale, redoing it: %s", job.name, "; ".join(reasons))
        return False
    return True


def _lacks_overlay(job: VideoJob, runtime: RuntimeConfig) -> bool:
    """Whether ``runtime`` asks for an overlay that ``job``'s complete folder lacks (an earlier run
    without ``--overlay``, or with the other format); logs it."""
    from vidprop.overlay import OverlayWriter

    if not runtime.overlay or OverlayWriter(job.out_dir, runtime.overlay_format).path.exists():
        return False
    logger.info("%s: complete, but without the %s overlay asked for: redoing it", job.name, runtime.overlay_format)
    return True


def _is_done(job: VideoJob, config: VidpropConfig, fingerprint: str) -> bool:
    """:func:`is_finished`, and holding the overlay when ``config`` asks for one."""
    return is_finished(job, fingerprint) and not _lacks_overlay(job, config.runtime)


def open_job(job: VideoJob, data: DataConfig | None = None) -> VideoInput:
    """Open and check a job's frames and masks (once; see :func:`~vidprop.pipeline.inputs.open_video`).

    Args:
        data: the data-stage config used to open paths (video reader; None for defaults).

    Raises:
        SourceError, MaskError: bad input, naming the file.
    """
    from vidprop.pipeline.inputs import open_video

    return open_video(job.source, job.masks, data, first_appearance=job.first_appearance, name=job.name)


def job_length(job: VideoJob) -> int:
    """``job``'s length in frames as far as it is known without opening the video: for ordering
    work (the Ray engine dispatches the longest first), never for checking it.

    An opened source (a DAVIS sequence, a YouTube-VOS video) gives its length; a folder of frames
    is listed (no file is read); a video file gives its container's frame count
    (:func:`~vidprop.io.video.frame_count_hint`, from the header; no frame is decoded). 0 when
    unknown (a missing or unreadable source: whoever runs the job reports it).
    """
    source = job.source
    if not isinstance(source, (str, os.PathLike)):
        return len(source) if hasattr(source, "__len__") else 0
    path = Path(source)
    try:
        if path.is_dir():
            from vidprop.io.image_folder import list_frame_files

            return len(list_frame_files(path))
        if is_video_file(path):
            from vidprop.io.video import frame_count_hint

            return frame_count_hint(path) or 0
    except OSError:
        pass
    return 0


def run_job(job: VideoJob, pipeline: VideoPipeline) -> VideoOutcome:
    """Run one video end to end: open and check its inputs, propagate, write the masks, mark it complete.

    Writes ``<out_dir>/<frame>.png`` (the masks' ids, the first mask's palette) for every frame, and
    an overlay when ``runtime.overlay``; the completion marker goes last, so an interrupted
    video is never complete. Settings come from ``pipeline.config``. Reads no environment.

    Returns:
        "skipped" when the folder is complete and up to date, see :func:`is_finished` (unless
        ``runtime.overwrite``), else "done".

    Raises:
        SourceError, MaskError: bad input (before anything is written).
        VidpropError: the source ended early.
    """
    config = pipeline.config
    fingerprint = result_fingerprint(config)
    if job.out_dir is None:
        raise VidpropError(f"{job.name}: the job has no output folder")
    if not config.runtime.overwrite and _is_done(job, config, fingerprint):
        logger.info("%s: already complete, skipping (--overwrite redoes it)", job.name)
        return VideoOutcome(job.name, "skipped")
    record = completion_record(job, fingerprint)  # the inputs as they are read now
    video = open_job(job, config.data)
    if video.keyframes is None:
        raise MaskError(f"no mask given for video {job.name!r}")
    pipeline.features  # finds the model (a missing one fails here, before any folder is made)
    prepare_output_folder(job.out_dir)
    remove_earlier_outputs(job.out_dir, video.source.names, config.runtime)
    clear_complete(job.out_dir)
    remove_stale_temporaries(job.out_dir)  # what a killed run of this video left (the overlay cleans its own)
    count, seconds = _write_masks(pipeline, job, video)
    mark_complete(
        job.out_dir,
        {"frames": count, **record, "vidprop_version": __version__, "masks": job.mask_files},
    )
    logger.info("%s: %d frames in %.1f s (%.2f frames/s)", job.name, count, seconds, count / max(seconds, 1e-9))
    return VideoOutcome(job.name, "done", frames=count, seconds=seconds)


def remove_earlier_outputs(out_dir: Path, names: Sequence[str], runtime: RuntimeConfig) -> None:
    """Delete what a complete earlier run wrote into ``out_dir`` and this run will not overwrite:
    masks of frames the video no longer has (frames removed or renamed since), and an overlay
    of a format this run does not write. Call it before redoing the video (the job runner and the
    sweep do); it does nothing unless ``out_dir`` holds a completion marker (a folder vidprop made
    complete), so that nothing of a complete earlier run outlives the redo."""
    if read_complete_info(out_dir) is None:
        return
    from vidprop.overlay import OVERLAY_FORMATS, OverlayWriter

    frames = set(names)
    stale = [p for p in out_dir.glob("*.png") if p.stem not in frames]
    folders = []
    for fmt in OVERLAY_FORMATS:
        path = OverlayWriter(out_dir, fmt).path
        if runtime.overlay and fmt == runtime.overlay_format:
            continue
        if path.is_dir():
            stale += path.glob("*.png")
            folders.append(path)
        elif path.is_file():
            stale.append(path)
    for path in stale:
        path.unlink(missing_ok=True)
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    if stale:
        shown = sorted((p.relative_to(out_dir).as_posix() for p in stale), key=natural_key)
        logger.info("%s: removed %d file(s) of the earlier run that this run does not write: %s%s", out_dir, len(stale),
                    ", ".join(shown[:8]), f" and {len(shown) - 8} more" if len(shown) > 8 else "")


def _write_masks(pipeline: VideoPipeline, job: VideoJob, video: VideoInput) -> tuple[int, float]:
    """Write every frame's mask (and the overlay); returns (frames written, seconds).

    The PNGs (and overlay frames) are encoded and fsynced on a writer thread
    (:class:`~vidprop.io.writer.BackgroundWriter`, ``runtime.write_queue``) while the next frames
    are computed; this returns once every file is durable, and raises the first failed write's
    error (naming the file) instead.
    """
    runtime = pipeline.config.runtime
    palette = video.mask.palette
    overlay = None
    if runtime.overlay:
        from vidprop.overlay import OverlayWriter

        overlay = OverlayWriter(job.out_dir, runtime.overlay_format, palette=palette)
    total = len(video.source)
    start, count = time.perf_counter(), 0
    frames = pipeline.propagate_frames(video, n_last_frames=job.n_last_frames)
    writer = BackgroundWriter(runtime.write_queue, name=f"vidprop-writer-{job.name}")
    try:
        for frame, out in progress(frames, total=total, desc=job.name, unit="frame", leave=False):
            path = job.out_dir / f"{out.name}.png"
            writer.submit(path, functools.partial(_write_frame, path, out, palette, overlay, frame.image))
            count += 1
        writer.close()
    except BaseException:
        writer.abort()
        if overlay is not None:
            overlay.abort()
        raise
    finally:
        frames.close()
    if count != total:
        raise VidpropError(f"{job.name}: wrote {count} of {total} frames")
    if overlay is not None:
        overlay.close()
    return count, time.perf_counter() - start


def _write_frame(path: Path, out: Any, palette: Any, overlay: Any, image: Any) -> None:
    """One frame's outputs: its mask PNG, then its overlay frame (in frame order: one writer thread)."""
    write_mask(path, out.mask, palette=palette)
    if overlay is not None:
        try:
            overlay.add(image, out.mask, out.name)
        except OSError as exc:
            raise OutputError(f"cannot write the overlay ({exc.strerror or exc})", overlay.path) from exc


def extract_job(job: VideoJob, pipeline: VideoPipeline) -> VideoOutcome:
    """Compute one video's features (through the feature cache, which keeps them); needs no mask.

    Raises:
        SourceError: bad input.
    """
    from vidprop.pipeline.inputs import open_video

    video = open_video(job.source, data=pipeline.config.data)
    start, count = time.perf_counter(), 0
    for _ in progress(pipeline.frames_with_features(video), total=len(video.source), desc=job.name, unit="frame", leave=False):
        count += 1
    return VideoOutcome(job.name, "done", frames=count, seconds=time.perf_counter() - start)


class JobWorker:
    """What an engine runs in each process: ``worker(job)`` runs one job with this process's pipeline.

    Picklable until first used (it holds only the config), so the Ray engine ships it to its
    actors; the :class:`VideoPipeline` (and the model) is built on the first job and kept.
    Subclasses name the work (:class:`MaskWriter`, :class:`FeatureFiller`).

    Args:
        config: the run's config.
        pipeline: an existing pipeline to use in this process (not picklable then).
    """

    work: Callable[[VideoJob, VideoPipeline], VideoOutcome]

    def __init__(self, config: VidpropConfig, pipeline: VideoPipeline | None = None):
        self.config = config
        self.pipeline = pipeline

    def __call__(self, job: VideoJob) -> VideoOutcome:
        """Run ``job``; raises on failure."""
        if self.pipeline is None:
            from vidprop.pipeline.stream import VideoPipeline

            self.pipeline = VideoPipeline(self.config)
        return type(self).work(job, self.pipeline)

    def close(self) -> None:
        """Log the feature cache's hits and misses (if a cache was used)."""
        if self.pipeline is not None:
            self.pipeline.log_cache_stats()

    def __getstate__(self) -> dict:
        if self.pipeline is not None:
            raise TypeError(f"a {type(self).__name__} holding a pipeline (a loaded model) cannot be sent to another process")
        return self.__dict__


class MaskWriter(JobWorker):
    """The worker of :func:`run_videos`: :func:`run_job` (masks written, folder marked complete)."""

    work = staticmethod(run_job)


class FeatureFiller(JobWorker):
    """The worker of :func:`~vidprop.pipeline.extract.extract`: :func:`extract_job` (features cached)."""

    work = staticmethod(extract_job)


def _own_folders(job: VideoJob) -> tuple[Path, ...]:
    """The folders only ``job`` writes (its masks and its PNG overlay frames), none without outputs."""
    from vidprop.overlay import OverlayWriter

    return () if job.out_dir is None else (job.out_dir, OverlayWriter(job.out_dir, "png").path)


def _check_locations(jobs: Sequence[VideoJob], config: VidpropConfig, config_dirs: Sequence[Path]) -> None:
    """Refuse output folders and a feature cache that are, lie inside, or contain an input."""
    every_input: dict[str, tuple[str, Path]] = {}
    for job in jobs:
        inputs = job_inputs(job)
        if job.out_dir is not None:
            check_output_locations([("output folder", job.out_dir)], inputs)
        every_input.update((str(path), (label, path)) for label, path in inputs)
    outputs = [("output folder", folder) for folder in config_dirs]
    if config.features.cache.dir is not None:
        outputs.append(("feature cache", Path(config.features.cache.dir)))
    check_output_locations(outputs, every_input.values())


def run_jobs(
    jobs: Sequence[VideoJob],
    config: VidpropConfig,
    worker: type[JobWorker] = MaskWriter,
    pipeline: VideoPipeline | None = None,
    config_dirs: Iterable[Path] = (),
    skip: Callable[[VideoJob], bool] | None = None,
) -> RunSummary:
    """Run this process's shard of ``jobs`` on the execution engine (``runtime.engine``).

    The effective config is written as ``config.yaml`` into each of ``config_dirs``. Jobs for
    which ``skip(job)`` holds are reported "skipped" without being dispatched. A failing job is
    logged and reported, and the others go on, unless ``runtime.fail_fast`` (then its error is
    raised). Engines other than ``local`` get each video's length (:func:`job_length`: a listing
    or a header, the Ray engine runs the longest first); the videos are opened and checked by
    the workers only, once, so bad input fails there (not retried: exit code 2).

    Args:
        worker: :class:`MaskWriter` (default) or :class:`FeatureFiller`.
        pipeline: reuse this pipeline's feature stage (and model) when its feature settings match
            ``config`` (see :meth:`VideoPipeline.with_config`); ``local`` engine only.

    Before any video, for the whole run (each an :class:`~vidprop.errors.InputError` that stops
    it, naming the paths): the output folders (each job's and ``config_dirs``) and the feature
    cache must not be, lie inside, or contain an input; with the ``local`` engine the feature
    stage is described once, which finds the model (unless every video is skipped); and
    ``config_dirs`` and the feature cache must be folders that can be created and written to.

    Returns:
        The outcome of each job of this shard, in order.

    Raises:
        ConfigError: sharding that disagrees with torchrun's environment, or a pipeline given to
            another engine than ``local``.
        InputError: an output location that overlaps an input, or that cannot be written.
        ModelNotFoundError: the feature backend's model cannot be found.
    """
    config = resolve_runtime(config)
    rt = config.runtime
    config_dirs = [Path(folder) for folder in config_dirs]
    _check_locations(jobs, config, config_dirs)
    mine = select_shard(jobs, rt.num_shards, rt.shard_index)
    if rt.num_shards > 1:
        logger.info("shard %d of %d: %d of %d videos", rt.shard_index, rt.num_shards, len(mine), len(jobs))
    if pipeline is not None and rt.engine != "local":
        raise ConfigError(f"a pipeline object cannot be shipped to {rt.engine} workers: call without pipeline=", key="runtime.engine")
    outcomes: dict[str, VideoOutcome] = {}
    tasks = []
    for job in mine:
        if skip is not None and skip(job):
            logger.info("%s: already complete, skipping (--overwrite redoes it)", job.name)
            outcomes[job.name] = VideoOutcome(job.name, "skipped")
            continue
        # only the Ray engine orders by length; its driver opens no video (each is opened once, by its worker)
        frames = job_length(job) if rt.engine != "local" else 0
        tasks.append(Task(job.name, job, frames, _own_folders(job)))
    reused = pipeline.with_config(config) if pipeline is not None else None
    if tasks and rt.engine == "local":
        # Describe the feature stage once, before any video: a missing model stops the run here
        # with one message (not once per video), before any folder is made.
        from vidprop.pipeline.stream import VideoPipeline

        reused = reused if reused is not None else VideoPipeline(config)
        reused.features
    for folder in config_dirs:
        prepare_output_folder(folder)
        dump_config(config, folder / CONFIG_FILE)
    if tasks and config.features.cache.dir is not None:  # else every video fails on its first write, with a traceback
        prepare_output_folder(config.features.cache.dir, "feature cache")
    outcomes.update(run_tasks(tasks, functools.partial(worker, pipeline=reused), config).outcomes)
    summary = RunSummary(tuple(outcomes[job.name] for job in mine))
    logger.info(
        "%d done, %d skipped (already complete), %d failed",
        summary.count("done"), summary.count("skipped"), summary.count("failed"),
    )
    return summary


def run_videos(
    jobs: Sequence[VideoJob],
    config: VidpropConfig,
    pipeline: VideoPipeline | None = None,
    config_dirs: Iterable[Path] = (),
) -> RunSummary:
    """Propagate every job of this process's shard to PNG files, resumably: :func:`run_jobs` of :class:`MaskWriter`.

    Videos already complete and up to date (:func:`is_finished`) are skipped unless ``runtime.overwrite``, without
    starting a worker; the videos run on ``runtime.engine`` (here, or on a Ray cluster).
    """
    fingerprint = result_fingerprint(config)
    skip = None if config.runtime.overwrite else (lambda job: _is_done(job, config, fingerprint))
    return run_jobs(jobs, config, MaskWriter, pipeline=pipeline, config_dirs=config_dirs, skip=skip)
