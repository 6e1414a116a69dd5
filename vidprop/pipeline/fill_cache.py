"""Fill the feature cache ahead of propagation (e.g. before a parameter sweep)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

from vidprop.config import VidpropConfig
from vidprop.errors import ConfigError, InputError
from vidprop.io.frames import FrameSource, open_source
from vidprop.log import progress
from vidprop.pipeline.batch import RunSummary, VideoOutcome, cache_id, list_videos, select_shard
from vidprop.pipeline.davis import davis_jobs
from vidprop.pipeline.runtime import resolve_runtime
from vidprop.pipeline.video import VideoPipeline

__all__ = ["extract"]

logger = logging.getLogger(__name__)


def extract(
    source: str | os.PathLike | None = None,
    config: VidpropConfig | None = None,
    *,
    davis_root: str | os.PathLike | None = None,
    split: str = "val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
    pipeline: VideoPipeline | None = None,
) -> RunSummary:
    """Fill the feature cache (``features.cache.dir``) for a source or a DAVIS split.

    Frames already cached are not recomputed, so an interrupted run resumes where it stopped.
    Shards like :func:`run_videos`.

    Args:
        source: a video, a folder of frames, or a folder of videos (exclusive with ``davis_root``).
        davis_root: a DAVIS folder; its ``split`` sequences are extracted.

    Raises:
        ConfigError: ``features.cache.dir`` is not set.
        SourceError, DavisLayoutError: bad input.
    """
    config = resolve_runtime(config if config is not None else VidpropConfig())
    if config.features.cache.dir is None:
        raise ConfigError("no cache folder set: extract fills the feature cache (--cache-dir DIR)", key="features.cache.dir")
    if (source is None) == (davis_root is None):
        raise InputError("give either a source or a DAVIS root to extract")
    if davis_root is not None:
        from vidprop.io.davis import DavisDataset

        dataset = DavisDataset(davis_root, split=split, resolution=resolution)
        videos = [(job.name, job.source) for job in davis_jobs(dataset, Path("."), sequences)]
    else:
        videos = list_videos(source)[1]
    rt = config.runtime
    mine = select_shard(videos, rt.num_shards, rt.shard_index, key=lambda v: v[0])
    pipe = pipeline or VideoPipeline(config)
    outcomes = []
    for name, path in progress(mine, desc="videos", unit="video"):
        start = time.perf_counter()
        try:
            frames = path if isinstance(path, FrameSource) else open_source(path, config.data)
            count = 0
            stream = pipe.frames_with_features(frames, video_id=cache_id(name, frames))
            for _ in progress(stream, total=len(frames), desc=name, unit="frame", leave=False):
                count += 1
        except Exception as exc:  # noqa: BLE001 - one bad video must not stop the batch
            if rt.fail_fast:
                raise
            logger.error("%s failed: %s", name, exc)
            outcomes.append(VideoOutcome(name, "failed", error=str(exc), exit_code=getattr(exc, "exit_code", 1)))
            continue
        outcomes.append(VideoOutcome(name, "done", frames=count, seconds=time.perf_counter() - start))
    pipe.log_cache_stats()
    return RunSummary(tuple(outcomes))
